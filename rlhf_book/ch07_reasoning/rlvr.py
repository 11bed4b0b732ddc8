"""Chapter 7, the math of RL with verifiable rewards: group statistics, advantages on binary
rewards, several rewards at once, and inference-time scaling (book ch. 7).

In the book's order (chapter 7 has no numbered equations; each function cites its section):

* §7.2.3, offline difficulty filtering: :func:`pass_rates` and :func:`difficulty_filter` (keep
  prompts solved 20-80% of the time, estimated from N = 16 samples);
* §7.2.3, online filtering: :func:`zero_variance_groups` (groups whose rewards are all equal
  carry no group-relative signal) and :func:`zero_signal_probability`, the chance ``p^G +
  (1 - p)^G`` that a group of ``G`` binary rewards is such a group;
* advantages on binary rewards: MaxRL's :func:`maxrl_advantages` ``(r - mean) / mean``, beside
  GRPO's ``(r - mean) / std`` (chapter 6's
  :func:`~rlhf_book.ch06_policy_gradients.grpo_advantages`);
* §7.2.3, several rewards (format, language consistency, correctness): :func:`sum_then_normalize`
  (GRPO on the weighted sum) against GDPO's :func:`normalize_then_sum`;
* §7.2.3, parallel test-time compute: majority vote, :func:`majority_vote` (Python answers),
  :func:`majority_vote_index` (arrays, jits) and the exact accuracy of an ``N``-sample vote
  :func:`majority_vote_accuracy`; and the unbiased :func:`pass_at_k` (Chen et al. 2021), the
  measure of "sharpen or expand?".

Shapes: ``B`` prompts, ``G`` completions per prompt (one group per row of ``rewards [B, G]``),
``R`` reward functions, ``N`` samples voted on, ``P`` problems.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch06_policy_gradients.losses import dynamic_sampling_mask, grpo_advantages
from rlhf_book.lm.checks import as_float_array, as_groups, check_range, is_traced

__all__ = [
    "pass_rates", "difficulty_filter", "zero_variance_groups", "zero_signal_probability",
    "maxrl_advantages", "sum_then_normalize", "normalize_then_sum", "majority_vote",
    "majority_vote_index", "majority_vote_accuracy", "pass_at_k",
]


def _check_in(x: jax.Array, name: str, low: float, high: float | None = None) -> None:
    """Every entry of ``x`` is in ``[low, high]`` (``high=None``: no upper bound); a traced
    ``x`` is not checked."""
    if is_traced(x):
        return
    with jax.ensure_compile_time_eval():
        bad = bool(jnp.any(x < low)) or (high is not None and bool(jnp.any(x > high)))
    if bad:
        where = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must hold values {where}, got min {float(jnp.min(x)):g}, "
                         f"max {float(jnp.max(x)):g}")


def _check_int(value, name: str, low: int) -> int:
    """A Python (or NumPy) integer ``>= low``, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# §7.2.3 Offline difficulty filtering and online filtering


# [guide:difficulty-filter]
def pass_rates(rewards) -> jax.Array:
    """Each prompt's pass rate, the mean of its ``G`` verifier rewards (book §7.2.3, offline
    difficulty filtering: ``p_hat(x) = (1/N) sum_j R(x, y_j)``, with N = 16 in the book).

    ``rewards [B, G]``: rewards in ``[0, 1]`` (binary from :func:`.verifiable_reward`, or
    partial credit), one prompt's samples per row. Returns ``[B]``. The estimate of a true pass
    rate ``p`` has standard error ``sqrt(p (1 - p) / G)``: 0.125 at ``p = 0.5``, ``G = 16``.
    """
    rewards = as_float_array(rewards, "rewards", "[B, G]")
    _check_in(rewards, "rewards", 0.0, 1.0)
    return jnp.mean(rewards, axis=1)


def difficulty_filter(pass_rates, low: float = 0.2, high: float = 0.8) -> jax.Array:
    """Which prompts to keep for RL: ``low <= pass_rate <= high``, both bounds inclusive (book
    §7.2.3, offline difficulty filtering, 20-80%). Prompts always or never solved are dropped:
    every completion of theirs gets the same reward, so group-relative advantages are zero and
    they give no gradient.

    ``pass_rates [...]`` in ``[0, 1]`` (e.g. :func:`pass_rates`) -> bool ``[...]``, the same
    shape. ``0 <= low <= high <= 1``. The comparison allows ``1e-6`` of rounding, so a pass
    rate computed as 4/20 counts as 0.2, and one of 0.2 - 5e-7 still does.

    How: two comparisons joined by ``&``, both with ``=`` (a prompt solved exactly 20% of the
    time is kept), each widened by the tolerance: ``rates >= low - 1e-6`` and ``rates <= high +
    1e-6``. Use the ``low`` and ``high`` passed in, not the book's 0.2 and 0.8.
    """
    rates = as_float_array(pass_rates, "pass_rates")
    _check_in(rates, "pass_rates", 0.0, 1.0)
    check_range(low, "low", 0.0, 1.0)
    check_range(high, "high", low if not is_traced(low) else 0.0, 1.0)
    # BEGIN SOLUTION
    tol = 1e-6
    return (rates >= low - tol) & (rates <= high + tol)
    # END SOLUTION
