"""The functional forms of reward over-optimisation (book §14.2; Gao, Schulman and Hilton 2023).

The book shows over-optimisation as a sketch (Figure 38: the proxy rises, the downstream score
rises, peaks and falls) and cites Gao et al. (2023) for the numbers. Gao et al. measure the
gold reward ``R`` gained against ``d = sqrt(KL(pi || pi_init))`` and fit

* best-of-N: ``R_bon(d) = d (alpha - beta d)``, peak at ``d* = alpha / (2 beta)``,
  ``R* = alpha^2 / (4 beta)``;
* RL: ``R_rl(d) = d (alpha - beta log d)`` (``R(0) = 0``), peak where
  ``alpha - beta log d - beta = 0``: ``d* = exp(alpha / beta - 1)``, ``R* = beta d*``.

Both are linear in ``(alpha, beta)`` once divided by ``d``: ``R / d = alpha - beta g(d)`` with
``g(d) = d`` or ``log d``, so a fit is an ordinary least-squares line (:func:`fit_gao`).

Shapes: ``d`` and ``R`` are arrays of the same shape ``[...]`` (a curve is ``[M]``);
``alpha`` and ``beta`` are scalars or broadcast against ``d``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.lm.checks import as_float_array, check_choice, check_range

__all__ = ["FORMS", "gao_bon", "gao_rl", "gao_peak", "fit_gao"]

FORMS = ("bon", "rl")


# [guide:gao-forms]
def gao_bon(d, alpha, beta) -> jax.Array:
    """Gao et al.'s best-of-N form ``R(d) = d (alpha - beta d)`` (book §14.2; Gao et al.
    2023), elementwise over ``d [...]`` (``d >= 0``, the square root of the KL to the initial
    policy): the gold reward gained, rising while ``d < alpha / (2 beta)``, then falling.

    How: one line of arithmetic on arrays."""
    d = as_float_array(d, "d")
    # BEGIN SOLUTION
    return d * (alpha - beta * d)
    # END SOLUTION


def gao_rl(d, alpha, beta) -> jax.Array:
    """Gao et al.'s RL form ``R(d) = d (alpha - beta log d)`` (book §14.2; Gao et al. 2023),
    elementwise over ``d [...]``, with ``R(0) = 0`` (the limit: ``d log d -> 0``), finite for
    every ``d >= 0`` and with a finite gradient at ``d = 0`` under ``jax.grad``.

    How: ``jnp.where`` evaluates both branches and their gradients, so take the log of a
    ``d`` replaced by 1 where it is 0 (the double-``where`` pattern)."""
    d = as_float_array(d, "d")
    # BEGIN SOLUTION
    safe = jnp.where(d > 0, d, 1.0)  # log 0 would poison the gradient even where masked out
    return jnp.where(d > 0, d * (alpha - beta * jnp.log(safe)), 0.0)
    # END SOLUTION


def gao_peak(alpha, beta, form: str = "bon") -> tuple[float, float]:
    """``(d*, R*)``: where Gao et al.'s ``form`` (``"bon"`` or ``"rl"``) with parameters
    ``alpha > 0`` and ``beta > 0`` peaks, and its gold reward there (book §14.2; Gao et al. 2023):
    the point where more optimisation starts to lose gold reward. Shapes: scalars in, a tuple
    of two floats out (for many fits, ``alphas [M]`` and ``betas [M]``, call it per fit).

    How: set each form's derivative to 0: ``alpha - 2 beta d = 0`` for best-of-N,
    ``alpha - beta log d - beta = 0`` for RL; then evaluate the form there."""
    check_choice(form, "form", FORMS)
    check_range(alpha, "alpha", 0, strict=True)
    check_range(beta, "beta", 0, strict=True)
    # BEGIN SOLUTION
    if form == "bon":
        return alpha / (2 * beta), alpha ** 2 / (4 * beta)
    d_star = float(np.exp(alpha / beta - 1.0))
    return d_star, beta * d_star
    # END SOLUTION
# [/guide]


# [guide:fit-gao]
def fit_gao(d, rewards, form: str = "bon") -> tuple[float, float]:
    """``(alpha, beta)`` of Gao et al.'s ``form`` fitted to a measured curve: gold reward
    ``rewards [M]`` (gained over the initial policy, so ``R(0) = 0``) against ``d [M]``. The
    points with ``d > 0`` (at least two) give the least-squares line ``R / d = alpha -
    beta g(d)``, ``g(d) = d`` (``"bon"``) or ``log d`` (``"rl"``). Book §14.2; Gao et al. 2023.

    How: ``numpy.linalg.lstsq`` of ``R / d`` on the columns ``[1, -g(d)]`` in float64."""
    check_choice(form, "form", FORMS)
    as_float_array(d, "d", "[M]"), as_float_array(rewards, "rewards", "[M]")  # the checks only
    d, rewards = np.asarray(d, np.float64), np.asarray(rewards, np.float64)  # fit in float64
    if d.shape != rewards.shape or d.ndim != 1:
        raise ValueError(f"d and rewards must be vectors [M] of one length, got {d.shape} and "
                         f"{rewards.shape}")
    keep = d > 0
    if keep.sum() < 2:
        raise ValueError(f"d must hold at least two points > 0 to fit two parameters, got {d}")
    # BEGIN SOLUTION
    d, rewards = d[keep], rewards[keep]
    g = d if form == "bon" else np.log(d)
    design = np.stack([np.ones_like(d), -g], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, rewards / d, rcond=None)
    return float(alpha), float(beta)
    # END SOLUTION
# [/guide]
