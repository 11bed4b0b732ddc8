"""Chapter 7, the verifiers: reading a final answer out of a response, and the rewards built on
it (book ch. 7).

In the book's order:

* the chapter's introduction, RLVR's math example: :func:`extract_final_answer` for the answer
  formats the book lists (``\\boxed{...}``, "The answer is", ``<answer>`` tags, GSM8K's
  ``####``; :data:`ANSWER_STYLES`), :func:`normalize_answer` and the binary reward
  :func:`verifiable_reward` ("returns a positive reward when the answer is correct and 0
  otherwise");
* the introduction's code example: :func:`unit_test_reward`, all tests must pass (gating) or
  partial credit;
* §7.2.3, format rewards: :func:`format_reward` (``<think>...</think>`` before the answer).

The text functions are plain Python (a verifier reads strings); :func:`unit_test_reward` works
on arrays of test outcomes and jits.
"""

from __future__ import annotations

import re
from fractions import Fraction

import jax
import jax.numpy as jnp

from rlhf_book.data.arithmetic import extract_answer
from rlhf_book.lm.checks import as_float_array, check_choice, check_values

__all__ = [
    "ANSWER_STYLES", "UNIT_TEST_MODES", "normalize_answer", "extract_final_answer",
    "verifiable_reward", "unit_test_reward", "format_reward",
]

# The formats of a final answer, strict ones first; "any" tries them in this order (see
# extract_final_answer), "last_integer" is the lax rule of ``rlhf_book.data.extract_answer``.
ANSWER_STYLES = ("boxed", "answer_tag", "hashes", "the_answer_is", "last_integer", "any")
_STRICT_STYLES = ("boxed", "answer_tag", "hashes", "the_answer_is")
UNIT_TEST_MODES = ("all", "fraction")

_BOXED = re.compile(r"\\boxed\s*\{")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_THINK = re.compile(r"\s*<think>(?P<think>.*?)</think>(?P<rest>.*)", re.DOTALL)


def _check_text(text, name: str = "text") -> str:
    if not isinstance(text, str):
        raise ValueError(f"{name} must be a str, got {type(text).__name__}")
    return text


def _unboxed(s: str) -> str:
    """``s`` without a ``\\boxed{...}`` that wraps all of it (a full stop after it allowed;
    nested braces balanced: ``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``), else ``s`` itself."""
    opening = _BOXED.match(s)
    if opening is None:
        return s
    depth = 1
    for i in range(opening.end(), len(s)):
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        if depth == 0:  # the box closes here: it wraps all only if nothing but "." follows
            return s[opening.end():i].strip() if s[i + 1:].strip() in ("", ".") else s
    return s  # never closed


def normalize_answer(answer: str) -> str | None:
    """An answer string in the one form answers are compared in, or ``None`` when nothing is
    left (book ch. 7 introduction: the verifier compares the *extracted* answer).

    Surrounding whitespace and ``$`` signs are removed, a ``\\boxed{...}`` that wraps the whole
    answer is unwrapped, commas between groups of three digits go (``1,000`` -> ``1000``),
    runs of whitespace become one space, and one trailing full stop is dropped (``77.`` ->
    ``77``; ``3.5`` stays). Nothing else is rewritten: ``\\frac{1}{2}`` stays as written.
    """
    s = _unboxed(_check_text(answer, "answer").replace("$", "").strip())
    s = " ".join(_THOUSANDS.sub("", s).split())
    s = s[:-1].rstrip() if s.endswith(".") else s
    return s or None


