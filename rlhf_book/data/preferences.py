"""Preference data labelled by simulated annotators with Bradley-Terry noise and known biases.

Book ch. 11 (preference data) and ch. 5 (reward models, the Bradley-Terry model).

The annotator model. Each annotator judges a pair ``(a, b)``, ``a`` shown first, through a
noisy *perceived margin*

    z = (u_a - u_b) / noise + position + eps,   eps ~ Logistic(0, 1), independent per annotator,

where ``u`` is the annotators' *utility* (:func:`annotator_utility`): the gold reward
(:func:`rlhf_book.data.styles.gold_reward`) plus two documented biases, a **verbosity bias**
(``+verbosity`` per byte of the response) and a **confidence bias** (``+confidence`` per
confident phrase such as "definitely", which the gold reward ignores); ``position`` is a
**position bias** in favour of the response shown first (:class:`AnnotatorBias`; book ch. 11
lists all three among the known biases of human and AI raters). A binary annotator prefers
``a`` when ``z > 0``, so, because the logistic CDF is the sigmoid,

    P(a > b) = sigmoid((u_a - u_b) / noise + position)                        (Bradley-Terry)

Without biases (:data:`UNBIASED`), ``u`` is the gold reward and the annotators differ from it
only by noise. With them, a reward model fitted to their votes learns a proxy whose optimum
differs from the gold reward's in known ways: it likes longer, more confident answers, which
the gold reward penalises past :data:`~rlhf_book.data.styles.CONCISE_BYTES` bytes. Pushing a
policy against that proxy is chapter 14's over-optimisation.

``noise > 0`` is the temperature of the annotators, in gold-reward units: as ``noise -> 0`` they
always pick the higher gold reward; as it grows their votes approach coin flips. Likert ratings
(:func:`likert_ratings`) cut the same ``z`` into bins, so both kinds of label come from one model.

Because the labelling probability is known, so are two ceilings:

* the agreement two annotators reach, ``E[p^2 + (1 - p)^2]`` (:func:`inter_annotator_agreement`
  measures it from votes);
* the best accuracy any reward model can reach at predicting one annotator's label,
  ``E[max(p, 1 - p)]`` (:func:`bt_accuracy_ceiling`, or :func:`label_accuracy_ceiling` from
  the pairs' own probabilities). Real data shows the same ceiling: the lectures quote ~73%
  inter-annotator agreement and ~72% reward-model accuracy for InstructGPT.

Two kinds of pairs (:func:`preference_pairs`): **style** pairs answer in two different styles
(concise vs verbose, hedged vs wrong, ...); **correctness** pairs render the *same* template
twice, once with the right answer and once with a wrong one, so a reward model can only rank
them by knowing the fact.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rlhf_book.data.styles import (STYLES, count_confident, gold_reward, render_answer,
                                   wrong_answer)
from rlhf_book.data.world import Question, sample_questions, split_questions

PAIR_KINDS = ("style", "correctness")
# The styles a correctness pair renders twice (right and wrong answer in the same template).
CORRECTNESS_STYLES = ("concise_correct", "verbose", "hedging")


@dataclass(frozen=True)
class AnnotatorBias:
    """How the simulated annotators deviate from the gold reward, beside their noise.

    ``verbosity`` is added to the utility per byte of the response, ``confidence`` per
    confident phrase (:data:`~rlhf_book.data.styles.CONFIDENT_PHRASES`), and ``position`` to
    the logit of preferring the response shown first. The defaults make a padded correct
    answer (~65 bytes) *preferred* to a concise one (~30 bytes) by ~58% of annotators, though
    its gold reward is ~0.3 lower: the verbosity bias real preference data shows (book ch. 11
    and ch. 14)."""

    verbosity: float = 0.015
    confidence: float = 0.25
    position: float = 0.3


UNBIASED = AnnotatorBias(0.0, 0.0, 0.0)


def with_answer(text: str, question: Question, answer: str) -> str:
    """``text`` with its last statement of ``question``'s answer replaced by ``answer`` (the
    first letter's case kept): the same sentence, a different answer."""
    at = text.lower().rfind(question.answer.lower())
    if at < 0:
        raise ValueError(f"text must state the answer {question.answer!r}, got {text!r}")
    if text[at].isupper():
        answer = answer[0].upper() + answer[1:]
    return text[:at] + answer + text[at + len(question.answer):]


def annotator_utility(question: Question, response: str, bias: AnnotatorBias) -> float:
    """What the annotators value: ``gold + bias.verbosity * n_bytes + bias.confidence *
    n_confident_phrases`` (the module docstring's ``u``)."""
    n_bytes = len(response.encode("utf-8", errors="replace"))
    return (gold_reward(question, response) + bias.verbosity * n_bytes
            + bias.confidence * count_confident(response))


