"""The facts of the synthetic assistant world, and the questions asked about them.

The world is small enough to print on one page and fixed (these are facts, not random draws):

* ``capital``    -- 28 countries and their capital cities ("France" -> "Paris").
* ``animal``     -- 19 animals and the sound each makes ("cow" -> "moo"); every sound is unique.
* ``color``      -- 15 things and their colour ("the sky" -> "blue"); 10 distinct colours.
* ``arithmetic`` -- ``a + b`` for ``a, b`` in 1..9 and ``a * b`` for ``a, b`` in 2..9 (145 facts).

A :class:`Fact` is asked about through several question templates ("What is the capital of
France?", "Name the capital of France.", ...), which gives :class:`Question` objects. The
held-out split (:func:`split_questions`) is made by *fact*, not by question: a held-out fact is
never asked in training under any template, so evaluating on it measures generalisation to
unseen knowledge rather than to an unseen phrasing (book ch. 4, instruction tuning).

Everything is ASCII (the model is byte-level) and every prompt fits in :data:`MAX_PROMPT_BYTES`
bytes, so that prompt + answer + chat-template tokens fit the mini GPT's 128-token context.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

TOPICS = ("capital", "animal", "color", "arithmetic")
MAX_PROMPT_BYTES = 48

# Short country names keep every prompt under 48 bytes. No capital shares its country's name
# and no country is also an animal (no "Turkey"), so a capital word is never ambiguous.
CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Canada", "Ottawa"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Cuba", "Havana"), ("Iran", "Tehran"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Australia", "Canberra"),
    ("Argentina", "Buenos Aires"), ("Hungary", "Budapest"),
)

# One sound per animal and no sound shared, so "the last sound word" names one animal.
ANIMAL_SOUNDS = (
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("pig", "oink"),
    ("sheep", "baa"), ("horse", "neigh"), ("snake", "hiss"), ("lion", "roar"), ("owl", "hoot"),
    ("bee", "buzz"), ("frog", "ribbit"), ("hen", "cluck"), ("mouse", "squeak"),
    ("wolf", "howl"), ("donkey", "bray"), ("dove", "coo"), ("crow", "caw"), ("goat", "bleat"),
)

# The subject is the noun phrase as it reads mid-sentence ("What color is a banana?").
THING_COLORS = (
    ("the sky", "blue"), ("grass", "green"), ("a banana", "yellow"), ("snow", "white"),
    ("coal", "black"), ("blood", "red"), ("a lemon", "yellow"), ("a carrot", "orange"),
    ("a tomato", "red"), ("milk", "white"), ("chocolate", "brown"), ("a flamingo", "pink"),
    ("a plum", "purple"), ("the sea", "blue"), ("a pumpkin", "orange"),
)

ADD_OPERANDS = range(1, 10)
MUL_OPERANDS = range(2, 10)
_OP_WORDS = {"+": "plus", "*": "times"}


@dataclass(frozen=True)
class Fact:
    """One fact of the world: ``topic``, its ``subject`` ("France", "cow", "the sky", "3 + 4")
    and the short correct ``answer`` ("Paris", "moo", "blue", "7")."""

    topic: str
    subject: str
    answer: str


@dataclass(frozen=True)
class Question:
    """A question about one fact.

    ``topic`` is one of :data:`TOPICS`; ``prompt`` is the user's text; ``answer`` is the short
    correct answer ("Paris", "12"); ``subject`` names the fact asked about (two questions with
    the same ``(topic, subject)`` ask about the same fact under different templates).
    """

    topic: str
    prompt: str
    answer: str
    subject: str = ""


def with_article(noun: str) -> str:
    """``"cow" -> "a cow"``, ``"owl" -> "an owl"`` (every animal name here follows the vowel rule)."""
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def op_in_words(expression: str) -> str:
    """``"3 + 4" -> "3 plus 4"``, ``"3 * 4" -> "3 times 4"``."""
    a, op, b = expression.split()
    return f"{a} {_OP_WORDS[op]} {b}"


def all_facts() -> list[Fact]:
    """Every fact of the world, in a fixed order (topic by topic, as listed in :data:`TOPICS`)."""
    facts = [Fact("capital", c, x) for c, x in CAPITALS]
    facts += [Fact("animal", a, s) for a, s in ANIMAL_SOUNDS]
    facts += [Fact("color", t, c) for t, c in THING_COLORS]
    facts += [Fact("arithmetic", f"{a} + {b}", str(a + b)) for a in ADD_OPERANDS for b in ADD_OPERANDS]
    facts += [Fact("arithmetic", f"{a} * {b}", str(a * b)) for a in MUL_OPERANDS for b in MUL_OPERANDS]
    return facts


@lru_cache(maxsize=None)
def answer_vocabulary(topic: str) -> tuple[str, ...] | None:
    """The set of answers a response to ``topic`` can state, sorted; ``None`` for arithmetic,
    whose answers are all integers. The gold reward uses it to tell a wrong answer "of the same
    kind" (another capital) from an answer that is merely off topic."""
    if topic == "arithmetic":
        return None
    if topic not in TOPICS:
        raise ValueError(f"topic must be one of {TOPICS}, got {topic!r}")
    return tuple(sorted({f.answer for f in all_facts() if f.topic == topic}))