# [/guide]


# [guide:zero-signal]
def zero_variance_groups(rewards) -> jax.Array:
    """Which groups carry no learning signal: all ``G`` rewards equal (book §7.2.3, online
    filtering; the complement of DAPO's dynamic-sampling mask,
    :func:`~rlhf_book.ch06_policy_gradients.dynamic_sampling_mask`). Such a group's
    group-relative advantages (GRPO, RLOO, MaxRL) are all zero.

    ``rewards [B, G]`` -> bool ``[B]``, True where the group is flat.
    """
    return ~dynamic_sampling_mask(rewards)


def zero_signal_probability(p, G: int) -> jax.Array:
    """The probability that ``G`` binary rewards of a prompt with pass rate ``p`` are all equal,
    ``p^G + (1 - p)^G`` (all right or all wrong): the expected share of groups that
    :func:`zero_variance_groups` flags (book §7.2.3, why online filtering and the 20-80% filter
    matter).

    ``p [...]`` in ``[0, 1]``; ``G >= 1`` samples per prompt (an int). Returns ``[...]``,
    elementwise. Values: ``(0.2, 16)`` -> 0.028147..., ``(0.5, 8)`` -> 0.0078125 = 2/2^8;
    ``p = 0`` or ``1``, or ``G = 1``, -> 1.

    How: the ``G`` rewards are independent Bernoulli(``p``) draws, so all ``G`` are 1 with
    probability ``p^G`` and all are 0 with probability ``(1 - p)^G``; the two events are
    disjoint (for ``G >= 1``), so their probabilities add. Elementwise ``**`` broadcasts over
    ``p``.
    """
    p = as_float_array(p, "p")
    _check_in(p, "p", 0.0, 1.0)
    G = _check_int(G, "G", 1)
    # BEGIN SOLUTION
    return p ** G + (1.0 - p) ** G
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# Advantages on binary rewards: MaxRL beside GRPO


# [guide:maxrl-advantages]
def maxrl_advantages(rewards) -> jax.Array:
    """MaxRL's advantage (Tajwar et al. 2026, maximum-likelihood RL; the book's companion code
    offers it beside GRPO): ``A_i = (r_i - mean) / mean`` within each group, exactly (no
    ``eps``), for rewards ``>= 0`` (binary in the paper).

    ``rewards [B, G]`` (``G >= 2``, values ``>= 0``) -> ``[B, G]``. With ``K`` of ``G``
    completions right, a right one gets ``(G - K) / K`` and a wrong one ``-1``: the rarer the
    success, the larger its weight, where GRPO's ``(r - mean) / std`` is symmetric in ``K`` and
    ``G - K``. **A group whose mean is 0** (nothing right) has no signal and gets ``A = 0``, not
    a division by zero -- the same as the book's companion code; an all-right group gets 0 as
    well (``r = mean``).

    What it estimates (for binary rewards, with this zero rule): the expected update
    ``E[(1/G) sum_i A_i grad log pi(y_i)]`` equals ``grad p * (1 - (1 - p)^(G-1)) / p``, the
    gradient of the maximum-likelihood objective ``log p`` truncated after ``G - 1`` terms of
    ``log p = -sum_k (1 - p)^k / k``; it tends to ``grad log p`` as ``G`` grows, where GRPO's
    centred rewards (Dr. GRPO) estimate ``(G - 1) / G * grad p``.

    How: the group mean with ``keepdims=True`` so that it broadcasts against ``rewards``; no
    ``eps`` in the denominator (it would shrink every advantage a little). Guard the
    division twice: ``jnp.where(mean > 0, (r - mean) / jnp.where(mean > 0, mean, 1.0), 0.0)``
    -- the inner ``where`` keeps ``0 / 0`` from being computed at all, so neither the value
    nor a gradient through it turns into NaN.
    """
    rewards = as_groups(rewards)
    _check_in(rewards, "rewards", 0.0)
    # BEGIN SOLUTION
    mean = jnp.mean(rewards, axis=1, keepdims=True)
    signal = mean > 0
    return jnp.where(signal, (rewards - mean) / jnp.where(signal, mean, 1.0), 0.0)
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §7.2.3 Several rewards at once: sum then normalise (GRPO) or normalise then sum (GDPO)


