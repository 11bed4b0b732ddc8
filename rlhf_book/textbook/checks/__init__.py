"""Grading checks: one module per chapter, one function per exercise, named after it.

A check takes the candidate implementation and returns quietly when it is right. When it is
wrong it raises :class:`Mismatch`, an ``AssertionError`` whose message is one line the grader
shows as the hint: what was called, and the first place the answer differs from the expected
one. Expected values never come from the function being graded: they come from the book's
numbers, a plain NumPy loop written from the equation, an independent library (optax), or
math (invariants, gradients, Monte-Carlo frequencies within a few standard errors).

The helpers below turn the usual ways of being wrong (a wrong shape, a wrong dtype, a wrong
number, NaN) into such one-line messages.

Sub-checks. Each :func:`expect_close` and :func:`expect` is one sub-check. Called plainly (the
chapter tests, ``pytest --impl=reference``) the first failing one raises. Under
:func:`collecting` (the grader) a failing value sub-check is recorded and the check goes on, so
that the verdict can say how many of its sub-checks fail, not only the first; a sub-check that
later code relies on (a shape, a dtype, a tuple to unpack: :func:`expect_shape`,
:func:`expect_dtype`, :func:`expect_finite`, :func:`require`) still stops the check at once.

A check calls the graded function plainly, ``fn(x)``, or through a *probe* for anything that
transforms it (``jit(fn)(x)``, ``grad_of_sum(fn)(x)``, ``call(fn, a_probe, x)``): under
``rlhf-book grade`` the function lives in another process, and only arguments and outputs
cross (see "Probes" below). A check never wraps ``fn`` in ``jax.jit``, ``jax.grad`` or a
lambda itself.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
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


@dataclasses.dataclass
class SubChecks:
    """What :func:`collecting` recorded: how many sub-checks ran, and the failures' messages."""

    run: int = 0
    failures: list = dataclasses.field(default_factory=list)


_collector: SubChecks | None = None  # set by collecting(); the grader runs one check at a time


@contextlib.contextmanager
def collecting():
    """Record failing value sub-checks instead of raising at the first (see the module
    docstring); yields the :class:`SubChecks`. Nested use keeps the outer record."""
    global _collector
    outer = _collector
    _collector = record = SubChecks() if outer is None else outer
    try:
        yield record
    finally:
        _collector = outer


def _sub_check(ok: bool, message) -> bool:
    """Count one sub-check; on failure raise, or record when collecting. ``message`` may be a
    callable, so that an expensive message is built only for a failure."""
    if _collector is not None:
        _collector.run += 1
    if ok:
        return True
    text = message() if callable(message) else message
    if _collector is None:
        raise Mismatch(text)
    _collector.failures.append(text)
    return False


def _differ_message(what: str, arr: np.ndarray, expected: np.ndarray, wrong: np.ndarray) -> str:
    """``what: got 5, expected 2`` for one value; ``what: 2 entries differ (of 3), the first at
    [1]: got 5, expected 2`` for an array."""
    index = tuple(int(i) for i in np.argwhere(wrong)[0])
    values = f"got {_fmt(arr[index])}, expected {_fmt(expected[index])}"
    if wrong.size == 1:
        return f"{what}: {values}"
    n = int(wrong.sum())
    entries = "entry differs" if n == 1 else "entries differ"
    return f"{what}: {n} {entries} (of {wrong.size}), the first at {list(index)}: {values}"


def expect_close(actual, expected, what: str, *, atol: float = 1e-5, rtol: float = 1e-5):
    """Same shape, and equal within ``atol + rtol * |expected|`` everywhere (NaN never is).
    A wrong shape stops the check; wrong values are one sub-check."""
    expected = np.asarray(expected)
    arr = expect_shape(actual, expected.shape, what)
    if expected.dtype.kind == "b" or arr.dtype.kind == "b":
        wrong = arr.astype(bool) != expected.astype(bool)
    else:
        a, e = arr.astype(np.float64), expected.astype(np.float64)
        wrong = ~(np.abs(a - e) <= atol + rtol * np.abs(e))  # NaN compares False: wrong
    _sub_check(not wrong.any(), lambda: _differ_message(what, arr, expected, wrong))
    return arr


def expect(condition: bool, message: str) -> None:
    """One sub-check: ``condition`` must hold (recorded, not raised, under :func:`collecting`).
    Use :func:`require` when the code after it relies on the condition."""
    _sub_check(bool(condition), message)


def require(condition: bool, message: str) -> None:
    """Like :func:`expect`, but always stops the check: for what later code relies on (a
    tuple to unpack, a key to read)."""
    if _collector is not None:
        _collector.run += 1
    if not condition:
        raise Mismatch(message)


