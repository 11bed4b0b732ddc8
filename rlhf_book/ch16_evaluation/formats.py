"""Prompt formats and scoring rules of an evaluation (book §16.1).

The book's point in §16.1 is that the *format* of an evaluation -- how the question is shown,
and how the answer is read back -- can move a score as much as the model does ("from 60% to
nearly 0"). This module writes the book's formats down exactly, and the three ways §16.1 reads
an answer:

* **generation + extraction** (exact match): sample a reply, pull the answer out with a strict
  pattern (:func:`extract_strict_answer`); anything the pattern misses is scored wrong;
* **log-likelihood of the letter**: ``argmax_c log p("(c)" | prompt)``;
* **log-likelihood of the full answer**: ``argmax_c sum_t log p(answer_c,t | prompt,
  answer_c,<t)``, optionally divided by the answer's tokens or characters
  (:func:`choice_log_likelihood`), a choice the book leaves open.

Shapes: ``C`` choices, ``T`` tokens of a choice's answer.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from rlhf_book.lm.checks import as_float_array, as_like, check_choice

__all__ = ["LETTERS", "EXTRACTION_STYLES", "NORMS", "mc_block", "fewshot_mc_prompt",
           "tulu3_mmlu_cot_prompt", "extract_strict_answer", "choice_log_likelihood"]

LETTERS = "ABCDEFGHIJ"


# [guide:formats]
def mc_block(question: str, choices: Sequence[str]) -> str:
    """One multiple-choice question as the book's few-shot example shows it (book §16.1):
    ``Q: <question>``, ``Choices:``, then ``(A) <choice>`` one per line."""
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"choices must hold 2 to {len(LETTERS)} answers, got {len(choices)}")
    lines = [f"Q: {question}", "Choices:"]
    lines += [f"({letter}) {choice}" for letter, choice in zip(LETTERS, choices)]
    return "\n".join(lines)


def fewshot_mc_prompt(examples: Sequence[Mapping], query: Mapping) -> str:
    """The book's few-shot multiple-choice prompt (book §16.1, "Few-Shot Prompt"): a header,
    each example as ``### Example k`` with its question, choices and ``Correct Answer: (X)``,
    then the query in the same form ending in ``Correct Answer:`` for the model to complete.

    ``examples``: mappings with ``question``, ``choices`` and ``answer`` (a letter);
    ``query``: a mapping with ``question`` and ``choices``. In the book both examples answer
    (A) while the query's answer is (C): a prompt that teaches a label, not only a format.
    """
    parts = ["# Few-Shot Prompt", "", "Below are examples of MMLU-style questions and answers:"]
    for k, example in enumerate(examples, 1):
        if example["answer"] not in LETTERS[:len(example["choices"])]:
            raise ValueError(f"examples[{k - 1}]['answer'] must be one of the choices' letters, "
                             f"got {example['answer']!r}")
        parts += ["", f"### Example {k}", mc_block(example["question"], example["choices"]),
                  "", f"Correct Answer: ({example['answer']})"]
    parts += ["", "### Now answer the new question in the same style:", "",
              mc_block(query["question"], query["choices"]), "", "Correct Answer:"]
    return "\n".join(parts)


def tulu3_mmlu_cot_prompt(question: str, choices: Sequence[str]) -> str:
    """The chain-of-thought prompt Tulu 3 used for MMLU (book §16.1; Lambert et al. 2024): the
    instruction to finish with ``Therefore, the answer is (ANSWER_LETTER)``, the question and
    its lettered choices, and the reminder."""
    rule = ('"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), '
            '(B), (C), (D), (E), etc.')
    lines = ["Answer the following multiple-choice question by giving the correct answer "
             "letter in parentheses. Provide CONCISE reasoning for the answer, and make sure to "
             f"finish the response with {rule}", "", f"Question: {question}"]
    lines += [f"({letter}) {choice}" for letter, choice in zip(LETTERS, choices)]
    lines += ["", "Answer the above question and REMEMBER to finish your response with the exact "
              f"phrase {rule}"]
    return "\n".join(lines)
# [/guide]


# Strict patterns, as an exact-match harness applies them (book §16.1): Tulu 3's suffix, a
# LaTeX box (NuminaMath's format) and "The answer is:" (MetaMath's), the two formats §16.2
# says conflict when a model is trained on both.
_PATTERNS = {
    "tulu": re.compile(r"Therefore, the answer is \(([A-J])\)"),
    "boxed": re.compile(r"\\boxed\{([^{}]+)\}"),
    "answer_is": re.compile(r"The answer is:[ \t]*([^\n]+)"),
}
EXTRACTION_STYLES = tuple(_PATTERNS)


# [guide:extract-answer]
def extract_strict_answer(text: str, style: str = "tulu") -> str | None:
    """The answer a reply states under one strict format (book §16.1, exact match), or
    ``None`` when the reply does not use the format -- which a harness scores as wrong.

    ``style`` (one of :data:`EXTRACTION_STYLES`):

    * ``"tulu"``: ``Therefore, the answer is (X)`` with ``X`` a capital letter A-J -> ``"X"``;
    * ``"boxed"``: ``\\boxed{...}`` (no nested braces) -> what is inside the box;
    * ``"answer_is"``: ``The answer is:`` then the rest of the line -> that text, stripped of
      surrounding spaces and of one final full stop (``"The answer is: 9."`` -> ``"9"``).

    When a reply states the format more than once, the **last** match counts: a chain of
    thought may try answers before it commits to one. Matching is case-sensitive, as strict
    suffixes are; ``"the answer is (C)"`` is not extracted.

    ``text``: one reply (a ``str``); returns a ``str`` or ``None``. A harness maps it over its
    ``[N]`` replies.

    How: ``re.findall`` with the style's pattern, keep the last match, clean it.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    check_choice(style, "style", EXTRACTION_STYLES)
    # BEGIN SOLUTION
    matches = _PATTERNS[style].findall(text)
    if not matches:
        return None
    answer = matches[-1].strip()
    if style == "answer_is" and answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer or None
    # END SOLUTION
