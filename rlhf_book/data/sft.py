"""Supervised fine-tuning (SFT) demonstrations: chat conversations with concise, correct answers.

Book ch. 4 (instruction tuning): a demonstration is a conversation whose assistant turn is the
behaviour we want imitated. Messages are ``{"role": ..., "content": ...}`` dicts; the chat
template that turns them into tokens lives in :mod:`rlhf_book.lm.tokenizer`.

Byte budget: system <= 28, prompt <= 48 and a concise answer <= 41 bytes, so the contents of a
conversation stay <= 117 bytes and fit the 128-token context with the template's special tokens
(``<|bos|>`` plus a header and an ``<|end|>`` per turn: 7 tokens for three turns).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlhf_book.data.styles import render_answer
from rlhf_book.data.world import Question, sample_questions, split_questions

SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly.", "Be concise and correct.",
                  "You answer questions.")


def sft_demonstrations(seed: int = 0, n: int = 2000, questions: Sequence[Question] | None = None,
                       system_prob: float = 0.2) -> list[list[dict[str, str]]]:
    """``n`` SFT conversations ``[system?, user, assistant]`` with concise, correct answers.

    Args:
        seed: seed of ``numpy.random.default_rng``; same seed, same conversations.
        n: number of conversations (>= 1).
        questions: the questions to draw from (topic-balanced, with replacement). Default: the
            training split of :func:`~rlhf_book.data.world.split_questions`, so held-out facts
            never appear in a demonstration.
        system_prob: probability that a conversation opens with a system message drawn from
            :data:`SYSTEM_PROMPTS`.

    Returns:
        a list of conversations, each a list of ``{"role", "content"}`` dicts; the assistant's
        content is a ``concise_correct`` answer. Book ch. 4 (instruction tuning).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not 0.0 <= system_prob <= 1.0:
        raise ValueError(f"system_prob must be in [0, 1], got {system_prob!r}")
    rng = np.random.default_rng(seed)
    pool = split_questions()[0] if questions is None else list(questions)
    conversations = []
    for q in sample_questions(pool, n, rng):
        messages = []
        if rng.random() < system_prob:
            system = SYSTEM_PROMPTS[rng.integers(len(SYSTEM_PROMPTS))]
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": q.prompt})
        messages.append({"role": "assistant", "content": render_answer(q, "concise_correct", rng)})
        conversations.append(messages)
    return conversations
