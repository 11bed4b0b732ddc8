"""How much an evaluation score moves when nothing about the model changes (book §16.2 and
Appendix C.2, Table 7; Appendix C.3 on training variance).

Sampled evaluations are random: re-run one and the score moves. The book quotes standard
deviations of 0.25 to 1.5 points for post-training evaluations with the setup fixed (§16.2),
and Table 7 lists them per benchmark (Olmo 3: GPQA 1.48 ... PopQA 0.16). Everything here is
standard statistics, written out so that a reader can check the Table's consequences:

* :func:`rerun_std` -- the standard deviation of one run's accuracy, from each question's
  chance of being answered right: ``sigma = sqrt(sum_i p_i (1 - p_i)) / N``;
* :func:`diff_ci` -- the half-width of the 95% interval of a difference between two models;
* :func:`runs_needed` -- how many re-runs a claimed gain needs (statistical power, §16.3);
* :func:`expected_max_normal` -- the winner's curse of picking the best of ``N`` seeds
  (Appendix C.3);
* :func:`table7_std` -- Table 7's statistic: each model's standard deviation over re-runs,
  averaged over models;
* :func:`avg_at_k`, :func:`maj_at_k` -- the re-run averages a harness reports as avg@k and
  maj@k.

Accuracies are fractions in ``[0, 1]``; multiply by 100 for the book's points.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch07_reasoning.rlvr import majority_vote
from rlhf_book.lm.checks import as_float_array, check_range

__all__ = ["rerun_std", "diff_ci", "runs_needed", "expected_max_normal", "table7_std",
           "avg_at_k", "maj_at_k", "TABLE7"]

# Book Appendix C.2, Table 7: the standard deviation (points) of each benchmark across
# inference re-runs (Olmo 3; the mean over 14 models of each model's std over 3 runs).
TABLE7 = {
    "GPQA": 1.48, "AlpacaEval 3": 1.24, "IFEval": 0.88,                        # high variance
    "ZebraLogic": 0.56, "Omega": 0.56, "AIME 24 (Avg@32)": 0.54, "HumanEvalPlus": 0.46,
    "AgiEval": 0.43, "BigBenchHard": 0.39,                                      # stable
    "LiveCodeBench (Avg@10)": 0.29, "MBPPPlus": 0.27, "MATH": 0.25, "MMLU": 0.22,
    "PopQA": 0.16,                                                              # very stable
}


# [guide:rerun-std]
def rerun_std(p) -> jax.Array:
    """The standard deviation of one run's accuracy over ``N`` questions when question ``i`` is
    answered right with probability ``p_i``, independently (book §16.2 and Appendix C.2, the
    variance Table 7 measures):

        Var(acc) = Var((1/N) sum_i X_i) = sum_i p_i (1 - p_i) / N^2,   X_i ~ Bernoulli(p_i).

    A model whose every answer is certain (``p_i`` in {0, 1}) has ``sigma = 0``; one that is a
    coin on every question (``p_i = 1/2``) has the most, ``0.5 / sqrt(N)``: 3.54 points on 200
    questions, 0.42 on MMLU's 14,042. ``p [..., N]`` -> ``[...]``.

    How: a sum over the last axis and a square root.
    """
    p = as_float_array(p, "p")
    if p.ndim == 0:
        raise ValueError("p must have a question axis [..., N], got a scalar")
    # BEGIN SOLUTION
    return jnp.sqrt(jnp.sum(p * (1 - p), axis=-1)) / p.shape[-1]
    # END SOLUTION
# [/guide]


# [guide:diff-ci]
def diff_ci(sigma_a, sigma_b=None, n_a: int = 1, n_b: int = 1, z: float = 1.96) -> jax.Array:
    """The half-width of the confidence interval of the difference between two models'
    scores, each the mean of independent re-runs (book §16.2, Appendix C.2):

        z * sqrt(sigma_a^2 / n_a + sigma_b^2 / n_b)

    with ``sigma`` the standard deviation of one run (Table 7's number), ``n`` the re-runs
    averaged and ``z = 1.96`` for 95%. ``sigma_b`` defaults to ``sigma_a`` (one benchmark, two
    models). GPQA, one run each: ``1.96 * 1.48 * sqrt(2) = 4.10`` points -- a gain under 4
    points on GPQA from single runs is not evidence. ``sigma_a``, ``sigma_b``: scalars or
    arrays ``[...]`` (one per benchmark), broadcast together; returns ``[...]``.

    How: the variances of independent means add.
    """
    sigma_a = as_float_array(sigma_a, "sigma_a")
    sigma_b = sigma_a if sigma_b is None else as_float_array(sigma_b, "sigma_b")
    for name, n in (("n_a", n_a), ("n_b", n_b)):
        check_range(n, name, 1)
    check_range(z, "z", 0, strict=True)
    # BEGIN SOLUTION
    return z * jnp.sqrt(sigma_a ** 2 / n_a + sigma_b ** 2 / n_b)
    # END SOLUTION
# [/guide]


def runs_needed(sigma: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Re-runs per model needed to detect a true gain ``delta`` with probability ``power`` by a
    two-sided test at level ``alpha``, when one run has standard deviation ``sigma`` (book
    §16.3 on evaluations tuned for statistical power; the two-sample normal formula):

        n = ceil((z_{1 - alpha/2} + z_{power})^2 * 2 sigma^2 / delta^2).
    """
    check_range(sigma, "sigma", 0, strict=True)
    check_range(delta, "delta", 0, strict=True)
    for name, value in (("alpha", alpha), ("power", power)):
        check_range(value, name, 0, 1, strict=True)
        if not value < 1:  # a level or a power of 1 needs infinitely many runs
            raise ValueError(f"{name} must be < 1, got {value}")
    z_alpha = float(jax.scipy.stats.norm.ppf(1 - alpha / 2))
    z_power = float(jax.scipy.stats.norm.ppf(power))
    return max(1, math.ceil((z_alpha + z_power) ** 2 * 2 * sigma ** 2 / delta ** 2 - 1e-9))


def expected_max_normal(n: int, grid: int = 20001) -> float:
    """``E[max(Z_1, ..., Z_n)]`` for ``n`` independent standard normals: the expected spurious
    gain, in units of the evaluation's ``sigma``, of keeping the best of ``n`` seeds that are
    all equally good (Appendix C.3, training variance; the winner's curse). ``n = 2, 3, 5,
    10`` give 0.564, 0.846, 1.163, 1.539. With ``sigma`` the spread of one seed's score, the best
    of 10 equal seeds looks ``1.539 sigma`` better than it is: at least 2.28 points on GPQA,
    whose inference re-runs alone spread by 1.48 (Table 7); seeds also differ in training, so
    their spread is larger.

    Computed as ``integral x * n phi(x) Phi(x)^(n-1) dx`` (the density of the maximum) by the
    trapezoid rule on ``[-10, 10]``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    x = np.linspace(-10.0, 10.0, grid)
    phi = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))  # float64, exact enough
    return float(np.trapezoid(x * n * phi * cdf ** (n - 1), x))


def table7_std(scores) -> float:
    """Table 7's statistic from a ``[models, runs]`` array of scores: each model's standard
    deviation over its re-runs (Bessel-corrected), averaged over the models (Appendix C.2: 14
    models, 3 runs each). The book's text says "the variance of each model, then averaged" but
    reports standard deviations; this averages standard deviations, the numbers the Table
    shows."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [models, runs] with at least 2 runs, got {scores.shape}")
    return float(scores.std(axis=1, ddof=1).mean())