# [guide:extract-final-answer]
def extract_final_answer(text: str, style: str = "any") -> str | None:
    """The final answer written in ``text`` in the format ``style``, normalised by
    :func:`normalize_answer`, or ``None`` when there is none (book ch. 7 introduction, the
    answer formats it lists for RLVR's math example; the same formats as generation-based
    evaluation, book §16.1).

    ``style`` is one of :data:`ANSWER_STYLES`:

    * ``"boxed"``: the contents of the *last* ``\\boxed{...}``, nested braces balanced
      (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); a ``\\boxed{`` whose brace never
      closes is no box;
    * ``"answer_tag"``: the contents of the last ``<answer>...</answer>``;
    * ``"hashes"``: what follows the last ``####`` on its line (GSM8K's ``#### 72``);
    * ``"the_answer_is"``: what follows the last "answer is" (any case, an optional colon:
      "The answer is 77.", "The final answer is: 3.5"): a ``\\boxed{...}`` right after it if
      there is one ("The answer is $\\boxed{77}$."), else the rest of the line up to the first
      full stop that ends a sentence;
    * ``"last_integer"``: the last integer anywhere in the text, the lax rule of
      :func:`rlhf_book.data.extract_answer` (a policy that ends with a guess satisfies it);
    * ``"any"``: the first of ``"boxed"``, ``"answer_tag"``, ``"hashes"``,
      ``"the_answer_is"`` that finds an answer -- never ``"last_integer"``: a response with
      no marked answer has none.

    Examples: ``"... The answer is $\\boxed{77}$."`` -> ``"77"`` (boxed, the_answer_is and
    any); ``"#### 1,000"`` -> ``"1000"``; ``"I am not sure."`` -> ``None``. Plain Python on one
    text (a batch of texts ``[B]``: one call per text).

    How: a regular expression cannot match balanced braces, so find each ``\\boxed{`` with
    one (``\\\\boxed\\s*\\{``) and scan on from it with a depth counter (``{`` adds one, ``}``
    takes one away) to where the depth returns to 0; a box that never closes holds no answer.
    Take the *last* match of each pattern (``findall(...)[-1]``), not the first: a response
    may box or tag an intermediate result before the final one. ``<answer>(.*?)</answer>``
    needs ``re.DOTALL`` to span lines; ``####[ \\t]*([^\\n]*)`` stops at the line's end. For
    "the answer is", look at what follows the last ``answer\\s+is\\s*:?`` (``re.IGNORECASE``):
    a box opening right there (after blanks and a ``$``) is read with the brace scan, else
    cut the line at the first ``.`` followed by a blank or the end (``\\.(?:\\s|$)``), so
    that ``3.5`` keeps its decimal point. Every style ends in :func:`normalize_answer`, except
    ``"last_integer"``, which is ``str(extract_answer(text))`` when there is one. ``"any"``
    calls the function itself once per strict style, in order.
    """
    _check_text(text)
    check_choice(style, "style", ANSWER_STYLES)
    # BEGIN SOLUTION
    if style == "any":
        for strict in _STRICT_STYLES:
            if (found := extract_final_answer(text, strict)) is not None:
                return found
        return None
    if style == "last_integer":
        value = extract_answer(text)
        return None if value is None else str(value)

    def boxes(s: str) -> list[str]:
        """The contents of every ``\\boxed{...}`` in ``s`` whose braces balance, in order."""
        found = []
        for match in re.finditer(r"\\boxed\s*\{", s):
            depth, start = 1, match.end()
            for i in range(start, len(s)):
                depth += {"{": 1, "}": -1}.get(s[i], 0)
                if depth == 0:
                    found.append(s[start:i])
                    break
        return found

    if style == "boxed":
        contents = boxes(text)
    elif style == "answer_tag":
        contents = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    elif style == "hashes":
        contents = re.findall(r"####[ \t]*([^\n]*)", text)
    else:  # "the_answer_is"
        matches = list(re.finditer(r"answer\s+is\s*:?", text, re.IGNORECASE))
        if not matches:
            return None
        rest = text[matches[-1].end():]
        if re.match(r"\s*\$?\s*\\boxed\s*\{", rest):  # "The answer is $\\boxed{77}$."
            contents = boxes(rest)[:1]
        else:
            line = rest.lstrip().split("\n", 1)[0]  # "The answer is:\n77" reads 77
            end = re.search(r"\.(?:\s|$)", line)
            contents = [line[:end.start()] if end else line]
    return normalize_answer(contents[-1]) if contents else None
    # END SOLUTION
# [/guide]


# [guide:verifiable-reward]
def _same_answer(a: str, b: str) -> bool:
    """Two normalised answers are the same when both read as the same number (``77`` and
    ``77.0``, ``1/2`` and ``0.5``: exact rationals, no rounding) or are equal as strings."""
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return a == b


