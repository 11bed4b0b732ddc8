"""Answer styles and the gold reward: the hidden "true human preference" of the world.

Styles (:data:`STYLES`), each rendered by :func:`render_answer` from a few templates:

* ``concise_correct`` -- the correct answer in one short sentence ("The capital of France is Paris.").
* ``verbose``         -- correct, but padded with pleasantries and filler.
* ``hedging``         -- correct, wrapped in "I think ... maybe ... not sure".
* ``wrong``           -- a confident answer of the same kind that is wrong (another capital,
  another colour, a nearby number).
* ``off_topic``       -- an unrelated sentence that answers nothing.

Gold reward (:func:`gold_reward`), computed from the response *text* alone, so it can score
anything a model generates::

    gold = correctness + hedging + length                                 in [-2.75, 1.0]

    correctness = +1.0  if the stated answer is correct
                  -1.0  if the stated answer is wrong (one of the same kind, e.g. another capital)
                  -0.5  if no answer of that kind is stated (off topic, empty, garbage)
    hedging     = -0.25 * min(#hedge phrases, 3)        phrases in HEDGE_PHRASES, whole words
    length      = -min(0.02 * max(0, n_bytes - 48), 1.0)  a concise answer is at most 48 bytes

The *stated answer* is the last answer-like token of the text: the last integer for arithmetic
(as :func:`rlhf_book.data.arithmetic.extract_answer` reads it), otherwise the last word or phrase
from the topic's answer vocabulary (:func:`rlhf_book.data.world.answer_vocabulary`),
case-insensitive. So "Paris? No, Berlin." states Berlin, and a made-up city states nothing.

Expected ordering of the styles' mean gold reward (checked by the tests; measured over 5000
topic-balanced questions: +1.00, +0.74, +0.45, -0.50, -1.00 respectively):

    concise_correct > verbose > hedging > off_topic > wrong

A confident wrong answer is worse than saying nothing useful, and a right answer is worth more
than any amount of style. Words of confidence ("definitely", :data:`CONFIDENT_PHRASES`) are
worth nothing to the gold reward; the simulated annotators like them, and longer answers
(:mod:`rlhf_book.data.preferences`), which is where a reward model fitted to their votes and the
gold reward part ways. Book ch. 11 (preference data) and
ch. 14 (over-optimisation) use this as the truth a learned reward model approximates.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

import numpy as np

from rlhf_book.data.arithmetic import extract_answer
from rlhf_book.data.world import Question, answer_vocabulary, fact_statements

STYLES = ("concise_correct", "verbose", "hedging", "wrong", "off_topic")
MAX_ANSWER_BYTES = 72

GOLD_MIN, GOLD_MAX = -2.75, 1.0
CONCISE_BYTES = 48  # responses up to this length pay no length penalty
LENGTH_PENALTY_PER_BYTE = 0.02
MAX_LENGTH_PENALTY = 1.0
HEDGE_PENALTY = 0.25
MAX_HEDGES = 3
NO_ANSWER_REWARD = -0.5
HEDGE_PHRASES = ("i think", "maybe", "not sure", "perhaps", "probably", "might", "i guess",
                 "possibly", "could be")
# Words of confidence: the gold reward ignores them; the simulated annotators like them (their
# confidence bias, :class:`rlhf_book.data.preferences.AnnotatorBias`).
CONFIDENT_PHRASES = ("for sure", "definitely", "certainly", "no doubt")

_HEDGE_RE = re.compile(r"\b(?:" + "|".join(map(re.escape, HEDGE_PHRASES)) + r")\b", re.IGNORECASE)
_CONFIDENT_RE = re.compile(r"\b(?:" + "|".join(map(re.escape, CONFIDENT_PHRASES)) + r")\b",
                           re.IGNORECASE)

# Padding for the verbose style. No digits, colours, sounds, capitals or hedge words, so the
# padding never changes which answer is stated.
_OPENERS = ("Great question! ", "Sure, glad to help. ", "Good question. ", "Let me explain. ",
            "Of course! ")
_CLOSERS = (" I hope this helps!", " Let me know if you need more.", " This is a well known fact.",
            " Many people learn this in school.", " Thanks for asking!")
# Each hedging template holds two or three hedge phrases and no answer-like word but the answer.
_HEDGES = ("I think it is {x}, but I am not sure.", "Maybe {x}? I am not sure.",
           "It might be {x}, but I could be wrong.", "Perhaps {x}. I think so, but I am not sure.",
           "I guess it is probably {x}.")
# Off-topic sentences: nothing answer-like in any topic (no digits, colours, sounds, capitals).
OFF_TOPIC_SENTENCES = (
    "I like to read books on rainy days.", "The train to the city leaves early.",
    "My favorite food is warm soup.", "Let us talk about something else.",
    "Music can make a long walk better.", "Mountains are fun to climb in summer.",
    "A warm bath helps a lot.", "Tea tastes best with honey.",
    "The library is calm in the morning.", "Walking is a nice way to relax.",
)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def wrong_answer(question: Question, rng: np.random.Generator) -> str:
    """A wrong answer of the same kind: another vocabulary word, or a nearby integer."""
    vocab = answer_vocabulary(question.topic)
    if vocab is None:
        offset = int(rng.choice([-3, -2, -1, 1, 2, 3]))
        value = int(question.answer) + offset
        return str(value if value >= 0 else int(question.answer) - offset)
    others = [v for v in vocab if v != question.answer]
    return others[rng.integers(len(others))]


def _candidates(question: Question, style: str, rng: np.random.Generator) -> list[str]:
    """All renderings of ``style`` for ``question`` (before the length filter)."""
    x, topic, subject = question.answer, question.topic, question.subject
    if style == "concise_correct":
        return fact_statements(topic, subject, x) + [f"The answer is {x}.", f"{x[0].upper()}{x[1:]}.",
                                                      f"It is definitely {x}."]
    if style == "verbose":
        out = []
        for s in fact_statements(topic, subject, x):
            out += [o + s for o in _OPENERS] + [s + c for c in _CLOSERS]
            out += [o + s + c for o in _OPENERS for c in _CLOSERS]
        return out
    if style == "hedging":
        return [h.format(x=x) for h in _HEDGES]
    if style == "wrong":
        w = wrong_answer(question, rng)
        return fact_statements(topic, subject, w) + [f"The answer is {w}.", f"It is {w}, for sure."]
    return list(OFF_TOPIC_SENTENCES)


def render_answer(question: Question, style: str, rng: np.random.Generator) -> str:
    """Render an answer to ``question`` in ``style`` (one of :data:`STYLES`).

    A template is drawn uniformly among those that fit :data:`MAX_ANSWER_BYTES` (72) bytes.
    Verbose answers prefer templates longer than :data:`CONCISE_BYTES`, so that their padding
    is real. Book ch. 11 (preference data: what makes one answer better than another).

    Args:
        question: the :class:`~rlhf_book.data.world.Question` being answered.
        style: one of :data:`STYLES`.
        rng: a ``numpy.random.Generator``; the only source of randomness.

    Returns:
        an ASCII string of at most 72 bytes.
    """
    _check_style(style)
    options = [c for c in _candidates(question, style, rng) if len(c) <= MAX_ANSWER_BYTES]
    if style == "verbose":
        options = [c for c in options if len(c) > CONCISE_BYTES] or options
    return options[rng.integers(len(options))]


@lru_cache(maxsize=None)
def _answer_pattern(topic: str) -> re.Pattern[str]:
    vocab = answer_vocabulary(topic)
    # Longest first, so "New Delhi" wins over any shorter word it contains.
    words = sorted(vocab, key=len, reverse=True)
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
    return re.compile(r"\b(?:" + alternatives + r")\b", re.IGNORECASE)


def stated_answer(question: Question, response: str) -> str | None:
    """The answer ``response`` states for ``question``'s topic: the last integer (arithmetic) or
    the last answer-vocabulary phrase (other topics), normalised to the vocabulary's spelling;
    ``None`` if it states none."""
    if question.topic == "arithmetic":
        value = extract_answer(response)
        return None if value is None else str(value)
    matches = _answer_pattern(question.topic).findall(response)
    if not matches:
        return None
    last = " ".join(matches[-1].split()).lower()
    return next(v for v in answer_vocabulary(question.topic) if v.lower() == last)


def count_hedges(response: str) -> int:
    """Number of hedge phrases (:data:`HEDGE_PHRASES`, whole words, any case) in ``response``."""
    return len(_HEDGE_RE.findall(response))


def count_confident(response: str) -> int:
    """Number of confident phrases (:data:`CONFIDENT_PHRASES`, whole words, any case)."""
    return len(_CONFIDENT_RE.findall(response))


def gold_reward(question: Question, response: str) -> float:
    """The gold ("true human preference") reward of ``response`` to ``question``.

    ``correctness + hedging + length`` as in the module docstring, in ``[-2.75, 1.0]``. Works on
    any text: empty strings and garbage get the no-answer score minus the length penalty.
    Book ch. 5 (reward models: the quantity an RM estimates) and ch. 14 (over-optimisation).
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")
    stated = stated_answer(question, response)
    if stated is None:
        correctness = NO_ANSWER_REWARD
    else:
        correctness = 1.0 if stated.lower() == question.answer.lower() else -1.0
    hedging = -HEDGE_PENALTY * min(count_hedges(response), MAX_HEDGES)
    n_bytes = len(response.encode("utf-8", errors="replace"))
    length = -min(LENGTH_PENALTY_PER_BYTE * max(0, n_bytes - CONCISE_BYTES), MAX_LENGTH_PENALTY)
    return float(correctness + hedging + length)


def gold_reward_batch(questions: Sequence[Question], responses: Sequence[str]) -> np.ndarray:
    """:func:`gold_reward` for each ``(question, response)`` pair; float64 array of shape ``(N,)``."""
    if len(questions) != len(responses):
        raise ValueError(f"questions and responses must have the same length, got "
                         f"{len(questions)} and {len(responses)}")
    return np.array([gold_reward(q, r) for q, r in zip(questions, responses)], dtype=np.float64)