def _rewards_and_weights(rewards, weights) -> tuple[jax.Array, jax.Array]:
    rewards = as_float_array(rewards, "rewards", "[B, G, R]")
    if rewards.shape[1] < 2:
        raise ValueError(f"rewards must have G >= 2 completions per group, got shape "
                         f"{rewards.shape}")
    if weights is None:
        return rewards, jnp.ones(rewards.shape[2], rewards.dtype)
    weights = as_float_array(weights, "weights", "[R]")
    if weights.shape != rewards.shape[2:]:
        raise ValueError(f"weights must have shape [R] = {rewards.shape[2:]}, one per reward "
                         f"of rewards [B, G, R], got {weights.shape}")
    return rewards, weights


# [guide:several-rewards]
def sum_then_normalize(rewards, weights=None, eps: float = 1e-4) -> jax.Array:
    """Several rewards combined the usual way: the weighted sum ``r = sum_k w_k r_k`` of each
    completion, then GRPO's group normalisation (book §7.2.3, a format or language-consistency
    reward beside correctness; chapter 6's
    :func:`~rlhf_book.ch06_policy_gradients.grpo_advantages`, TRL's default
    ``multi_objective_aggregation="sum_then_normalize"``).

    ``rewards [B, G, R]``: reward ``k`` of completion ``g`` of prompt ``b``; ``weights [R]``
    (default all 1). Returns advantages ``[B, G]``. A reward with a large spread swamps the
    others: the normalisation divides by the spread of the *sum*, so a 0/1 correctness reward
    next to a reward that varies by 100 moves the advantage by about 1%.
    """
    rewards, weights = _rewards_and_weights(rewards, weights)
    return grpo_advantages(jnp.sum(rewards * weights, axis=2), scale=True, eps=eps)


def normalize_then_sum(rewards, weights=None, batch_normalize: bool = True,
                       eps: float = 1e-4) -> jax.Array:
    """GDPO's combination of several rewards (Liu et al. 2026, group reward-decoupled
    normalisation; TRL's ``multi_objective_aggregation="normalize_then_sum"``): normalise each
    reward within its group first (GRPO's z-score, chapter 6's
    :func:`~rlhf_book.ch06_policy_gradients.grpo_advantages`), then take the weighted sum
    ``sum_k w_k A_k``, then (``batch_normalize=True``, as the paper) standardise that sum over
    the whole batch: ``(A - mean) / (std + eps)``, Bessel-corrected as in chapter 6.

    ``rewards [B, G, R]``, ``weights [R]`` (default all 1) -> advantages ``[B, G]``. Each reward
    counts by its weight, whatever its scale: multiplying one reward by any ``c > 0`` leaves the
    result unchanged (up to ``eps``). Book §7.2.3 (format and language-consistency rewards next
    to correctness).
    """
    rewards, weights = _rewards_and_weights(rewards, weights)
    check_range(eps, "eps", 0.0, strict=True)
    B, G, R = rewards.shape
    per_reward = jnp.moveaxis(rewards, 2, 0).reshape(R * B, G)  # one row per (reward, group)
    normalized = grpo_advantages(per_reward, scale=True, eps=eps).reshape(R, B, G)
    combined = jnp.tensordot(weights, normalized, axes=1)
    if not batch_normalize:
        return combined
    return (combined - jnp.mean(combined)) / (jnp.std(combined, ddof=1) + eps)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §7.2.3 Parallel test-time compute: majority vote; and pass@k


