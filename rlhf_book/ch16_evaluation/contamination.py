"""Contamination: evaluation items that leaked into the training data (book §16.4).

Decontamination looks for overlap between the training corpus and each evaluation item: shared
word n-grams (Tulu 3 used 8-grams and found, among others, UltraFeedback overlapping TruthfulQA
and NuminaMath overlapping MATH) or shared fixed-length character substrings (50 characters).
An item is flagged when any of its n-grams (or substrings) occurs anywhere in the corpus.

Normalisation, which the book leaves open and every tool fixes differently, is fixed here: text
is lower-cased and split into words on anything that is not a letter or a digit, so
punctuation and spacing do not hide a copy; the character rule collapses runs of whitespace to
one space. An item shorter than the window is compared whole: with ``n = 8`` most of this
world's questions (six to ten words) would otherwise have no n-gram at all and could never be
flagged -- short items are where a fixed window fails (Brown et al. 2020 shrank the window for
short benchmarks for this reason).

What no overlap rule catches: a near-duplicate with the numbers changed (§16.4) shares few
n-grams, and a paraphrase none.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

__all__ = ["words", "word_ngrams", "ngram_contamination", "substring_contamination"]

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """``text`` lower-cased and split into words of letters and digits."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of ``n``-word windows of :func:`words` ``(text)`` (empty when it has fewer than
    ``n`` words)."""
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def _check_texts(texts, name: str) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a sequence of str")
    return list(texts)


# [guide:ngram-contamination]
def ngram_contamination(train_texts: Sequence[str], eval_texts: Sequence[str],
                        n: int = 8) -> np.ndarray:
    """Which evaluation items share a word ``n``-gram with the training corpus (book §16.4;
    Tulu 3's 8-gram check). Returns bool ``[E]``, one flag per item of ``eval_texts``.

    An item with at least ``n`` words is flagged when any of its ``n``-word windows occurs in
    any training text; an item with fewer than ``n`` words is flagged when all its words occur
    as one consecutive run in a training text. Windows never cross from one training text into
    the next. Words come from :func:`words` (lower case, letters and digits only).

    How: put every training text's windows into one Python ``set`` (windows of length ``n``,
    and of each shorter length an item needs), then test each item's windows for membership.
    """
    train_texts = _check_texts(train_texts, "train_texts")
    eval_texts = _check_texts(eval_texts, "eval_texts")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (words per window), got {n!r}")
    # BEGIN SOLUTION
    items = [words(t) for t in eval_texts]
    sizes = {min(n, len(w)) for w in items if w}
    index = {size: set() for size in sizes}
    for text in train_texts:
        w = words(text)
        for size in sizes:
            index[size].update(tuple(w[i:i + size]) for i in range(len(w) - size + 1))
    flags = []
    for w in items:
        size = min(n, len(w))
        flags.append(bool(w) and any(tuple(w[i:i + size]) in index[size]
                                     for i in range(len(w) - size + 1)))
    return np.asarray(flags, bool)
    # END SOLUTION
# [/guide]


def substring_contamination(train_texts: Sequence[str], eval_texts: Sequence[str],
                            length: int = 50) -> np.ndarray:
    """Which evaluation items share a ``length``-character substring with the training corpus
    (book §16.4: fixed-length character substrings, e.g. 50). Texts are lower-cased with runs
    of whitespace collapsed; an item shorter than ``length`` is flagged when it occurs whole
    inside a training text. Returns bool ``[E]``."""
    train_texts = _check_texts(train_texts, "train_texts")
    eval_texts = _check_texts(eval_texts, "eval_texts")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int (characters), got {length!r}")

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    corpus = "\n".join(norm(t) for t in train_texts)  # "\n" never occurs inside a text
    windows = {corpus[i:i + length] for i in range(len(corpus) - length + 1)}
    flags = []
    for text in map(norm, eval_texts):
        if len(text) < length:
            flags.append(bool(text) and text in corpus)
        else:
            flags.append(any(text[i:i + length] in windows
                             for i in range(len(text) - length + 1)))
    return np.asarray(flags, bool)