@dataclass(frozen=True)
class PreferencePair:
    """One labelled comparison.

    ``prompt``, ``chosen`` and ``rejected`` are texts; ``gold_chosen`` and ``gold_rejected`` their
    gold rewards; ``style_chosen`` and ``style_rejected`` the styles that produced them;
    ``question`` the :class:`~rlhf_book.data.world.Question` asked. ``votes`` holds one entry per
    annotator, 1 if that annotator preferred ``chosen`` and 0 otherwise; ``p_chosen`` is their
    mean (the empirical chosen-probability) and ``p_true`` the Bradley-Terry probability
    ``sigmoid((gold_chosen - gold_rejected) / noise)`` that an annotator prefers ``chosen``.
    ``chosen`` can have the *lower* gold reward: that is label noise.
    """

    prompt: str
    chosen: str
    rejected: str
    gold_chosen: float
    gold_rejected: float
    style_chosen: str
    style_rejected: str
    question: Question
    votes: tuple[int, ...]
    p_chosen: float
    p_true: float
    kind: str = "style"

    @property
    def topic(self) -> str:
        """The question's topic."""
        return self.question.topic


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x / 2)) is the sigmoid without overflow for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _check_noise(noise: float) -> None:
    is_number = isinstance(noise, (int, float, np.floating, np.integer))
    if not (is_number and np.isfinite(noise) and noise > 0):
        raise ValueError(f"noise must be a finite number > 0, got {noise!r}")


def _check_n_annotators(n_annotators: int, minimum: int = 1) -> None:
    if not isinstance(n_annotators, (int, np.integer)) or n_annotators < minimum:
        raise ValueError(f"n_annotators must be an integer >= {minimum}, got {n_annotators!r}")


def _perceived_margin(gold_a, gold_b, noise: float, n_annotators: int,
                      rng: np.random.Generator, position: float = 0.0) -> np.ndarray:
    """``z = (u_a - u_b) / noise + position + Logistic(0, 1)``, of shape ``delta.shape +
    (n_annotators,)``."""
    _check_noise(noise)
    _check_n_annotators(n_annotators)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    delta = np.subtract(np.asarray(gold_a, dtype=np.float64), np.asarray(gold_b, dtype=np.float64))
    if not np.all(np.isfinite(delta)):
        bad = delta[~np.isfinite(delta)][:3].tolist()
        raise ValueError(f"gold_a and gold_b must be finite, got differences {bad}")
    mean = (delta / noise + position)[..., None]
    return mean + rng.logistic(0.0, 1.0, size=delta.shape + (n_annotators,))


def simulate_annotators(gold_a, gold_b, n_annotators: int, noise: float,
                        rng: np.random.Generator, position: float = 0.0) -> np.ndarray:
    """Votes of ``n_annotators`` independent Bradley-Terry annotators on pairs ``(a, b)``.

    Each annotator prefers ``a`` with probability ``sigmoid((gold_a - gold_b) / noise +
    position)``.

    Args:
        gold_a, gold_b: gold rewards (or the annotators' utilities) of the two responses,
            scalars or arrays (broadcast).
        n_annotators: annotators per pair (>= 1).
        noise: annotator temperature (> 0), in gold-reward units.
        rng: a ``numpy.random.Generator``.
        position: logit added in favour of ``a``, the response shown first (position bias).

    Returns:
        int8 array of shape ``broadcast(gold_a, gold_b).shape + (n_annotators,)``; 1 where the
        annotator prefers ``a``, 0 where it prefers ``b``. Book ch. 11 and ch. 5 (Bradley-Terry).
    """
    return (_perceived_margin(gold_a, gold_b, noise, n_annotators, rng, position) > 0).astype(np.int8)


def inter_annotator_agreement(votes) -> float:
    """Fraction of annotator pairs that agree, averaged over items.

    With ``k`` of ``n`` annotators voting 1 on an item, ``[k(k-1) + (n-k)(n-k-1)] / [n(n-1)]`` of
    its annotator pairs agree. Under the Bradley-Terry model the expectation is
    ``p^2 + (1 - p)^2`` per item.

    Args:
        votes: 0/1 array of shape ``(n_items, n_annotators)``, ``n_annotators >= 2``.

    Returns:
        the mean agreement, in ``[0, 1]``. Book ch. 11 (disagreement among annotators).
    """
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[0] < 1:
        raise ValueError(f"votes must be a 2-D array (n_items, n_annotators), got shape {votes.shape}")
    _check_n_annotators(votes.shape[1], minimum=2)
    if not np.isin(votes, (0, 1)).all():
        raise ValueError(f"votes must contain only 0 and 1, got values {np.unique(votes).tolist()}")
    n = votes.shape[1]
    k = votes.sum(axis=1).astype(np.float64)
    return float(np.mean((k * (k - 1) + (n - k) * (n - k - 1)) / (n * (n - 1))))


