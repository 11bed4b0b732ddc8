"""Chapter 9's math: which completions rejection sampling keeps, and best-of-N as a distribution.

Book chapter 9 ("Rejection sampling"), in the book's order:

* §9.1 the two selection rules on a reward matrix ``R [B, N]`` (``B`` prompts, ``N``
  completions each): the best completion of every prompt (:func:`select_top_per_prompt`, eqs.
  113, 114) or the best ``K`` pairs overall (:func:`select_top_overall`, eqs. 115, 116), with
  the book's worked example (eqs. 117, 118, 119, 120, 121, 122, 123) reproduced in the tests,
  and the inverse permutation of the book's code snippet (:func:`inverse_permutation`);
* §9.3 best-of-N as a distribution: the analytic KL ``log N - (N - 1)/N``
  (:func:`best_of_n_kl`), and for a discrete base distribution the exact BoN distribution
  (:func:`best_of_n_distribution`), its exact KL (:func:`best_of_n_exact_kl`, never above the
  formula) and its expected reward (:func:`expected_best_of_n_reward`).

Shapes: ``B`` prompts, ``N`` (or ``n``) completions per prompt, ``K`` outcomes of a discrete
distribution. Indices are 0-based; the book's are 1-based. The functions check shapes and
integer arguments; values (finite rewards, probabilities that sum to 1) are the caller's to
provide.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch05_reward_models import best_of_n
from rlhf_book.lm.checks import as_float_array, as_float_vectors, check_range, check_rank, is_traced

__all__ = [
    "select_top_per_prompt", "unflatten_index", "select_top_overall", "inverse_permutation",
    "best_of_n_kl", "best_of_n_distribution", "best_of_n_exact_kl", "expected_best_of_n_reward",
]


def _reward_matrix(rewards) -> jax.Array:
    rewards = as_float_array(rewards, "rewards")
    check_rank(rewards, 2, "rewards", "[B, N]")
    return rewards


# ----------------------------------------------------------------------------------------------
# §9.1 Selecting the completions to keep


# [guide:rs-select-per-prompt]
def select_top_per_prompt(rewards) -> jax.Array:
    """The best completion of every prompt, ``S(R) = [argmax_j r_{1,j}, ..., argmax_j r_{M,j}]``
    (book §9.1, eq. 113): ``rewards [B, N] -> [B]`` column indices (0-based; the book's are
    1-based), ties to the first. ``Y_chosen[i] = Y[i, S(R)_i]`` (eq. 114). The same rule is the
    reranking of chapter 5, :func:`rlhf_book.ch05_reward_models.best_of_n`, which this calls."""
    return best_of_n(_reward_matrix(rewards))
# [/guide]


def unflatten_index(flat, n_completions: int):
    """A row-major flat index ``k`` of ``R_flat`` (eq. 115) as ``(prompt, completion) =
    (k // N, k % N)`` (book §9.1, there 1-based: ``i = floor(k / N) + 1``, ``j = (k mod N) +
    1``). Any shape of integer ``flat``; returns two int arrays of that shape."""
    check_range(n_completions, "n_completions", 1)
    flat = jnp.asarray(flat)
    return flat // n_completions, flat % n_completions


# [guide:rs-select-top-k]
def select_top_overall(rewards, k: int):
    """The ``k`` best ``(prompt, completion)`` pairs of the whole matrix (book §9.1, eqs. 115,
    116): ``rewards [B, N]`` (``B`` prompts, ``N`` completions each), ``k`` a Python int in
    ``[1, B * N]``. Returns ``(prompt_idx [k], completion_idx [k])``, 0-based, best first (the
    order eq. 123 prints; the guide's errata explain eq. 116's ascending argsort), ties to the
    lower row-major flat index. Unlike the per-prompt rule a prompt may contribute several
    completions or none.

    How: flatten ``rewards`` row-major, take the ``k`` largest with ``jax.lax.top_k`` (which
    breaks ties towards the lower index), map each flat index back with
    :func:`unflatten_index`.
    """
    rewards = _reward_matrix(rewards)
    B, N = rewards.shape
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= B * N:
        raise ValueError(f"k must be an int in [1, B * N] = [1, {B * N}], got {k!r}")
    # BEGIN SOLUTION
    _, flat = jax.lax.top_k(rewards.reshape(-1), int(k))
    return unflatten_index(flat, N)
    # END SOLUTION
# [/guide]


# [guide:inverse-permutation]
def inverse_permutation(perm) -> jax.Array:
    """``inv`` with ``inv[perm] = arange(n)``, so that ``x[perm][inv] == x``: how to undo a sort
    (book §9.1's code snippet). ``perm`` is a permutation of ``0 .. n-1``, ``[n]`` integers;
    returns ``[n]`` integers. The snippet is titled as an implementation of the selection
    methods but only undoes a sort (see the guide).

    How: the snippet's scatter form, ``zeros_like(perm).at[perm].set(arange(n))``;
    ``argsort(perm)`` is its second form.
    """
    perm = jnp.asarray(perm)
    check_rank(perm, 1, "perm", "[n]")
    n = perm.shape[0]
    # BEGIN SOLUTION
    return jnp.zeros_like(perm).at[perm].set(jnp.arange(n, dtype=perm.dtype))
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §9.3 Best-of-N as a distribution


# [guide:bon-kl]
def best_of_n_kl(n) -> jax.Array:
    """``KL(pi_BoN || pi) = log n - (n - 1) / n``, the KL of best-of-``n`` from the base policy
    (book §9.3, where it makes BoN comparable with RL; Stiennon et al. 2020; Gao et al. 2022;
    Beirami et al. 2024, who prove it an upper bound). Exact when rewards are
    continuous (no ties); for a discrete distribution :func:`best_of_n_exact_kl` is smaller.
    ``n`` a number or an array ``[...]`` (elementwise, same shape), every entry ``>= 1``, not
    necessarily an integer; 0 at ``n = 1``, growing like ``log n``.
    """
    check_range(jnp.min(jnp.asarray(n)), "n", 1)
    n = jnp.asarray(n, jnp.result_type(float))
    # BEGIN SOLUTION
    return jnp.log(n) - (n - 1.0) / n
    # END SOLUTION
# [/guide]


def _bon_log_ratio(probs, rewards, n):
    """``log(pi_BoN(y) / pi(y))`` for every outcome, ``[K]`` (0 where ``pi(y) = 0``).

    The best of ``n`` draws has reward ``<= v`` iff all ``n`` do, so the reward value ``v``
    of a tie group ``G`` wins with probability ``F(v)^n - F(v^-)^n``, ``F(v) = P(r(Y) <= v)``.
    Within ``G`` the chosen outcome is the first maximal draw (argmax, like
    :func:`select_top_per_prompt`), which by exchangeability is ``y`` with probability
    ``pi(y) / pi(G)``: the group's mass is shared in proportion to the base probabilities, so
    ``log(pi_BoN(y) / pi(y)) = log(F^n - F_-^n) - log pi(G)``, the same for all of ``G``.

    For precision, ``F`` is read from the tail where it is small (the lower cumulative sum, or
    one minus the upper one), and ``F^n - F_-^n = F^n (1 - (1 - pi(G)/F)^n)`` is evaluated with
    ``log1p`` and ``expm1``: no cancellation when ``pi(G)`` is tiny next to ``F``.
    """
    K = probs.shape[0]
    dtype = probs.dtype
    order = jnp.argsort(rewards, stable=True)
    r_sorted, p_sorted = rewards[order], probs[order]
    starts = jnp.concatenate([jnp.ones(1, bool), r_sorted[1:] != r_sorted[:-1]])
    group = jnp.cumsum(starts) - 1  # tie group of each sorted outcome, 0 .. G-1
    mass = jax.ops.segment_sum(p_sorted, group, num_segments=K)  # [K]; 0 past the last group
    zero = jnp.zeros(1, dtype)
    below = jnp.concatenate([zero, jnp.cumsum(mass)[:-1]])  # P(r < v_g)
    above = jnp.concatenate([jnp.cumsum(mass[::-1])[::-1][1:], zero])  # P(r > v_g)
    top = above < 0.5
    cdf = jnp.where(top, 1.0 - above, below + mass)  # F(v_g)
    log_cdf = jnp.where(top, jnp.log1p(-above), jnp.log(jnp.where(top, 1.0, below + mass)))
    has_mass = mass > 0
    share = jnp.where(has_mass, jnp.minimum(mass / jnp.where(has_mass, cdf, 1.0), 1.0), 0.0)
    n = jnp.asarray(n, dtype)
    # log(F^n - F_-^n) = n log F + log(1 - (1 - share)^n); -inf for groups without mass.
    log_win = n * log_cdf + jnp.log(-jnp.expm1(n * jnp.log1p(-share)))
    log_win = jnp.where(has_mass, log_win, -jnp.inf)
    log_ratio_g = jnp.where(has_mass, log_win - jnp.log(jnp.where(has_mass, mass, 1.0)), 0.0)
    # Back from groups to sorted outcomes, then to the caller's order.
    return jnp.zeros(K, dtype).at[order].set(log_ratio_g[group])


@jax.jit
def _bon_pmf_jit(probs, rewards, n):
    # Divide out the round-off of a sum that is 1 up to float precision, so the CDF ends at 1.
    probs = probs / jnp.sum(probs)
    log_ratio = _bon_log_ratio(probs, rewards, n)
    return jnp.where(probs > 0, probs * jnp.exp(log_ratio), 0.0), log_ratio


def _bon_pmf(probs, rewards, n):
    """``(pi_BoN [K], log(pi_BoN / pi) [K])`` for ``probs [K]``, ``rewards [K]`` and an integer
    ``n >= 1``, compiled once per ``K`` and dtype (``n`` is an argument, so a sweep over ``n``
    does not recompile)."""
    probs, rewards = as_float_vectors((probs, "probs"), (rewards, "rewards"))
    if not is_traced(n) and (isinstance(n, bool) or not float(n).is_integer() or n < 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return _bon_pmf_jit(probs, rewards, jnp.asarray(n, probs.dtype))


# [guide:bon-distribution]
def best_of_n_distribution(probs, rewards, n) -> jax.Array:
    """The exact distribution of the best of ``n`` i.i.d. draws from a discrete ``pi``:
    ``probs [K]`` over outcomes with ``rewards [K]`` -> ``pi_BoN [K]`` (book §9.3; Beirami et
    al. 2024).

    ``pi_BoN(y) = (F(r_y)^n - F(r_y^-)^n) * pi(y) / pi(G_y)``, with ``F(v) = P(r(Y) <= v)``,
    ``F(v^-) = P(r(Y) < v)`` and ``G_y`` the outcomes whose reward equals ``r_y``. Ties are
    broken like ``argmax`` over the draws (the first best draw wins), which shares a tie
    group's mass in proportion to the base probabilities; with distinct rewards it is Beirami
    et al.'s ``F(y)^n - F^-(y)^n``. ``n = 1`` gives ``pi``; an outcome of probability 0 gets 0.
    Only the order of the rewards matters. ``n`` may be traced (``jax.vmap`` over ``n`` for
    curves).
    """
    return _bon_pmf(probs, rewards, n)[0]
# [/guide]


def best_of_n_exact_kl(probs, rewards, n) -> jax.Array:
    """``KL(pi_BoN || pi) = sum_y pi_BoN(y) log(pi_BoN(y) / pi(y))`` for the exact BoN
    distribution (book §9.3; Beirami et al. 2024). A scalar, ``<= log n - (n - 1)/n``
    (:func:`best_of_n_kl`), approaching it from below as the distribution becomes continuous;
    strictly below with ties. With ties it equals the KL between the distributions of the reward
    *level* (BoN keeps the proportions inside a tie group). Computed from the log-ratio, so an
    outcome of probability 0 contributes 0, not ``0 * log 0``."""
    pmf, log_ratio = _bon_pmf(probs, rewards, n)
    return jnp.sum(jnp.where(pmf > 0, pmf * log_ratio, 0.0))


def expected_best_of_n_reward(probs, rewards, n) -> jax.Array:
    """``E[max_{i <= n} r(Y_i)] = sum_y pi_BoN(y) r_y``, the expected reward of best-of-``n``
    (book §9.3; the "reward vs N" curves of Gao et al. 2022), exactly, from
    :func:`best_of_n_distribution`. Non-decreasing in ``n``; ``n = 1`` gives ``E_pi[r]``. For
    rewards ~ N(0, 1) it is 0.5642 at ``n = 2`` and grows like ``sqrt(2 log n)``."""
    return jnp.sum(_bon_pmf(probs, rewards, n)[0] * jnp.asarray(rewards))
