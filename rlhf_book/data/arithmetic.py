"""Verifiable arithmetic prompts for reinforcement learning with verifiable rewards (RLVR).

Book ch. 7 (reasoning): instead of a learned reward model, the reward is a *verifier* that
checks the final answer. Here the verifier reads the last integer in the response and returns
1.0 when it equals the true answer, else 0.0; empty or garbage responses score 0.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

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