def avg_at_k(correct, k: int) -> np.ndarray:
    """avg@k (book Appendix C.2, Table 7's "AIME 24 (Avg@32)"): the accuracy averaged over
    ``k`` samples per question, here one value per disjoint block of ``k`` of the ``n``
    samples so that its spread over blocks shows what averaging buys: the standard deviation
    of avg@k is that of one run divided by ``sqrt(k)``.

    ``correct [N, n]`` (questions x samples, 0/1) -> ``[n // k]``: the accuracy of each block."""
    correct = np.asarray(correct, np.float64)
    if correct.ndim != 2:
        raise ValueError(f"correct must be [N, n] (questions x samples), got {correct.shape}")
    n = correct.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (samples per question), got {k!r}")
    blocks = correct[:, : (n // k) * k].reshape(correct.shape[0], n // k, k)
    return blocks.mean(axis=(0, 2))


# [guide:maj-at-k]
def maj_at_k(answers: Sequence[Sequence[Hashable | None]], gold: Sequence[Hashable],
             k: int) -> np.ndarray:
    """maj@k (book §16.1, majority voting): a question counts as right when the answer most of
    its ``k`` samples give (chapter 7's :func:`~rlhf_book.ch07_reasoning.rlvr.majority_vote`:
    ``None`` abstains, ties go to the answer seen first) is the gold one. Unlike pass@k (any of
    ``k`` right, chapter 7) it submits one answer, so it needs no verifier to pick among the
    samples; unlike avg@k it rewards a model whose right answer is its most common one even
    when most samples are wrong. ``[[9, 9, 8]]`` with gold ``[9]`` and ``k = 3`` -> ``[1.0]``.

    ``answers [N][n]``: ``n`` extracted answers per question (hashable, or ``None``); ``gold
    [N]``. Returns float ``[n // k]``: the maj@k accuracy over the ``N`` questions of each
    disjoint block of ``k`` samples (samples ``b k .. (b + 1) k - 1``; leftover samples unused).

    How: for each question and each block, vote with ``majority_vote`` on the block's answers
    and compare the winner with the question's gold answer; average over questions per block.
    """
    if len(answers) != len(gold) or not len(gold):
        raise ValueError(f"answers and gold must be non-empty and of one length, got "
                         f"{len(answers)} and {len(gold)}")
    n = min(len(a) for a in answers)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (samples per question), got {k!r}")
    # BEGIN SOLUTION
    right = [[majority_vote(list(a[b * k:(b + 1) * k])) == g for b in range(n // k)]
             for a, g in zip(answers, gold)]
    return np.asarray(right, np.float64).mean(axis=0)
    # END SOLUTION
# [/guide]