def verifiable_reward(text: str, gold, style: str = "any") -> float:
    """RLVR's binary reward (book ch. 7 introduction: "a positive reward when the answer is
    correct and 0 otherwise", the math example's ``extracted_answer == 77``): 1.0 when the
    answer :func:`extract_final_answer` finds in ``text`` (in format ``style``) equals
    ``gold``, else 0.0 -- no answer, a wrong one and an unreadable one all score 0.0.

    ``gold``: the reference answer, an int or a string (normalised the same way). Numbers are
    compared exactly as rationals (``"77.0"`` matches ``77``), anything else as normalised
    strings.
    """
    if gold is None or isinstance(gold, bool):
        raise ValueError(f"gold must be a number or a str, got {gold!r}")
    reference = normalize_answer(str(gold))
    if reference is None:
        raise ValueError(f"gold must not be blank, got {gold!r}")
    found = extract_final_answer(text, style)
    return 1.0 if found is not None and _same_answer(found, reference) else 0.0
# [/guide]


# [guide:unit-test-reward]
def unit_test_reward(passed, mode: str = "all") -> jax.Array:
    """The reward of a program from its unit tests (book ch. 7 introduction, the ``fib``
    example and its ``assert`` tests; functional correctness judged by unit tests, as in
    HumanEval, Chen et al. 2021): ``mode="all"`` gives 1.0 only when every test passes
    (gating, the book's "all pass -> reward = 1"), ``mode="fraction"`` the fraction of tests
    passed (partial credit). [True, True, False] -> 0.0 gated, 2/3 partial.

    ``passed [..., K]``: outcomes of ``K >= 1`` tests (bools or 0/1) per program, the last axis
    the tests. Returns float ``[...]`` (a scalar for one program), jits (``mode`` static).

    How: ``passed`` arrives as a float array of 0s and 1s, so gating is its minimum over the
    last axis (any 0 makes it 0) and partial credit its mean there; reduce over ``axis=-1``
    only, never over the whole array, so that a batch of programs keeps its shape.
    """
    passed = as_float_array(passed, "passed")
    check_choice(mode, "mode", UNIT_TEST_MODES)
    if passed.ndim == 0 or passed.shape[-1] == 0:
        raise ValueError(f"passed must have at least one test on its last axis [..., K], got "
                         f"shape {passed.shape}")
    check_values(passed, "passed", (0.0, 1.0))
    # BEGIN SOLUTION
    return jnp.min(passed, axis=-1) if mode == "all" else jnp.mean(passed, axis=-1)
    # END SOLUTION
# [/guide]


# [guide:format-reward]
def format_reward(text: str, style: str = "answer_tag") -> float:
    """The format reward of reasoning models (book §7.2.3, format rewards: reasoning in
    ``<think>...</think>`` before the answer; DeepSeek R1's template): 1.0 when all of these
    hold, else 0.0:

    1. after leading whitespace, ``text`` opens with ``<think>``; it holds exactly one
       ``<think>`` and exactly one ``</think>``, in that order, with non-blank reasoning between
       them;
    2. the text after ``</think>`` holds a final answer in format ``style``
       (:func:`extract_final_answer` finds one there, not inside the reasoning);
    3. for ``style="answer_tag"`` (the default) that text is exactly one ``<answer>...</answer>``
       with a non-blank answer, surrounding whitespace aside: ``<think>2 + 2 is 4</think>
       <answer>4</answer>`` scores 1.0, with any word after the closing tag 0.0.

    The format reward says nothing about correctness: combine it with
    :func:`verifiable_reward` (e.g. through the ``normalize_then_sum`` of :mod:`.rlvr`).
    """
    _check_text(text)
    check_choice(style, "style", ANSWER_STYLES)
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return 0.0
    match = _THINK.fullmatch(text)
    if match is None or not match["think"].strip():
        return 0.0
    rest = match["rest"]
    if style == "answer_tag" and not re.fullmatch(r"\s*<answer>(?:(?!</?answer>).)*</answer>\s*",
                                                  rest, re.DOTALL):
        return 0.0
    return 0.0 if extract_final_answer(rest, style) is None else 1.0
# [/guide]
