"""The facts of the synthetic assistant world, and the questions asked about them.

The world is small enough to print on one page and fixed (these are facts, not random draws):

* ``capital``    -- 28 countries and their capital cities ("France" -> "Paris").
* ``animal``     -- 19 animals and the sound each makes ("cow" -> "moo"); every sound is unique.
* ``color``      -- 15 things and their colour ("the sky" -> "blue"); 10 distinct colours.
* ``opposite``   -- 10 pairs of opposite words, asked both ways ("hot" -> "cold", "cold" -> "hot").
* ``arithmetic`` -- ``a + b`` for ``a, b`` in 1..9 (81 facts): a skill more than a fact, checked
  by a verifier and reported apart from the four fact topics (:data:`FACT_TOPICS`).

A :class:`Fact` is asked about through twelve question templates per topic ("What is the
capital of France?", "Name the capital of France.", ...), which gives :class:`Question`
objects. The first :data:`TRAIN_TEMPLATES` templates are the ones training data uses; the
other eight are **new phrasings** that no corpus document and no demonstration contains. The
world has three question sets (:func:`question_splits`), one per question a reader asks:

* ``train``     -- training facts under the training templates: demonstrations, preference
  pairs and RL prompts come from here;
* ``rephrased`` -- training facts under the new phrasings: the main evaluation. The model was
  taught these facts; can it answer when asked in words it never saw (book ch. 4: instruction
  tuning generalises across phrasings)?
* ``unseen``    -- the held-out facts (20% per topic), under every template: never asked in
  any document or demonstration, only stated in the pretraining corpus. A second, separately
  labelled row: does post-training elicit knowledge the base model holds only as statements?

Everything is ASCII (the model is byte-level) and every prompt fits in :data:`MAX_PROMPT_BYTES`
bytes, so that prompt + answer + chat-template tokens fit the mini GPT's 128-token context.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

TOPICS = ("capital", "animal", "color", "opposite", "arithmetic")
FACT_TOPICS = TOPICS[:-1]  # the main evaluation's topics; arithmetic is scored on its own
TRAIN_TEMPLATES = 4  # templates 0..3 of each topic appear in training data; 4..11 never do
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

# Both directions of each pair are facts. No opposite word occurs in any other topic's answers,
# in the answer styles' padding or in the corpus's prose (tests check it).
OPPOSITE_PAIRS = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
                  ("day", "night"), ("happy", "sad"), ("wet", "dry"), ("open", "closed"),
                  ("full", "empty"), ("loud", "quiet"))
OPPOSITES = OPPOSITE_PAIRS + tuple((b, a) for a, b in OPPOSITE_PAIRS)

ADD_OPERANDS = range(1, 10)
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
    the same ``(topic, subject)`` ask about the same fact under different templates);
    ``template`` is the index of the question's template in :func:`question_prompts`.
    """

    topic: str
    prompt: str
    answer: str
    subject: str = ""
    template: int = 0

    @property
    def rephrased(self) -> bool:
        """Whether the question uses one of the new phrasings no training data contains."""
        return self.template >= TRAIN_TEMPLATES


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
    facts += [Fact("opposite", a, b) for a, b in OPPOSITES]
    facts += [Fact("arithmetic", f"{a} + {b}", str(a + b)) for a in ADD_OPERANDS for b in ADD_OPERANDS]
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
    """The twelve question templates for ``fact``, filled in: the first
    :data:`TRAIN_TEMPLATES` are the training phrasings, the rest the new phrasings."""
    s = fact.subject
    if fact.topic == "capital":
        return [f"What is the capital of {s}?", f"Name the capital of {s}.",
                f"Which city is the capital of {s}?", f"What city is the capital of {s}?",
                f"Tell me the capital of {s}.", f"Do you know the capital of {s}?",
                f"Quick question: capital of {s}?", f"{s} has which capital city?",
                f"What's the capital city of {s}?", f"I need the capital of {s}.",
                f"Capital of {s}, please?", f"Which is the capital city of {s}?"]
    if fact.topic == "animal":
        a = with_article(s)
        return [f"What sound does {a} make?", f"What does {a} say?",
                f"Which sound does {a} make?", f"What noise does {a} make?",
                f"Tell me the sound {a} makes.", f"Do you know what {a} says?",
                f"How does {a} sound?", f"What is the sound of {a}?",
                f"Quick question: what does {a} say?", f"{a[0].upper()}{a[1:]} makes which sound?",
                f"Which noise does {a} make?", f"What do you hear from {a}?"]
    if fact.topic == "color":
        return [f"What color is {s}?", f"Name the color of {s}.", f"Which color is {s}?",
                f"What is the color of {s}?",
                f"Tell me the color of {s}.", f"Do you know what color {s} is?",
                f"Quick question: what color is {s}?", f"{s[0].upper()}{s[1:]} is which color?",
                f"What colour is {s}?", f"Which colour is {s}?", f"I need the color of {s}.",
                f"What is the colour of {s}?"]
    if fact.topic == "opposite":
        return [f"What is the opposite of {s}?", f"Name the opposite of {s}.",
                f"Which word is the opposite of {s}?", f"What word means the opposite of {s}?",
                f"Tell me the opposite of {s}.", f"Do you know the opposite of {s}?",
                f"Quick question: opposite of {s}?", f"What is the antonym of {s}?",
                f"Give me the opposite of {s}.", f"Which word is opposite to {s}?",
                f"I need the opposite of {s}.", f"What is the reverse of {s}?"]
    a, _, b = s.split()
    w = op_in_words(s)
    return [f"What is {s}?", f"What is {w}?", f"Compute {s}.", f"Add {a} and {b}.",
            f"Calculate {s}.", f"What do you get for {s}?", f"How much is {w}?",
            f"Tell me {s}.", f"Work out {s}.", f"What does {s} equal?",
            f"Quick question: {s}?", f"Find {w}."]


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
    if topic == "opposite":
        return [f"The opposite of {subject} is {answer}.", f"{subject.capitalize()} and {answer} are opposites."]
    if topic == "arithmetic":
        return [f"{subject} = {answer}.", f"{op_in_words(subject)} is {answer}."]
    raise ValueError(f"topic must be one of {TOPICS}, got {topic!r}")