def majority_probability(p, n_annotators: int) -> np.ndarray:
    """Probability that the majority of ``n_annotators`` independent annotators, each preferring
    ``a`` with probability ``p``, prefers ``a``; a tie (even ``n``) is a fair coin, as in
    :func:`preference_pairs`. ``sum_{k > n/2} C(n, k) p^k (1 - p)^(n - k)`` (+ half the tie)."""
    _check_n_annotators(n_annotators)
    p = np.asarray(p, dtype=np.float64)
    n = int(n_annotators)
    total = np.zeros_like(p)
    for k in range(n + 1):
        weight = 1.0 if 2 * k > n else 0.5 if 2 * k == n else 0.0
        if weight:
            total = total + weight * math.comb(n, k) * p**k * (1.0 - p) ** (n - k)
    return total


def bt_accuracy_ceiling(gold_a, gold_b, noise: float, n_annotators: int = 1) -> float:
    """The best achievable accuracy at predicting the label of a pair.

    The label is the choice of one annotator (``n_annotators=1``) or the majority of
    ``n_annotators`` (ties broken by a coin, as in :func:`preference_pairs`). With
    ``p = sigmoid((gold_a - gold_b) / noise)`` and ``q`` the probability that the label is
    ``a`` (:func:`majority_probability`), the Bayes-optimal predictor picks the higher-gold
    response and is right with probability ``max(q, 1 - q)``; this returns the mean over pairs.
    No reward model can beat it on held-out labels. Book ch. 5 and ch. 11.
    """
    _check_noise(noise)
    delta = np.asarray(gold_a, dtype=np.float64) - np.asarray(gold_b, dtype=np.float64)
    return label_accuracy_ceiling(_sigmoid(delta / noise), n_annotators)


def label_accuracy_ceiling(p, n_annotators: int = 1) -> float:
    """:func:`bt_accuracy_ceiling` from each pair's probability ``p`` that one annotator
    prefers a given response (a :class:`PreferencePair`'s ``p_true``, biases included): the
    mean of ``max(q, 1 - q)``, ``q`` the probability that the label (one annotator or the
    majority of ``n_annotators``) is that response."""
    q = majority_probability(p, n_annotators)
    return float(np.mean(np.maximum(q, 1.0 - q)))


def likert_cutpoints(n_points: int) -> tuple[float, ...]:
    """Default positive bin edges (in logit units of the perceived margin) for a pairwise
    ``n_points`` scale: one logit apart, ``(1, 2, 3)`` for 8 points; odd scales centre a tie
    bin of width 1 on zero, ``(0.5, 1.5)`` for 5 points."""
    if not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    m = n_points // 2
    if n_points % 2 == 0:
        return tuple(float(j) for j in range(1, m))
    return tuple(j - 0.5 for j in range(1, m + 1))


def likert_ratings(gold_a, gold_b, noise: float, rng: np.random.Generator, n_points: int = 5,
                   n_annotators: int = 1, cutpoints: Sequence[float] | None = None) -> np.ndarray:
    """Pairwise Likert ratings of ``a`` vs ``b`` from Bradley-Terry annotators.

    The scale follows book ch. 11 (tables of the 5- and 8-point scales): 1 means "a is much
    better", ``n_points`` means "b is much better"; on an odd scale the middle value is a tie,
    and an even scale has no tie. Each rating bins the annotator's perceived margin
    ``z = (g_a - g_b) / noise + Logistic(0, 1)`` (see the module docstring) at the symmetric
    edges ``0`` (even scales only) and ``+-cutpoints``: the larger ``z``, the smaller the rating.
    On an even scale, ``rating <= n_points / 2`` ("a better") thus happens with exactly the
    binary annotators' probability ``sigmoid((g_a - g_b) / noise)``.

    Args:
        gold_a, gold_b: gold rewards, scalars or arrays (broadcast).
        noise: annotator temperature (> 0).
        rng: a ``numpy.random.Generator``.
        n_points: scale size (>= 2); 5 and 8 are the book's.
        n_annotators: ratings per pair (>= 1).
        cutpoints: increasing positive edges, ``n_points // 2 - 1`` of them for even scales and
            ``n_points // 2`` for odd ones; default :func:`likert_cutpoints`.

    Returns:
        int64 array of ratings in ``1..n_points``, shape ``broadcast(gold_a, gold_b).shape +
        (n_annotators,)``.
    """
    default = likert_cutpoints(n_points)
    cuts = np.asarray(default if cutpoints is None else cutpoints, dtype=np.float64)
    if cuts.shape != (len(default),) or np.any(cuts <= 0) or np.any(np.diff(cuts) <= 0):
        raise ValueError(f"cutpoints must be {len(default)} increasing positive numbers for a "
                         f"{n_points}-point scale, got {cutpoints!r}")
    middle = [0.0] if n_points % 2 == 0 else []
    edges = np.concatenate([-cuts[::-1], middle, cuts])  # n_points - 1 ascending edges
    z = _perceived_margin(gold_a, gold_b, noise, n_annotators, rng)
    return n_points - np.searchsorted(edges, z).astype(np.int64)


