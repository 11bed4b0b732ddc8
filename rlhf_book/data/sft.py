"""Supervised fine-tuning (SFT) demonstrations written by simulated demonstrators of mixed quality.

Book ch. 4 (instruction tuning): a demonstration is a conversation whose assistant turn is the
behaviour imitated. Real demonstration data is written by many people, and not all of them are
careful: some pad their answers, some hedge, some are wrong. The world's demonstrators write in
the answer styles of :mod:`rlhf_book.data.styles` with the shares of
:data:`DEMONSTRATOR_STYLES` (half of the answers concise and correct), so an SFT model
imitates a mixture, flaws included, and there is room above it for preference tuning (book
ch. 4 on the limits of imitation, ch. 6 and 8 for what closes the gap).

Messages are ``{"role": ..., "content": ...}`` dicts; the chat template that turns them into
tokens lives in :mod:`rlhf_book.lm.tokenizer`. Every conversation fits the 128-token context:
a system prompt (<= 28 bytes) is added only where prompt (<= 48) and answer (<= 72) leave room.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlhf_book.data.styles import STYLES, render_answer
from rlhf_book.data.world import Question, sample_questions, split_questions

# Who writes the demonstrations: the share of answers in each style (sums to 1).
DEMONSTRATOR_STYLES = {"concise_correct": 0.5, "verbose": 0.2, "hedging": 0.15, "wrong": 0.1,
                       "off_topic": 0.05}
# The contents of a conversation fit 128 tokens with the chat template's 7 special tokens.
CONTENT_BYTES = 128 - 7
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly.", "Be concise and correct.",
                  "You answer questions.")


def sft_demonstrations(seed: int = 0, n: int = 2000, questions: Sequence[Question] | None = None,
                       system_prob: float = 0.2,
                       styles: dict[str, float] | None = None) -> list[list[dict[str, str]]]:
    """``n`` SFT conversations ``[system?, user, assistant]`` by the world's demonstrators.

    Args:
        seed: seed of ``numpy.random.default_rng``; same seed, same conversations.
        n: number of conversations (>= 1).
        questions: the questions to draw from (topic-balanced, with replacement). Default: the
            training split of :func:`~rlhf_book.data.world.split_questions`, so held-out facts
            never appear in a demonstration.
        system_prob: probability that a conversation opens with a system message drawn from
            :data:`SYSTEM_PROMPTS`.
        styles: the share of each answer style, ``{style: weight}``; default
            :data:`DEMONSTRATOR_STYLES`. ``{"concise_correct": 1.0}`` gives perfect
            demonstrators.

    Returns:
        a list of conversations, each a list of ``{"role", "content"}`` dicts; the assistant's
        content is an answer in a style drawn from ``styles``. Book ch. 4 (instruction tuning).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not 0.0 <= system_prob <= 1.0:
        raise ValueError(f"system_prob must be in [0, 1], got {system_prob!r}")
    styles = DEMONSTRATOR_STYLES if styles is None else dict(styles)
    weights = np.asarray(list(styles.values()), dtype=np.float64)
    if any(s not in STYLES for s in styles) or not styles or np.any(weights < 0) \
            or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"styles must map names from {STYLES} to weights >= 0 summing to 1, "
                         f"got {styles!r}")
    names = list(styles)
    rng = np.random.default_rng(seed)
    pool = split_questions()[0] if questions is None else list(questions)
    conversations = []
    for q in sample_questions(pool, n, rng):
        style = names[rng.choice(len(names), p=weights)]
        answer = render_answer(q, style, rng)
        messages = [{"role": "user", "content": q.prompt},
                    {"role": "assistant", "content": answer}]
        if rng.random() < system_prob:
            system = SYSTEM_PROMPTS[rng.integers(len(SYSTEM_PROMPTS))]
            # only where the whole conversation still fits the context (a long padded answer
            # to a long question leaves no room for one)
            if len(system) + len(q.prompt) + len(answer) <= CONTENT_BYTES:
                messages.insert(0, {"role": "system", "content": system})
        conversations.append(messages)
    return conversations