def question_prompts(fact: Fact) -> list[str]:
    """The question templates for ``fact``, filled in (3 per fact)."""
    s = fact.subject
    if fact.topic == "capital":
        return [f"What is the capital of {s}?", f"Name the capital of {s}.",
                f"Which city is the capital of {s}?"]
    if fact.topic == "animal":
        a = with_article(s)
        return [f"What sound does {a} make?", f"What does {a} say?",
                f"Which sound does {a} make?"]
    if fact.topic == "color":
        return [f"What color is {s}?", f"Name the color of {s}.", f"Which color is {s}?"]
    return [f"What is {s}?", f"What is {op_in_words(s)}?", f"Compute {s}."]


def fact_statements(topic: str, subject: str, answer: str) -> list[str]:
    """Declarative sentences saying that ``subject``'s answer is ``answer`` (2 per topic).

    The answer is always the last answer-like word of the sentence, because the gold reward and
    the arithmetic verifier read the *last* stated answer. Passing a wrong ``answer`` gives a
    confident wrong statement (the ``wrong`` style)."""
    if topic == "capital":
        return [f"The capital of {subject} is {answer}.", f"{answer} is the capital of {subject}."]
    if topic == "animal":
        a = with_article(subject)
        return [f"{a[0].upper()}{a[1:]} says {answer}.", f"The {subject} makes the sound {answer}."]
    if topic == "color":
        return [f"{subject[0].upper()}{subject[1:]} is {answer}.",
                f"The color of {subject} is {answer}."]
    if topic == "arithmetic":
        return [f"{subject} = {answer}.", f"{op_in_words(subject)} is {answer}."]
    raise ValueError(f"topic must be one of {TOPICS}, got {topic!r}")


def all_questions() -> list[Question]:
    """Every (fact x template) question, in a fixed order: facts as in :func:`all_facts`, then
    templates as in :func:`question_prompts`."""
    return [Question(f.topic, p, f.answer, f.subject)
            for f in all_facts() for p in question_prompts(f)]


def split_facts(seed: int = 0, heldout_fraction: float = 0.2) -> tuple[list[Fact], list[Fact]]:
    """Split the facts into ``(train, heldout)``, stratified by topic.

    Each topic holds out ``round(heldout_fraction * n_topic_facts)`` facts chosen by
    ``numpy.random.default_rng(seed)``; both lists keep the order of :func:`all_facts`.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    rng = np.random.default_rng(seed)
    facts = all_facts()
    heldout: set[Fact] = set()
    for topic in TOPICS:
        group = [f for f in facts if f.topic == topic]
        k = int(round(heldout_fraction * len(group)))
        heldout.update(group[i] for i in rng.permutation(len(group))[:k])
    return [f for f in facts if f not in heldout], [f for f in facts if f in heldout]


def split_questions(seed: int = 0,
                    heldout_fraction: float = 0.2) -> tuple[list[Question], list[Question]]:
    """Split :func:`all_questions` into ``(train, heldout)`` by fact (see :func:`split_facts`).

    Every template of a held-out fact is held out, so no held-out fact is ever asked in
    training. The default ``seed=0`` is *the* split every other generator uses by default.
    """
    _, heldout_facts = split_facts(seed, heldout_fraction)
    held = {(f.topic, f.subject) for f in heldout_facts}
    train, heldout = [], []
    for q in all_questions():
        (heldout if (q.topic, q.subject) in held else train).append(q)
    return train, heldout


def group_by_topic(items: Sequence) -> list[list]:
    """Split facts or questions into per-topic lists, in order of first appearance."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(item.topic, []).append(item)
    return list(groups.values())


def sample_questions(questions: Sequence[Question], n: int,
                     rng: np.random.Generator) -> list[Question]:
    """Draw ``n`` questions with replacement, topic-balanced: pick a topic uniformly among those
    present, then a question uniformly within it. (Uniform over questions would be 70%
    arithmetic, because the arithmetic tables have the most facts.)"""
    if not questions:
        raise ValueError("questions must be a non-empty sequence of Question, got an empty one")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    groups = group_by_topic(questions)
    picks = rng.integers(len(groups), size=n)
    return [groups[g][rng.integers(len(groups[g]))] for g in picks]