def preference_pairs(seed: int = 0, n: int = 1000, n_annotators: int = 3, noise: float = 0.5,
                     questions: Sequence[Question] | None = None,
                     styles: Sequence[str] = STYLES, bias: AnnotatorBias = UNBIASED,
                     correctness_fraction: float = 0.0) -> list[PreferencePair]:
    """``n`` preference pairs: two answers to the same question, annotators vote.

    For each pair: draw a question (topic-balanced) and, with probability
    ``correctness_fraction``, make a **correctness** pair (one of
    :data:`CORRECTNESS_STYLES`, rendered with the same template once with the right answer
    and once with a wrong one of the same kind); otherwise a **style** pair (two distinct
    ``styles``). The two responses go in random order as ``a`` (shown first) and ``b``;
    ``n_annotators`` annotators vote (:func:`simulate_annotators` on the utilities of
    :func:`annotator_utility`, with the position bias). The majority's choice becomes
    ``chosen``. **Tie rule** (even ``n_annotators``): a fair coin decides, because a tie
    carries no information.

    Args:
        seed: seed of ``numpy.random.default_rng``; same seed, same pairs.
        n: number of pairs (>= 1).
        n_annotators: annotators per pair (>= 1).
        noise: annotator temperature (> 0); with the gold reward's scale, ``0.5`` makes a
            verbose-vs-concise pair nearly a coin flip and a correct-vs-wrong pair (gap 2) 98%
            clear.
        questions: questions to draw from; default the training split.
        styles: the styles of style pairs, at least two, each in :data:`STYLES`.
        bias: the annotators' biases (:class:`AnnotatorBias`); default none.
        correctness_fraction: the share of correctness pairs, in ``[0, 1]``.

    Returns:
        a list of :class:`PreferencePair`. Book ch. 11 (preference data).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    _check_n_annotators(n_annotators)
    _check_noise(noise)
    styles = tuple(styles)
    bad = [s for s in styles if s not in STYLES]
    if bad or len(styles) < 2 or len(set(styles)) != len(styles):
        raise ValueError(f"styles must be at least two distinct names from {STYLES}, got {styles!r}")
    if not isinstance(bias, AnnotatorBias):
        raise ValueError(f"bias must be an AnnotatorBias, got {type(bias).__name__}")
    if not 0.0 <= correctness_fraction <= 1.0:
        raise ValueError(f"correctness_fraction must be in [0, 1], got {correctness_fraction!r}")
    rng = np.random.default_rng(seed)
    pool = split_questions()[0] if questions is None else list(questions)
    pairs = []
    for q in sample_questions(pool, n, rng):
        if rng.random() < correctness_fraction:
            kind, style = "correctness", CORRECTNESS_STYLES[rng.integers(len(CORRECTNESS_STYLES))]
            right_text = render_answer(q, style, rng)
            texts, names = (right_text, with_answer(right_text, q, wrong_answer(q, rng))), \
                (style, "wrong")
            if rng.random() < 0.5:
                texts, names = texts[::-1], names[::-1]
        else:
            kind = "style"
            i, j = rng.choice(len(styles), size=2, replace=False)
            names = (styles[i], styles[j])
            texts = (render_answer(q, names[0], rng), render_answer(q, names[1], rng))
        golds = (gold_reward(q, texts[0]), gold_reward(q, texts[1]))
        utils = [annotator_utility(q, t, bias) for t in texts]
        votes_a = simulate_annotators(utils[0], utils[1], n_annotators, noise, rng, bias.position)
        p_a = float(_sigmoid((utils[0] - utils[1]) / noise + bias.position))
        k = int(votes_a.sum())
        a_wins = 2 * k > n_annotators or (2 * k == n_annotators and rng.random() < 0.5)
        c, r = (0, 1) if a_wins else (1, 0)
        votes = tuple(int(v) for v in (votes_a if a_wins else 1 - votes_a))
        pairs.append(PreferencePair(
            prompt=q.prompt, chosen=texts[c], rejected=texts[r], gold_chosen=golds[c],
            gold_rejected=golds[r], style_chosen=names[c], style_rejected=names[r],
            question=q, votes=votes, p_chosen=sum(votes) / n_annotators,
            p_true=p_a if a_wins else 1.0 - p_a, kind=kind,
        ))
    return pairs
