"""Over-optimisation in closed form: a pool of responses with a gold and a proxy reward
(book §14.1-14.2), optimised exactly, without training.

A pool of ``K`` responses to one prompt, each with a true quality ``q``, a spurious feature
``L`` ("length") and two rewards: the **gold** reward, what we want, and the **proxy**, what
a reward model learned. Two policies push on the proxy, both exact on a finite pool:

* the KL-regularised optimum ``pi_beta ∝ pi_ref exp(proxy / beta)`` (book eq. 95, chapter 8's
  :func:`~rlhf_book.ch08_direct_alignment.optimal_policy`), the policy RL converges to: smaller
  ``beta``, more optimisation;
* best-of-N ranked by the proxy (chapter 9's exact
  :func:`~rlhf_book.ch09_rejection_sampling.best_of_n_distribution`): larger ``N``, more.

Both are measured at ``d = sqrt(KL(pi || pi_ref))``, the x-axis of Gao et al. (2023). Which
kind of mismatch makes the gold reward fall (Goodhart's law in the taxonomy of Manheim and
Garrabrant 2018): a proxy that is gold plus independent noise (**regressional**) lets gold
rise, by a fixed fraction of the proxy's gain (``1 / (1 + noise^2)`` for Gaussian gold); a proxy that rewards a feature gold punishes
at the extremes (**extremal**, here length) makes it rise, peak and fall. Both statements are
about the expectation over pools: a single pool's strongest tilts rest on its few best-proxy
responses, so one pool's tail can go either way (the tests average 60 pools).

Shapes: a pool is ``[K]`` per field; curves are ``[M]`` over ``M`` values of ``beta`` or ``N``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch08_direct_alignment.losses import optimal_policy
from rlhf_book.ch09_rejection_sampling.selection import best_of_n_distribution, best_of_n_kl
from rlhf_book.lm.checks import as_float_array, check_range

__all__ = ["Pool", "length_pool", "noisy_pool", "exact_kl", "tilt_curve", "bon_curve"]

# The reference pool (seed 0, drawn in this order): q ~ N(0, 1),
# L ~ Gamma(4, 1); gold = q - 0.05 (L - 4)^2 (a reply of typical length is best), proxy =
# q + 0.25 (L - 4) (a reward model that learned "longer is better").
POOL_SIZE = 20_000
LENGTH_PENALTY = 0.05
LENGTH_BONUS = 0.25


class Pool(NamedTuple):
    """A response pool: ``gold [K]``, ``proxy [K]`` and ``length [K]`` (float64)."""

    gold: np.ndarray
    proxy: np.ndarray
    length: np.ndarray


def length_pool(seed: int = 0, size: int = POOL_SIZE, length_penalty: float = LENGTH_PENALTY,
                length_bonus: float = LENGTH_BONUS) -> Pool:
    """The extremal-Goodhart pool: ``q ~ N(0, 1)`` then ``L ~ Gamma(4, 1)`` from
    ``numpy.random.default_rng(seed)``; ``gold = q - length_penalty (L - 4)^2``, ``proxy = q +
    length_bonus (L - 4)``. The proxy agrees with gold near the typical length and rewards
    ever longer responses, which gold punishes. Book §14.1 (verbose answers as a hack)."""
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    check_range(length_penalty, "length_penalty", 0)
    check_range(length_bonus, "length_bonus", 0)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(size)
    length = rng.gamma(4.0, 1.0, size)
    return Pool(q - length_penalty * (length - 4) ** 2, q + length_bonus * (length - 4), length)


def noisy_pool(seed: int = 0, size: int = POOL_SIZE, noise: float = 1.0) -> Pool:
    """The regressional-Goodhart pool: ``gold ~ N(0, 1)`` and ``proxy = gold + noise * eps``
    with independent ``eps ~ N(0, 1)`` (``length`` is all 4: there is no feature to hack)."""
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    check_range(noise, "noise", 0)
    rng = np.random.default_rng(seed)
    gold = rng.standard_normal(size)
    return Pool(gold, gold + noise * rng.standard_normal(size), np.full(size, 4.0))


def exact_kl(probs, ref_probs) -> jax.Array:
    """``KL(p || p_ref) = sum_y p(y) log(p(y) / p_ref(y))`` over a finite pool, ``probs [K]``
    and ``ref_probs [K]`` (``0 log 0 = 0``)."""
    probs = as_float_array(probs, "probs", "[K]")
    ref_probs = as_float_array(ref_probs, "ref_probs", "[K]")
    safe = jnp.where(probs > 0, probs, 1.0)
    return jnp.sum(jnp.where(probs > 0, probs * (jnp.log(safe) - jnp.log(ref_probs)), 0.0))


def _curve(policies, pool: Pool, ref) -> dict[str, np.ndarray]:
    """The measured curve of ``policies [M, K]``: ``sqrt_kl``, ``proxy``, ``gold``, ``length``."""
    kl = jax.vmap(exact_kl, (0, None))(policies, ref)
    means = {name: policies @ jnp.asarray(getattr(pool, name), policies.dtype)
             for name in ("proxy", "gold", "length")}
    return {"sqrt_kl": np.sqrt(np.maximum(np.asarray(kl, np.float64), 0.0)),
            **{k: np.asarray(v, np.float64) for k, v in means.items()}}


# [guide:pool-curves]
def tilt_curve(pool: Pool, betas) -> dict[str, np.ndarray]:
    """The KL-regularised optimum against the proxy, ``pi_beta ∝ exp(proxy / beta)`` from the
    uniform ``pi_ref`` over the pool's ``K`` responses (book eq. 95), for each ``beta`` of
    ``betas [M]``: its exact ``sqrt_kl`` to ``pi_ref``, and its mean ``proxy``, ``gold`` and
    ``length``, each a float64 array ``[M]`` (Figure 38's curves, against Gao et al.'s
    ``d = sqrt(KL)``).

    What it shows, on average over pools (one pool's strongest tilts rest on a few responses):
    when the proxy is gold plus independent noise (:func:`noisy_pool`) gold keeps rising as
    ``beta`` falls, more slowly than the proxy (regressional Goodhart); when the proxy rewards
    a feature gold punishes at the extremes (:func:`length_pool`) gold rises, peaks and falls
    (extremal Goodhart; Manheim and Garrabrant 2018, book §14.1).

    How: with a uniform reference the optimum is ``softmax(proxy / beta)``, one row per
    ``beta`` (``[M, K]``, by broadcasting or ``jax.vmap``); subtract the row's maximum before
    exponentiating, or a small ``beta`` overflows. The KL to the uniform reference is
    ``sum_y pi(y) log(pi(y) K)`` (:func:`exact_kl` handles ``pi(y) = 0``); each mean is
    ``pi @ field``. A KL that rounding makes slightly negative has a square root of 0.
    """
    betas = as_float_array(betas, "betas", "[M]")
    check_range(jnp.min(betas), "betas", 0, strict=True)
    # BEGIN SOLUTION
    ref = jnp.full(len(pool.proxy), 1.0 / len(pool.proxy))
    proxy = jnp.asarray(pool.proxy, jnp.float32)
    policies = jax.vmap(optimal_policy, (None, None, 0))(ref, proxy, betas)
    return _curve(policies, pool, ref)
    # END SOLUTION


def bon_curve(pool: Pool, ns) -> dict[str, np.ndarray]:
    """Best-of-N ranked by the proxy over draws from the uniform pool, exactly (chapter 9's
    :func:`~rlhf_book.ch09_rejection_sampling.best_of_n_distribution`), for each ``N`` of ``ns
    [M]``: the exact ``sqrt_kl``, ``sqrt_kl_formula`` (``sqrt(log N - (N - 1) / N)``, the
    continuous-reward value Gao et al. use) and the mean ``proxy``, ``gold`` and ``length``."""
    ns = np.asarray(ns)
    if ns.ndim != 1 or ns.size == 0 or not np.issubdtype(ns.dtype, np.number) \
            or np.any(ns < 1) or np.any(ns != np.round(ns)):
        raise ValueError(f"ns must be a vector of integers >= 1, got {ns!r}")
    ref = jnp.full(len(pool.proxy), 1.0 / len(pool.proxy))
    proxy = jnp.asarray(pool.proxy, jnp.float32)
    policies = jax.vmap(best_of_n_distribution, (None, None, 0))(ref, proxy,
                                                                  jnp.asarray(ns, jnp.float32))
    out = _curve(policies, pool, ref)
    out["sqrt_kl_formula"] = np.sqrt(np.asarray(best_of_n_kl(ns.astype(np.float64)), np.float64))
    return out
# [/guide]
