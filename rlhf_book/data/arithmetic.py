"""Verifiable arithmetic prompts for reinforcement learning with verifiable rewards (RLVR).

Book ch. 7 (reasoning): instead of a learned reward model, the reward is a *verifier* that
checks the final answer. Here the verifier reads the last integer in the response and returns
1.0 when it equals the true answer, else 0.0; empty or garbage responses score 0.0.

Two-digit sums (:func:`two_digit_sums`) are a task where reasoning length buys accuracy: a
small model that writes the column addition out (:func:`scratchpad`) reduces the sum to
one-digit facts it knows, while a direct answer has to carry in its head;
:func:`sum_demonstrations` shows it both ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from rlhf_book.data.world import Question

OPS = ("+", "-", "*")
_TEMPLATES = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}.")
# A minus sign counts only when it does not follow a letter or digit, so "3-4" reads as 3 and 4
# while "is -5" reads as -5.
_INTEGER = re.compile(r"(?:(?<!\w)-)?\d+")
_MAX_DIGITS = 100  # longer digit runs are garbage, not answers (and int() of huge strings is slow)


@dataclass(frozen=True)
class ArithmeticProblem:
    """A prompt such as ``"What is 12 * 7?"`` and its integer ``answer``."""

    prompt: str
    answer: int


def arithmetic_problems(seed: int = 0, n: int = 512, max_operand: int = 20,
                        ops: tuple[str, ...] = OPS) -> list[ArithmeticProblem]:
    """``n`` random problems ``a op b`` with ``a, b`` uniform in ``0..max_operand``.

    Args:
        seed: seed of ``numpy.random.default_rng``; same seed, same problems.
        n: number of problems (>= 1).
        max_operand: largest operand (1 ..= 10**6, so every prompt stays under 48 bytes).
        ops: operators to draw from, a non-empty subset of ``("+", "-", "*")``. Subtraction can
            give negative answers.

    Returns:
        a list of :class:`ArithmeticProblem`. Book ch. 7 (RLVR).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(max_operand, (int, np.integer)) or not 1 <= max_operand <= 10**6:
        raise ValueError(f"max_operand must be an integer in [1, 1000000], got {max_operand!r}")
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {OPS}, got {ops!r}")
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, max_operand + 1, size=(2, n))
    op_idx = rng.integers(len(ops), size=n)
    tpl_idx = rng.integers(len(_TEMPLATES), size=n)
    problems = []
    for x, y, o, t in zip(a.tolist(), b.tolist(), op_idx.tolist(), tpl_idx.tolist()):
        op = ops[o]
        value = x + y if op == "+" else x - y if op == "-" else x * y
        problems.append(ArithmeticProblem(_TEMPLATES[t].format(a=x, op=op, b=y), value))
    return problems


def extract_answer(response: str) -> int | None:
    """The last integer written in ``response`` (``"The answer is 42."`` -> 42), or ``None``.

    Integers are runs of ASCII digits, optionally with a leading minus sign that does not
    follow a letter or digit. Digit runs longer than 100 characters are treated as garbage.
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")
    matches = _INTEGER.findall(response)
    if not matches or len(matches[-1].lstrip("-")) > _MAX_DIGITS:
        return None
    return int(matches[-1])


def verify(problem: ArithmeticProblem, response: str) -> float:
    """The verifiable reward: 1.0 if the last integer in ``response`` equals ``problem.answer``,
    else 0.0 (also for empty or garbage text). Book ch. 7 (RLVR)."""
    return 1.0 if extract_answer(response) == problem.answer else 0.0


# ----------------------------------------------------------------------------------------------
# Two-digit sums with a scratchpad: a task where writing the steps pays (book ch. 7)

TWO_DIGIT_OPERANDS = range(10, 100)
SCRATCHPAD_SHARE = 0.5  # share of the sum demonstrations that show their work
TABLE_SHARE = 0.3       # share of the demonstrations that rehearse one step (a one-digit sum)


def two_digit_sums(seed: int = 0, heldout_fraction: float = 0.2):
    """``(train, heldout)``: every sum ``a + b`` with ``a, b`` in 10..99 (8,100 pairs) as
    :class:`~rlhf_book.data.world.Question` s ("What is 47 + 38?", answer "85", topic
    ``"arithmetic"``), split at random with ``seed``: no held-out pair is ever demonstrated, so
    a model answers it only by computing. Book ch. 7: a task where intermediate steps help."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    pairs = [(a, b) for a in TWO_DIGIT_OPERANDS for b in TWO_DIGIT_OPERANDS]
    order = np.random.default_rng(seed).permutation(len(pairs))
    questions = [Question("arithmetic", f"What is {a} + {b}?", str(a + b), f"{a} + {b}")
                 for a, b in (pairs[i] for i in order)]
    n_heldout = int(round(heldout_fraction * len(pairs)))
    return questions[n_heldout:], questions[:n_heldout]


# [guide:scratchpad]
def scratchpad(a: int, b: int) -> str:
    """Column addition of two two-digit numbers written out, one one-digit fact per step and
    the carry as a third term, then the answer:
    ``scratchpad(47, 38) == "7 + 8 = 15, 4 + 3 + 1 = 8. The answer is 85."``.
    The scratchpad of Nye et al. (2021), "Show your work"."""
    if not (a in TWO_DIGIT_OPERANDS and b in TWO_DIGIT_OPERANDS):
        raise ValueError(f"a and b must be integers in 10..99, got {a!r} and {b!r}")
    (a_tens, a_ones), (b_tens, b_ones) = divmod(a, 10), divmod(b, 10)
    ones = a_ones + b_ones
    carry = ones // 10  # the ones column's carry goes into the tens column as a third term
    tens = f"{a_tens} + {b_tens} + 1 = {a_tens + b_tens + 1}" if carry else \
        f"{a_tens} + {b_tens} = {a_tens + b_tens}"
    return f"{a_ones} + {b_ones} = {ones}, {tens}. The answer is {a + b}."
# [/guide]


def sum_demonstrations(questions, seed: int = 0, n: int = 3000,
                       scratchpad_share: float = SCRATCHPAD_SHARE,
                       table_share: float = TABLE_SHARE) -> list[list[dict[str, str]]]:
    """``n`` chat demonstrations for the two-digit sums ``questions`` (from
    :func:`two_digit_sums`): a ``table_share`` of them rehearse one step ("What is 7 + 8?" ->
    "7 + 8 = 15. The answer is 15.", digits 0..9); of the rest, a ``scratchpad_share`` show
    their work (:func:`scratchpad`) and the others answer directly ("The answer is 85."). Both
    answer styles are right: a model trained on them writes either, and RL with a verifier
    finds out which pays."""
    questions = list(questions)
    if not questions:
        raise ValueError("questions must be a non-empty sequence of two-digit sums")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    for name, value in (("scratchpad_share", scratchpad_share), ("table_share", table_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    rng = np.random.default_rng(seed)
    conversations = []
    for _ in range(n):
        if rng.random() < table_share:
            a, b = rng.integers(0, 10, size=2).tolist()
            prompt, answer = f"What is {a} + {b}?", f"{a} + {b} = {a + b}. The answer is {a + b}."
        else:
            q = questions[rng.integers(len(questions))]
            a, b = map(int, q.subject.split(" + "))
            prompt = q.prompt
            answer = scratchpad(a, b) if rng.random() < scratchpad_share else \
                f"The answer is {a + b}."
        conversations.append([{"role": "user", "content": prompt},
                              {"role": "assistant", "content": answer}])
    return conversations