# ----------------------------------------------------------------------------------------------
# Probes: every use of the graded function goes through one
#
# ``rlhf-book grade`` runs the learner's code in a process of its own and the checks in the
# grader's process, which never imports the learner's file: there the ``fn`` a check receives is
# a stand-in (a :class:`Remote`) that forwards each call. A plain call ``fn(x)`` is forwarded
# as it is. A JAX transform of ``fn`` (``jit``, ``vmap``, ``grad``, a lambda around it) has to
# run where the function is, so a check writes it as a *probe*: a module-level function of the
# checks, ``probe(fn, *args, **kwargs)``, called as ``call(fn, probe, *args, **kwargs)``. In
# place (a notebook's ``check()``, pytest) that simply runs ``probe(fn, *args, **kwargs)``;
# through the grader the learner's process runs the probe, found by name in its own copy of
# this package, and sends back only its outputs. :func:`jit`, :func:`vmap`, :func:`grad_of`,
# :func:`grad_of_sum` and :func:`grad_of_mean` cover the common transforms with one probe.


class Remote:
    """The grader's stand-in for a function that lives in another process: calling it, or
    :func:`call` with a probe, sends the arguments there and returns the outputs."""

    def run_probe(self, probe, args: tuple, kwargs: dict):  # pragma: no cover - interface
        raise NotImplementedError


PROBES: dict = {}


def probe(function):
    """Register ``function(fn, *args, **kwargs)`` as a probe, found by ``"module:name"``."""
    if "." in function.__qualname__:
        raise ValueError(f"a probe must be a module-level function, got {function.__qualname__}")
    PROBES[probe_key(function)] = function
    return function


def probe_key(function) -> str:
    return f"{function.__module__}:{function.__qualname__}"


def call(fn, probe_fn, *args, **kwargs):
    """``probe_fn(fn, *args, **kwargs)``, run where ``fn`` lives."""
    if probe_key(probe_fn) not in PROBES:
        raise ValueError(f"{probe_key(probe_fn)} is not a registered probe (decorate it "
                         "with @probe)")
    if isinstance(fn, Remote):
        return fn.run_probe(probe_fn, args, kwargs)
    return probe_fn(fn, *args, **kwargs)


def _sum_of(f):
    return lambda *a, **k: jnp.sum(f(*a, **k))


def _mean_of(f):
    return lambda *a, **k: jnp.mean(f(*a, **k))


_TRANSFORMS = {"jit": jax.jit, "vmap": jax.vmap, "grad": jax.grad,
               "sum": _sum_of, "mean": _mean_of}


@probe
def transformed(fn, steps, *args, **kwargs):
    """``fn`` wrapped by ``steps`` (``[(name, options), ...]``, innermost first, names from
    jit, vmap, grad, sum, mean), then called on the arguments."""
    f = fn
    for name, options in steps:
        f = _TRANSFORMS[name](f, **options)
    return f(*args, **kwargs)


class Transformed:
    """``jit(fn)``, ``vmap(fn)``, ...: a callable that runs the transformed ``fn`` where ``fn``
    lives. Compose them as the JAX transforms compose: ``jit(vmap(fn))``."""

    def __init__(self, fn, steps):
        self.fn, self.steps = fn, tuple(steps)

    def __call__(self, *args, **kwargs):
        return call(self.fn, transformed, self.steps, *args, **kwargs)


def _wrap(fn, name, options) -> Transformed:
    if isinstance(fn, Transformed):
        return Transformed(fn.fn, fn.steps + ((name, options),))
    return Transformed(fn, ((name, options),))


def jit(fn, **options) -> Transformed:
    """``jax.jit(fn, **options)``."""
    return _wrap(fn, "jit", options)


def vmap(fn, **options) -> Transformed:
    """``jax.vmap(fn, **options)``."""
    return _wrap(fn, "vmap", options)


def grad_of(fn, **options) -> Transformed:
    """``jax.grad(fn, **options)``."""
    return _wrap(fn, "grad", options)


def grad_of_sum(fn, **options) -> Transformed:
    """``jax.grad(lambda *a, **k: jnp.sum(fn(*a, **k)), **options)``."""
    return _wrap(_wrap(fn, "sum", {}), "grad", options)


def grad_of_mean(fn, **options) -> Transformed:
    """``jax.grad(lambda *a, **k: jnp.mean(fn(*a, **k)), **options)``."""
    return _wrap(_wrap(fn, "mean", {}), "grad", options)