# [/guide]


NORMS = ("none", "token", "char")


# [guide:choice-log-likelihood]
def choice_log_likelihood(token_log_probs, mask, chars=None, norm: str = "none") -> jax.Array:
    """The log-likelihood score of each choice of a multiple-choice question (book §16.1,
    log-likelihood scoring): the summed log-probabilities of the choice's answer tokens given
    the prompt, ``sum_t log p(answer_c,t | prompt, answer_c,<t)``, and the score's argmax is the
    prediction.

    ``norm`` divides the sum by the answer's length, which the book leaves open and harnesses
    choose differently: ``"none"`` (the joint probability, which favours short answers),
    ``"token"`` (per token: the mean log-probability) or ``"char"`` (per character of the
    answer's text, comparable across tokenizers).

    ``token_log_probs [..., C, T]``: log-probabilities of each choice's tokens; ``mask [..., C,
    T]``: 1 on the answer's tokens (not the prompt's, not padding); ``chars [..., C]``: each
    answer's length in characters, needed for ``norm="char"``. Returns ``[..., C]``.

    How: a masked sum over ``T``; divide by the mask's sum or by ``chars``.
    """
    logp = as_float_array(token_log_probs, "token_log_probs", values="logits")
    mask = as_like(mask, "mask", logp, "token_log_probs", values="any")
    check_choice(norm, "norm", NORMS)
    if norm == "char" and chars is None:
        raise ValueError('chars must be given (characters per answer) when norm="char"')
    # BEGIN SOLUTION
    total = jnp.sum(jnp.where(mask > 0, logp, 0.0), axis=-1)  # where: -inf on padding is fine
    if norm == "token":
        return total / jnp.maximum(mask.sum(-1), 1.0)
    if norm == "char":
        return total / jnp.maximum(jnp.asarray(chars, total.dtype), 1.0)
    return total
    # END SOLUTION
# [/guide]