# [guide:majority-vote]
def majority_vote(answers: Sequence[Hashable | None]):
    """The answer given most often among ``N`` sampled answers, self-consistency's majority
    vote (book §7.2.3, parallel test-time compute; Wang et al. 2023). ``None`` entries (no
    answer extracted) do not vote; ``None`` is returned when nothing voted.

    **Tie rule**: among answers tied for the most votes, the one whose first occurrence comes
    first in ``answers`` wins (``[8, 9, 9, 8]`` -> 8). Samples are exchangeable, so this rule
    picks each tied answer with equal probability, like a fair coin; see
    :func:`majority_vote_accuracy`. ``[9, 9, 8]`` -> 9.

    ``answers [N]``: a list or tuple of ``N >= 0`` hashable answers (strings from
    :func:`.extract_final_answer`, ints) and ``None``; compared with ``==``. Returns one of
    them, or ``None``.

    How: count the votes in a ``dict`` filled in the order of ``answers``: since Python 3.7 a
    dict keeps insertion order, so its keys are the answers in order of first occurrence, and
    ``max(counts, key=counts.__getitem__)`` returns the first of the tied maxima -- the tie
    rule. Skip ``None`` before counting it. (``collections.Counter(...).most_common(1)`` keeps
    the same order; sorting the answers does not.)
    """
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise ValueError(f"answers must be a list or tuple of answers, got "
                         f"{type(answers).__name__}")
    # BEGIN SOLUTION
    counts: dict = {}
    for answer in answers:
        if answer is None:
            continue
        try:
            counts[answer] = counts.get(answer, 0) + 1
        except TypeError:
            raise ValueError(f"answers must hold hashable answers, got {answer!r}") from None
    if not counts:
        return None
    # dicts keep insertion order (first occurrence); max returns the first of the maxima
    return max(counts, key=counts.__getitem__)
    # END SOLUTION
# [/guide]


def majority_vote_index(answers, valid=None) -> jax.Array:
    """The majority vote on arrays, to jit and vmap over problems (book §7.2.3, parallel
    test-time compute): the index of the first sample whose answer wins, under the tie rule of
    :func:`majority_vote` (first occurrence first), or ``-1`` when no sample is valid.

    ``answers [..., N]``: answers coded as numbers (e.g. the extracted integers); ``valid
    [..., N]`` (bool, default all True) marks the samples that have an answer. Returns int32
    ``[...]``; ``jnp.take_along_axis(answers, idx[..., None], -1)`` gives the voted answer.

    How: sample ``j`` gets the number of valid samples equal to it (``-1`` if invalid), and
    ``argmax`` returns the *first* maximum -- the first occurrence of the earliest-seen tied
    answer.
    """
    raw = jnp.asarray(answers) if not isinstance(answers, jax.Array) else answers
    answers = as_float_array(answers, "answers")  # checks: numbers, finite, a non-empty batch
    if jnp.issubdtype(raw.dtype, jnp.integer):
        answers = raw  # compare integers as integers: float32 merges those above 2^24
    if answers.ndim == 0:
        raise ValueError("answers must have shape [..., N], got a scalar")
    if valid is None:
        valid = jnp.ones(answers.shape, bool)
    else:
        valid = as_float_array(valid, "valid")
        if valid.shape != answers.shape:
            raise ValueError(f"valid must have the shape of answers {answers.shape}, got "
                             f"{valid.shape}")
        valid = valid > 0
    same = answers[..., :, None] == answers[..., None, :]  # [..., N, N]
    votes = jnp.sum(same & valid[..., :, None], axis=-2)
    votes = jnp.where(valid, votes, -1)
    return jnp.where(jnp.any(valid, axis=-1), jnp.argmax(votes, axis=-1), -1).astype(jnp.int32)


def _binomial_pmf(s: int, q: float) -> np.ndarray:
    """``P(X = c)`` for ``c = 0..s``, ``X ~ Binomial(s, q)``, in float64 (via log-gamma)."""
    c = np.arange(s + 1)
    if q <= 0.0:
        return (c == 0).astype(float)
    if q >= 1.0:
        return (c == s).astype(float)
    log_comb = np.array([math.lgamma(s + 1) - math.lgamma(k + 1) - math.lgamma(s - k + 1)
                         for k in c])
    return np.exp(log_comb + c * math.log(q) + (s - c) * math.log1p(-q))


