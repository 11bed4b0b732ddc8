"""Grading checks: one module per chapter, one function per exercise, named after it.

A check takes the candidate implementation and returns quietly when it is right. When it is
wrong it raises :class:`Mismatch`, an ``AssertionError`` whose message is one line the grader
shows as the hint: what was called, and the first place the answer differs from the expected
one. Expected values never come from the function being graded: they come from the book's
numbers, a plain NumPy loop written from the equation, an independent library (optax), or
math (invariants, gradients, Monte-Carlo frequencies within a few standard errors).

The helpers below turn the usual ways of being wrong (a wrong shape, a wrong dtype, a wrong
number, NaN) into such one-line messages.
"""

from __future__ import annotations

import numpy as np


class Mismatch(AssertionError):
    """A graded function returned something other than what the exercise asks for."""


def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.6g}"


def as_array(x, what: str) -> np.ndarray:
    """``x`` as a NumPy array, or a clear failure if it is not array-like (None, a tuple of
    the wrong kind, ...)."""
    try:
        arr = np.asarray(x)
    except Exception as err:  # a student's function may return anything at all
        raise Mismatch(f"{what} returned {type(x).__name__}, not an array ({err})") from None
    if arr.dtype == object:
        raise Mismatch(f"{what} returned {type(x).__name__}, not an array of numbers")
    return arr


def expect_shape(x, shape: tuple, what: str) -> np.ndarray:
    arr = as_array(x, what)
    if arr.shape != tuple(shape):
        raise Mismatch(f"{what} returned shape {arr.shape}, expected {tuple(shape)}")
    return arr


def expect_dtype(x, kind: str, what: str) -> np.ndarray:
    """``kind`` is a NumPy kind letter: ``"b"`` bool, ``"i"`` signed int, ``"f"`` float."""
    arr = as_array(x, what)
    names = {"b": "bool", "i": "an integer dtype", "f": "a float dtype"}
    ok = arr.dtype.kind == kind or (kind == "i" and arr.dtype.kind == "u")
    if not ok:
        raise Mismatch(f"{what} returned dtype {arr.dtype}, expected {names.get(kind, kind)}")
    return arr


def expect_finite(x, what: str) -> np.ndarray:
    arr = as_array(x, what)
    bad = ~np.isfinite(arr)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise Mismatch(f"{what} is not finite at {list(index)}: {arr[index]}")
    return arr


def expect_close(actual, expected, what: str, *, atol: float = 1e-5, rtol: float = 1e-5):
    """Same shape, and equal within ``atol + rtol * |expected|`` everywhere (NaN never is)."""
    expected = np.asarray(expected)
    arr = expect_shape(actual, expected.shape, what)
    if expected.dtype.kind == "b" or arr.dtype.kind == "b":
        wrong = arr.astype(bool) != expected.astype(bool)
    else:
        a, e = arr.astype(np.float64), expected.astype(np.float64)
        wrong = ~(np.abs(a - e) <= atol + rtol * np.abs(e))  # NaN compares False: wrong
    if wrong.any():
        index = tuple(int(i) for i in np.argwhere(wrong)[0])
        where = f" at {list(index)}" if index else ""
        raise Mismatch(f"{what}: first mismatch{where} (of {int(wrong.sum())}): "
                       f"got {_fmt(arr[index])}, expected {_fmt(expected[index])}")
    return arr


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Mismatch(message)
