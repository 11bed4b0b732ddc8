"""When longer reasoning pays: a process check of a worked answer (book ch. 7).

Chapter 7's reasoning-length notebook (``notebooks/ch07_reasoning_length.ipynb``) teaches the
small GPT two-digit sums two ways, a direct answer ("The answer is 85.") and the column
addition written out (:func:`rlhf_book.data.scratchpad`:
"7 + 8 = 15, 4 + 3 + 1 = 8. The answer is 85."), and lets RLVR choose. The verifier is an
*outcome* check: it reads the last number. This module has the *process* check, which reads
the steps (Lightman et al. 2023, "Let's verify step by step"; book ch. 5 on process reward
models):

* :func:`shows_work` -- whether a reply writes a step before its answer;
* :func:`audit_worked_answer` -- exercise 7.9: are the two steps true facts, do they add the
  right columns, is the carry written exactly when the ones overflow, and does the stated
  answer follow from the steps?
"""

from __future__ import annotations

import re

__all__ = ["shows_work", "audit_worked_answer", "AUDIT_CHECKS"]

# A step: two or three non-negative integers added, "=", their sum as written ("4 + 3 + 1 = 8").
# Not inside a longer sum: "4 + 3 + 1 + 1 = 9" is no step (a column adds at most three terms).
STEP = re.compile(r"(?<!\+ )(?<!\d)(\d+) \+ (\d+)(?: \+ (\d+))? = (\d+)")
# The stated answer: the number after the last "answer is" (the verifier, too, reads the last).
STATED = re.compile(r"answer is (-?\d+)")
AUDIT_CHECKS = ("facts", "columns", "carry", "follows")


def shows_work(text: str) -> bool:
    """Whether ``text`` writes at least one step (``"a + b = c"``, ``STEP``) anywhere."""
    return STEP.search(text) is not None


# [guide:audit-worked-answer]
def audit_worked_answer(a: int, b: int, text: str) -> dict[str, bool] | None:
    """A process check of ``text``, a reply to "What is a + b?" for two-digit ``a`` and ``b``,
    read as column addition: its first two steps (``STEP``) are the ones column, then the tens
    column. Returns ``None`` when the reply writes fewer than two steps (a direct answer is
    not audited), else a dict of four bools (``AUDIT_CHECKS``):

    * ``"facts"``: each of the two steps is a true sum of the terms it writes (a carry term
      included: "4 + 3 + 1 = 8" is true);
    * ``"columns"``: the first step adds the ones digits of ``a`` and ``b`` and the second
      their tens digits (the first two terms of each, in either order);
    * ``"carry"``: the tens step has a third term, and it is 1, exactly when the ones digits
      add to 10 or more;
    * ``"follows"``: the stated answer (the number after the last "answer is"; none is
      ``False``) is the one the two steps give, ``10 * tens + ones % 10`` of the sums as *written* -- right or
      wrong, the answer must follow from the work.

    Book ch. 7 (an outcome verifier reads only the answer; §7.1.2, tokens that pay);
    Lightman et al. 2023 on process supervision. Shapes: one reply at a time (Python ints and a str);
    ``experiments.audit_scratchpads`` loops over replies ``texts [..., Q]``.

    How: ``STEP.findall`` gives each step's terms and sum as strings (an unwritten carry is
    ``""``); compare the first two terms of each step with the digits as sorted pairs, and the
    last number of ``STATED.findall`` with the steps' sums."""
    if not all(isinstance(x, int) and 10 <= x <= 99 for x in (a, b)):
        raise ValueError(f"a and b must be integers in 10..99, got {a!r} and {b!r}")
    # BEGIN SOLUTION
    steps = STEP.findall(text)
    if len(steps) < 2:
        return None
    (x0, y0, c0, s0), (x1, y1, c1, s1) = [[int(t) if t else 0 for t in step] for step in steps[:2]]
    stated = STATED.findall(text)
    ones_overflow = a % 10 + b % 10 >= 10
    return {
        "facts": x0 + y0 + c0 == s0 and x1 + y1 + c1 == s1,
        "columns": sorted((x0, y0)) == sorted((a % 10, b % 10))
        and sorted((x1, y1)) == sorted((a // 10, b // 10)),
        "carry": (steps[1][2] == "1") if ones_overflow else (steps[1][2] == ""),
        "follows": bool(stated) and int(stated[-1]) == 10 * s1 + s0 % 10,
    }
    # END SOLUTION
# [/guide]