# [guide:vote-accuracy]
def majority_vote_accuracy(p_correct: float, wrong_probs, N: int) -> float:
    """The exact probability that a majority vote over ``N`` independent samples picks the
    correct answer (book §7.2.3, parallel test-time compute: the self-consistency curve against
    ``N``).

    Each sample is the correct answer with probability ``p_correct``, wrong answer ``i`` with
    probability ``wrong_probs[i]``, and gives no answer (does not vote) with the rest,
    ``1 - p_correct - sum(wrong_probs) >= 0``. Ties follow :func:`majority_vote`'s rule (first
    occurrence first); because samples are exchangeable, the correct answer then wins a
    ``t``-way tie with probability exactly ``1/t``. No answer at all counts as wrong. ``N = 1``
    gives ``p_correct``.

    How: for each count ``m`` of correct samples (binomial), a dynamic programme over the wrong
    answers, each a binomial split of the samples left, keeps every wrong count ``<= m`` and
    counts the ones equal to ``m`` (the ties); float64, ``O(N^3 W)`` for ``W`` wrong answers.
    Returns a Python float.
    """
    check_range(p_correct, "p_correct", 0.0, 1.0)
    wrong = np.asarray(wrong_probs, dtype=np.float64).reshape(-1) if np.ndim(wrong_probs) \
        else np.asarray([wrong_probs], dtype=np.float64)
    if not np.all(np.isfinite(wrong)) or np.any(wrong < 0):
        raise ValueError(f"wrong_probs must hold finite probabilities >= 0, got {wrong_probs!r}")
    if p_correct + wrong.sum() > 1.0 + 1e-9:
        raise ValueError(f"wrong_probs must sum to at most 1 - p_correct = {1 - p_correct:g}, "
                         f"got {wrong.sum():g}")
    N = _check_int(N, "N", 1)
    wrong = wrong[wrong > 0]
    W = len(wrong)
    correct_counts = _binomial_pmf(N, float(p_correct))
    accuracy = 0.0
    for m in range(1, N + 1):
        if correct_counts[m] == 0.0:
            continue
        left = N - m
        # state[s, j]: P(s samples not yet assigned, j wrong answers so far tied with m votes)
        state = np.zeros((left + 1, W + 1))
        state[left, 0] = 1.0
        mass = 1.0 - p_correct  # probability of the categories not yet assigned
        for q in wrong:
            share = min(q / mass, 1.0) if mass > 0 else 0.0
            mass -= q
            new = np.zeros_like(state)
            for s in range(left + 1):
                if not state[s].any():
                    continue
                pmf = _binomial_pmf(s, share)
                for c in range(min(s, m) + 1):  # a wrong answer with more than m votes wins
                    tied = int(c == m)
                    new[s - c, tied:] += pmf[c] * state[s, :W + 1 - tied]
            state = new
        accuracy += correct_counts[m] * float(np.sum(state.sum(axis=0) / (1.0 + np.arange(W + 1))))
    return float(accuracy)
# [/guide]


# [guide:pass-at-k]
def pass_at_k(n: int, c, k) -> jax.Array:
    """The unbiased estimator of pass@k, the probability that at least one of ``k`` samples is
    correct, from ``n >= k`` samples of which ``c`` are correct (Chen et al. 2021; pass@k is
    named in book §16.1, and measures whether RL sharpens or expands what a model can solve,
    book §7.1.2's question of training versus inference-time compute):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the share of the ``k``-subsets of the ``n`` samples that hold at least one correct sample.
    It is exactly 1 when ``n - c < k`` (every ``k``-subset holds a correct sample) and exactly
    0 when ``c = 0``, and must stay finite and accurate for ``n`` in the hundreds (``C(200,
    100)`` is about 9e58).

    ``n``: samples per problem, a Python int (static under ``jit``). ``c [P]`` (or a scalar):
    correct samples per problem, integers in ``[0, n]``. ``k``: ``1 <= k <= n``; ``k > n``
    raises. Returns float ``[P]`` (vmap or loop over ``k`` for a curve). Averaged over ``c ~
    Binomial(n, p)`` it equals ``1 - (1 - p)^k`` exactly, where the plug-in ``1 - (1 - c/n)^k``
    is biased low.

    How: no factorials. ``C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)`` (Chen
    et al.'s numerically stable form), so compute ``1 - prod`` over a mask: with ``i = 1..n``
    (``jnp.arange``, static since ``n`` is), the factor is ``1 - k / i`` where ``i > n - c``
    and 1 elsewhere, and ``jnp.prod`` over the last axis. Set the case ``n - c < k`` to 1 with
    a ``where``: there the factor at ``i = k`` is 0, but the factors below it are negative and
    large (``1 - 150/2``), and their product overflows to ``inf`` before the 0 arrives --
    ``inf * 0`` is NaN. A log-gamma version needs the same case handled (``lgamma`` of a
    negative integer is infinite).
    """
    n = _check_int(n, "n", 1)
    c = as_float_array(c, "c")
    check_range(k, "k", 1, n)
    if not is_traced(k) and float(k) != int(k):
        raise ValueError(f"k must be an integer, got {k!r}")
    _check_in(c, "c", 0.0, float(n))
    if not is_traced(c) and not bool(jnp.all(c == jnp.round(c))):
        raise ValueError(f"c must hold whole numbers of correct samples, got {c}")
    # BEGIN SOLUTION
    i = jnp.arange(1, n + 1, dtype=c.dtype)
    factors = jnp.where(i > (n - c)[..., None], 1.0 - k / i, 1.0)
    return jnp.where(n - c < k, 1.0, 1.0 - jnp.prod(factors, axis=-1))
    # END SOLUTION
# [/guide]