def all_questions() -> list[Question]:
    """Every (fact x template) question, in a fixed order: facts as in :func:`all_facts`, then
    templates as in :func:`question_prompts`."""
    return [Question(f.topic, p, f.answer, f.subject, t)
            for f in all_facts() for t, p in enumerate(question_prompts(f))]


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


class QuestionSplits(NamedTuple):
    """The world's three question sets (see the module docstring)."""

    train: list[Question]      # training facts, training templates
    rephrased: list[Question]  # training facts, new phrasings: the main evaluation
    unseen: list[Question]     # held-out facts, every template


def question_splits(seed: int = 0, heldout_fraction: float = 0.2) -> QuestionSplits:
    """Split :func:`all_questions` into :class:`QuestionSplits` ``(train, rephrased, unseen)``.

    Facts are held out with :func:`split_facts`; a training fact's questions go to ``train``
    under templates ``0..TRAIN_TEMPLATES-1`` and to ``rephrased`` under the others. No
    training data contains a ``rephrased`` or ``unseen`` question. The default ``seed=0`` is
    *the* split every other generator uses by default.
    """
    _, heldout_facts = split_facts(seed, heldout_fraction)
    held = {(f.topic, f.subject) for f in heldout_facts}
    splits = QuestionSplits([], [], [])
    for q in all_questions():
        part = splits.unseen if (q.topic, q.subject) in held else \
            splits.rephrased if q.rephrased else splits.train
        part.append(q)
    return splits


def split_questions(seed: int = 0,
                    heldout_fraction: float = 0.2) -> tuple[list[Question], list[Question]]:
    """``(train, unseen)`` of :func:`question_splits`: the training questions, and every
    question about a held-out fact (never asked in training under any template)."""
    splits = question_splits(seed, heldout_fraction)
    return splits.train, splits.unseen


def fact_questions(questions: Sequence[Question]) -> list[Question]:
    """The questions of the four fact topics (:data:`FACT_TOPICS`), in order."""
    return [q for q in questions if q.topic in FACT_TOPICS]


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
