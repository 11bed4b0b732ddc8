"""Grading: run an exercise's check against the reader's code or the library's.

Three entry points share one function, :func:`run_check`:

* ``rlhf-book grade [chNN]`` (:func:`grade`) is a trust boundary. The reader's code runs only
  in a *learner* process, which imports ``exercises/chNN_*.py`` and answers requests: "call
  your ``causal_mask`` on these arrays", "run this probe (``jit``, ``vmap``, ``grad`` of your
  function) on these arrays". The checks, their expected values and the verdict stay in the
  grading process (the *judge*), which never imports the reader's file and calls the function
  through a stand-in (:class:`LearnerFunction`). Only data crosses, as JSON lines: arrays (numeric
  dtypes, as dtype, shape and bytes), numbers, strings, None, and lists, tuples, dicts and
  records (a NamedTuple or dataclass, rebuilt field by field) of them; never pickle. Each reply
  carries the run's nonce, the request's sequence number and the exercise id; any other line
  on the channel fails that exercise as a "protocol violation" and grading goes on with a fresh
  learner. The learner runs in its own process group, killed at the end of each chapter and
  after a hang (children it forked die with it), under a memory limit (8 GiB by default), and
  one import time limit is shared by the whole chapter (a file that hangs on import costs one
  timeout, not one per exercise). A function whose code lives in the ``rlhf_book`` package
  rather than in the reader's file is reported as ``uses the reference``, not graded.
* ``pytest tests/test_grading.py --impl=exercises`` turns each result into a test outcome
  ("not started" is an expected failure, not a traceback); it runs the reader's code in the
  pytest process, as the reader's own tool.
* :func:`check` grades one function from a notebook. The function runs in a learner process
  of its own (sent there with cloudpickle: see :func:`check` for why that is sound), so that a
  hang inside compiled JAX is stopped like any other and the kernel goes on; the checks run in
  the notebook's process, as under ``rlhf-book grade``.

In every route an exercise that calls another exercise's function (6.5 ends with 6.6's
``aggregate_loss``) is graded with the library's version of the callee, and the row says so
(:func:`with_references`); what the graded code prints is shown under its row (the last
:data:`OUTPUT_LIMIT` characters); a failing check runs all its value sub-checks and says how
many fail; JAX's tracer errors come with the hint to use ``jax.numpy``.

A result's status is one of ``passed``, ``failing``, ``not started`` (the stub still raises
its ``NotImplementedError``), ``timed out`` or ``uses the reference``.

What the boundary guarantees, and what it does not: code in the reader's file cannot change a
check, an expected value or a verdict, because none of them exist in its process; whatever it
writes to the channel, or to any file descriptor, is either a well-formed reply (outputs,
which must then be right) or rejected. It does not stop a reader who computes the right
outputs some other way: a function written in the reader's file that calls the library's
solution, or replaces the probes in the learner process with library code, passes. "Uses the
reference" is reported only when the function object itself comes from the library (an
import such as ``from rlhf_book.ch06_policy_gradients.losses import grpo_advantages``), and
the learner process reports where its functions come from, so hostile code there can hide it.
The memory limit is ``RLIMIT_AS`` (a process with the privilege to raise it can), and a child
that starts a session of its own escapes the process-group kill.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import dataclasses
import fcntl
import functools
import importlib
import importlib.util
import json
import math
import os
import pathlib
import pickle
import re
import resource
import secrets
import select
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import types
from typing import Callable, Iterable

import numpy as np

from rlhf_book.textbook.catalog import (CHAPTERS, PACKAGE_DIR, Chapter, Exercise, all_exercises,
                                        get_chapter, get_exercise)
from rlhf_book.textbook.learner import my_exercises
from rlhf_book.textbook.checks import PROBES, Remote, collecting, probe_key

PASSED, FAILING, NOT_STARTED, TIMED_OUT = "passed", "failing", "not started", "timed out"
USES_REFERENCE = "uses the reference"

DEFAULT_MEMORY_LIMIT = 8 * 2**30  # bytes of address space for the learner process
DEFAULT_IMPORT_TIMEOUT = 60.0     # seconds to import the reader's file, shared by a chapter
STARTUP_TIMEOUT = 120.0           # seconds for a learner process to start Python and JAX
MAX_LINE = 64 * 2**20             # the longest reply the judge reads
OUTPUT_LIMIT = 2000               # characters of the graded code's printed output shown per row
OUTPUT_LINES = 20                 # ... and lines
OUTPUT_FILE_LIMIT = 256 * 2**20   # bytes the learner may print per exercise (RLIMIT_FSIZE)


@dataclasses.dataclass
class GradeResult:
    """The outcome of grading one exercise; ``message`` is one line ('' when passed)."""

    id: str
    title: str
    status: str
    seconds: float = 0.0
    message: str = ""
    section: str = ""
    note: str = ""    # how it was graded, e.g. "graded with the reference 6.6 (aggregate_loss)"
    output: str = ""  # what the graded code printed (its last OUTPUT_LIMIT characters)

    @property
    def hint(self) -> str:
        """The one-line hint shown under a row that did not pass."""
        if self.status == PASSED:
            return ""
        return f"hint ({self.section}): {self.message}" if self.message else f"see {self.section}"

    def details(self, indent: str = "    ", hint: bool = True) -> list[str]:
        """The lines shown under the row: the hint (unless passed, or not ``hint``), the note,
        what the code printed."""
        lines = [self.hint] if hint and self.status != PASSED else []
        if self.note:
            lines.append(f"note: {self.note}")
        if self.output:
            lines.append("your code printed:")
            lines += ["| " + line for line in self.output.splitlines()]
        return [indent + line for line in lines]

    def __str__(self) -> str:
        line = f"{self.id} {self.title}: {self.status} ({self.seconds:.1f}s)"
        return "\n".join([line, *self.details()])


class GradingTimeout(BaseException):
    """Raised inside the graded code when its time is up (a BaseException, so that a
    student's ``except Exception`` cannot swallow it)."""


class LearnerFailure(BaseException):
    """The learner process broke the protocol or died; the message is the row's hint. A
    BaseException, so that a check's ``except ValueError`` around a call cannot swallow it."""


class ProtocolViolation(LearnerFailure):
    """A line on the channel that is not the reply the judge waits for."""


class LearnerDied(LearnerFailure):
    """The learner process exited (``os._exit``, a crash, the memory limit)."""


class LearnerError(Exception):
    """An exception the learner's code raised, rebuilt in the judge from its descriptor
    (type name, one-line message, where). For the common built-in types the rebuilt class
    also derives from that type, so that a check's ``except ValueError`` still works."""

    where = ""


def validate_timeout(timeout, what: str = "timeout") -> float | None:
    """``timeout`` as seconds: None, or a finite number > 0; a ``ValueError`` otherwise."""
    if timeout is None:
        return None
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds, got {timeout!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {timeout!r}")
    return value


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Interrupt the block after ``seconds`` with :class:`GradingTimeout`.

    Uses ``SIGALRM``, so it only works in the main thread on POSIX; elsewhere the block runs
    without a limit (:func:`grade` still enforces one, as a deadline on each reply).
    An alarm that was already pending (pytest-timeout's, say) is restored afterwards.
    """
    usable = (seconds and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise GradingTimeout(f"timed out after {seconds:g}s")

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            remaining = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _where_raised(err: BaseException) -> str:
    """' (raised at file:line)' for the innermost frame outside this package's machinery."""
    if isinstance(err, LearnerError):
        return err.where
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "rlhf_book/textbook" not in f.filename.replace(os.sep, "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {pathlib.Path(f.filename).name}:{f.lineno})"


def run_check(exercise: Exercise, fn: Callable | None, timeout: float | None = None,
              load_error: str = "") -> GradeResult:
    """Grade ``fn`` against the exercise's check; never raises (except KeyboardInterrupt).

    ``fn`` is the function itself (in place) or a :class:`LearnerFunction` (the grader). In
    place, another exercise's function that ``fn`` calls is replaced by the library's for the
    check (:func:`with_references`; the learner process does the same for the grader). The
    check's value sub-checks are all run (:func:`rlhf_book.textbook.checks.collecting`): the
    message is the first failure and says how many of the sub-checks fail."""
    result = GradeResult(exercise.id, exercise.title, FAILING, section=exercise.section)
    if fn is None:
        result.message = load_error or f"no function named {exercise.function!r} to grade"
        return result
    if not callable(fn):
        result.message = f"{exercise.function} is a {type(fn).__name__}, not a function"
        return result
    start = time.perf_counter()
    stopped = None  # the exception that ended the check, if one did
    in_place = not isinstance(fn, Remote)
    with collecting() as record, (with_references(exercise, fn) if in_place
                                  else contextlib.nullcontext([])) as substituted:
        try:
            with time_limit(timeout if timeout is not None else exercise.timeout):
                exercise.checker()(fn)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: B036 -- classified below
            stopped = err
    result.seconds = time.perf_counter() - start
    if substituted:
        result.note = reference_note(substituted)
    if stopped is None and not record.failures:
        result.status = PASSED
        return result
    if stopped is not None:
        result.status, result.message = _classify(exercise, stopped)
    failures = record.failures
    if failures:
        first = failures[0].removeprefix("Mismatch: ")
        if stopped is None:
            result.message = first + _count(len(failures), record.run)
        elif isinstance(stopped, AssertionError) and not isinstance(stopped, LearnerError):
            result.message = (first + _count(len(failures) + 1, record.run, "run ")
                              + " (the last stopped the check)")
        else:
            result.message = f"{first}{_count(len(failures), record.run, 'run ')}; then {result.message}"
            if result.status == NOT_STARTED:
                result.status = FAILING
    return result


def _count(failing: int, run: int, run_word: str = "") -> str:
    """' [2 of 9 sub-checks fail]' (nothing when the check has a single sub-check)."""
    if run <= 1:
        return ""
    verb = "fails" if failing == 1 else "fail"
    return f" [{failing} of the {run} sub-checks {run_word}{verb}]"


# Errors JAX raises when a traced value meets NumPy, float(), int() or a Python `if`.
TRACER_ERRORS = ("TracerArrayConversionError", "ConcretizationTypeError",
                 "TracerBoolConversionError", "TracerIntegerConversionError")


def _classify(exercise: Exercise, err: BaseException) -> tuple[str, str]:
    """``(status, message)`` of a check that ``err`` stopped."""
    if isinstance(err, GradingTimeout):
        return TIMED_OUT, f"{exercise.function}: {err}"
    if isinstance(err, LearnerFailure):
        return FAILING, str(err)
    if isinstance(err, LearnerError):  # rebuilt from the learner process: never the verdict
        if isinstance(err, NotImplementedError) and getattr(err, "not_started", False):
            return _not_started(exercise, err)
        return FAILING, _raised(exercise, err)
    if isinstance(err, NotImplementedError):
        return _not_started(exercise, err)
    if isinstance(err, AssertionError):  # the check's one-line verdict
        return FAILING, _one_line(err).removeprefix("Mismatch: ")
    return FAILING, _raised(exercise, err)  # anything the code raised, SystemExit included


def _raised(exercise: Exercise, err: BaseException) -> str:
    """'fn raised X: ...' -- with what to do about it for JAX's tracer errors."""
    text = f"{exercise.function} raised {_one_line(err)}{_where_raised(err)}"
    if type(err).__name__ in TRACER_ERRORS:
        return (f"your function is traced by jit: use jax.numpy, not NumPy, and no float(), "
                f"int() or Python `if` on array values (jnp.where instead); {text}")
    return text


def _is_own_stub_error(exercise_id: str, err: BaseException) -> bool:
    return isinstance(err, NotImplementedError) and str(err).startswith(f"Exercise {exercise_id} ")


def _not_started(exercise: Exercise, err: BaseException) -> tuple[str, str]:
    if _is_own_stub_error(exercise.id, err):
        return NOT_STARTED, ""
    # the function calls another unfinished exercise, or raises it itself
    return FAILING, _raised(exercise, err)


# ----------------------------------------------------------------------------------------------
# Dependent exercises: an exercise is graded with the library's version of the others it calls
#
# CISPO's loss (6.5) ends with ``aggregate_loss`` (6.6); the SFT loss (4.3) and sampling (0.4)
# use ``log_probs_from_logits`` (0.3); the sequence KL (15.3) uses ``exact_kl`` (15.2). In an
# exercise file those names are the reader's own functions, so an unfinished or wrong 6.6 made a
# correct 6.5 fail, with a hint about 6.5. While an exercise is graded, every other exercise's
# function its code names (as a global of its module) is replaced by the library's, and the
# row says so; each exercise is judged on its own code.


def _unwrap(fn):
    """The Python function under ``jax.jit``, ``functools.wraps`` and ``functools.partial``."""
    for _ in range(16):
        inner = getattr(fn, "__wrapped__", None) or (
            fn.func if isinstance(fn, functools.partial) else None)
        if inner is None:
            break
        fn = inner
    return fn


def _names_in_code(code: types.CodeType) -> set[str]:
    """The global and attribute names ``code`` and the functions nested in it use."""
    names, stack = set(), [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names


def callees(exercise: Exercise) -> list[Exercise]:
    """The other exercises whose functions the library's solution of ``exercise`` calls."""
    names = _names_in_code(_unwrap(exercise.reference()).__code__)
    return [e for e in all_exercises().values() if e.id != exercise.id and e.function in names]


def dependencies(exercise: Exercise, fn) -> list[tuple[Exercise, str, Callable]]:
    """``(callee, name, reference)`` for each other exercise's function that ``fn`` calls by a
    global name bound, in ``fn``'s module, to something other than the library's function."""
    inner = _unwrap(fn)
    code, globs = getattr(inner, "__code__", None), getattr(inner, "__globals__", None)
    if not isinstance(code, types.CodeType) or not isinstance(globs, dict):
        return []
    others = {e.function: e for e in all_exercises().values() if e.id != exercise.id}
    found = []
    for name in sorted(_names_in_code(code) & others.keys()):
        current = globs.get(name)
        if current is None or not callable(current):
            continue
        callee = others[name]
        reference = callee.reference()
        if current is reference or _unwrap(current) is _unwrap(reference):
            continue
        # another library function that merely shares the exercise's name (chapter 7's verifier
        # calls the world's arithmetic `extract_answer`, not an exercise): not the reader's code
        if getattr(_unwrap(current), "__module__", "").startswith("rlhf_book."):
            continue
        found.append((callee, name, reference))
    return found


def _clear_jit_cache(fn) -> None:
    clear = getattr(fn, "clear_cache", None)  # a jitted function keeps traces of the old callee
    if callable(clear):
        with contextlib.suppress(Exception):
            clear()


@contextlib.contextmanager
def with_references(exercise: Exercise, fn):
    """Within the block, the other exercises' functions that ``fn`` calls are the library's;
    yields the callees' :class:`Exercise` objects (restored afterwards)."""
    found = dependencies(exercise, fn)
    if not found:
        yield []
        return
    globs = _unwrap(fn).__globals__
    saved = {name: globs[name] for _, name, _ in found}
    try:
        for _, name, reference in found:
            globs[name] = reference
        _clear_jit_cache(fn)
        yield [callee for callee, _, _ in found]
    finally:
        globs.update(saved)
        _clear_jit_cache(fn)


def reference_note(callees) -> str:
    """'graded with the reference 6.6 (aggregate_loss), not yours: ...' for a result's note."""
    names = ", ".join(f"{e.id} ({e.function})" for e in callees)
    return (f"graded with the reference {names}, not yours: each exercise is judged on its own "
            "code")


# ----------------------------------------------------------------------------------------------
# Loading the implementation to grade


def load_exercises_module(chapter: Chapter, exercises_dir: pathlib.Path | None = None):
    """Import ``exercises/<chapter>.py`` fresh, compiled from its source (never from a cached
    ``.pyc``, which an edit saved within the same second could leave stale): the learner's
    :func:`~rlhf_book.textbook.learner.my_exercises`. Raises whatever importing it raises."""
    return my_exercises(chapter.key, exercises_dir)


def load_functions(chapter: Chapter, impl: str, exercises_dir=None) -> tuple[dict, str]:
    """``({exercise id: function or None}, load error)`` for one chapter and implementation,
    imported into this process (the in-process routes; :func:`grade` never calls it)."""
    if impl == "reference":
        return {e.id: e.reference() for e in chapter.exercises}, ""
    if impl != "exercises":
        raise ValueError(f"impl must be 'reference' or 'exercises', got {impl!r}")
    try:
        module = load_exercises_module(chapter, exercises_dir)
    except BaseException as err:  # a syntax error or a crash at import: report, don't crash
        if isinstance(err, KeyboardInterrupt):
            raise
        where = chapter.stub_file(exercises_dir).name
        return {e.id: None for e in chapter.exercises}, f"could not import {where}: {_one_line(err)}"
    return {e.id: getattr(module, e.function, None) for e in chapter.exercises}, ""


def check(exercise_id: str, fn: Callable, *, timeout: float | None = None,
          quiet: bool = False, in_process: bool = False) -> GradeResult:
    """Grade one function, e.g. ``check("0.1", my_causal_mask)`` in a notebook.

    The function runs in a worker process, as under ``rlhf-book grade`` (the checks stay
    here), so that a hang is stopped whatever it is: the worker is killed after ``timeout``
    seconds (default: the exercise's own), a ``jax.lax.while_loop`` that never ends inside
    ``jit`` included, and the notebook's kernel goes on. What the function prints is shown
    under the result. ``in_process=True`` grades it here instead (no process to start; a hang
    in compiled code then cannot be stopped). Prints one line, and the hint when it fails,
    unless ``quiet``; returns the :class:`GradeResult`.

    How the function reaches the worker: a function defined in a notebook cell cannot be
    imported by name, and a fork of a process that has started JAX deadlocks (its thread pools
    do not survive the fork: measured, every forked child hung or aborted). So the function is
    serialised with ``cloudpickle`` (by value: its code, its closure and the globals it uses,
    the reader's exercise module included), sent through a pipe to a fresh Python that we
    start, and unpickled there. The project refuses pickle for checkpoints because loading one
    runs code chosen by whoever wrote the file; here the code is the reader's own, pickled by
    this process and read only by our child, and it runs there because the reader asked to run
    it. Nothing comes back as pickle: the worker answers in the grader's JSON format, so it can
    run no code in the kernel. A function that cannot be pickled is graded in process, and the
    result's note says so.
    """
    exercise = get_exercise(exercise_id)
    timeout = validate_timeout(timeout)
    result = None
    if not in_process:
        payload, why = _pickled(exercise, fn)
        if payload is not None:
            result = _check_in_worker(exercise, payload, timeout)
    if result is None:
        result = run_check(exercise, fn, timeout)
        if not in_process:
            result.note = "; ".join(filter(None, [result.note, (
                f"graded in this process: your function could not be sent to a worker ({why}), "
                "so a hang inside compiled code cannot be stopped")]))
    if not quiet:
        print(result)
    return result


def _pickled(exercise: Exercise, fn) -> tuple[str | None, str]:
    """``(base64 cloudpickle of (exercise id, fn), '')``, or ``(None, why not)``."""
    try:
        import cloudpickle
    except ImportError:
        return None, "cloudpickle is not installed"
    # the reader's own modules (an exercise file, a notebook's helpers) go by value: the worker
    # may not be able to import them by name; installed packages and rlhf_book by reference
    registered = []
    installed = {pathlib.Path(p).resolve() for p in
                 (sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib"))}
    for module in _modules_of(fn):
        file = getattr(module, "__file__", None)
        if not file or module.__name__ == "__main__":
            continue
        path = pathlib.Path(file).resolve()
        if path.is_relative_to(PACKAGE_DIR) or any(path.is_relative_to(p) for p in installed):
            continue
        with contextlib.suppress(Exception):
            cloudpickle.register_pickle_by_value(module)
            registered.append(module)
    try:
        return base64.b64encode(cloudpickle.dumps((exercise.id, fn))).decode("ascii"), ""
    except Exception as err:  # noqa: BLE001 -- a lock, a generator, an open file: say which
        return None, _one_line(err)
    finally:
        for module in registered:
            with contextlib.suppress(Exception):
                cloudpickle.unregister_pickle_by_value(module)


def _modules_of(fn) -> list[types.ModuleType]:
    """The module that defines ``fn`` (under any jit or partial)."""
    name = getattr(_unwrap(fn), "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    return [module] if module is not None else []


def _check_in_worker(exercise: Exercise, payload: str, timeout: float | None) -> GradeResult:
    """Run ``check`` with the function in a learner process of its own (killed at the end)."""
    chapter = exercise.chapter
    learner = _Learner(chapter, "function", None, DEFAULT_MEMORY_LIMIT)
    try:
        failure = _start_and_load(learner, "your function", STARTUP_TIMEOUT, STARTUP_TIMEOUT,
                                  function=payload, path=[str(p) for p in sys.path])
        if failure:
            return GradeResult(exercise.id, exercise.title, FAILING, message=failure,
                               section=exercise.section, output=learner.take_output())
        return _grade_exercise(learner, exercise, "function", timeout)
    finally:
        learner.kill()


# ----------------------------------------------------------------------------------------------
# The wire format: JSON values, arrays as dtype + shape + bytes, never pickle
#
# A JSON list is a Python list; every other container or array is a JSON object with a tag
# "t": tuple, dict (keys and values as two lists), array (kind "numpy", "jax" or "scalar"
# for a NumPy scalar), record (a NamedTuple or dataclass: its name, field names and values).

_MAX_DEPTH = 64


class Record(tuple):
    """A NamedTuple (or dataclass) the learner's code returned, rebuilt from its fields:
    iterable like the tuple and with one attribute per field. No class is looked up."""

    def __new__(cls, name: str, fields: list[str], values: list, is_tuple: bool):
        record = super().__new__(cls, values)
        record._name, record._fields, record._is_tuple = name, tuple(fields), is_tuple
        record.__dict__.update(zip(fields, values))  # instance attributes win over tuple.count
        return record

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, self))
        return f"{self._name}({body})"


def _numeric_array(x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":
        if arr.dtype.kind == "V" and arr.dtype.itemsize <= 2 and arr.dtype.names is None:
            arr = arr.astype(np.float32)  # bfloat16 and friends
        else:
            raise TypeError(f"an array of dtype {arr.dtype} cannot be sent (numbers only)")
    return arr


def encode(x, depth: int = 0):
    """``x`` as a JSON-able value of the wire format; ``TypeError`` for anything else."""
    if depth > _MAX_DEPTH:
        raise TypeError("a value nested too deeply to send")
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, np.generic):
        arr = _numeric_array(np.asarray(x))
        return {"t": "array", "kind": "scalar", "dtype": arr.dtype.str, "shape": [],
                "b64": base64.b64encode(arr.tobytes()).decode("ascii")}
    if isinstance(x, (int, float)):
        return x if type(x) in (int, float) else (int(x) if isinstance(x, int) else float(x))
    if isinstance(x, np.ndarray) or _is_jax_array(x):
        kind = "numpy" if isinstance(x, np.ndarray) else "jax"
        arr = _numeric_array(x)
        return {"t": "array", "kind": kind, "dtype": arr.dtype.str, "shape": list(arr.shape),
                "b64": base64.b64encode(arr.tobytes(order="C")).decode("ascii")}
    if isinstance(x, tuple) and hasattr(type(x), "_fields"):
        return {"t": "record", "name": type(x).__name__, "tuple": True,
                "fields": [str(f) for f in type(x)._fields],
                "v": [encode(v, depth + 1) for v in x]}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = [f.name for f in dataclasses.fields(x)]
        return {"t": "record", "name": type(x).__name__, "tuple": False, "fields": fields,
                "v": [encode(getattr(x, f), depth + 1) for f in fields]}
    if isinstance(x, list):
        return [encode(v, depth + 1) for v in x]
    if isinstance(x, tuple):
        return {"t": "tuple", "v": [encode(v, depth + 1) for v in x]}
    if isinstance(x, dict):
        return {"t": "dict", "k": [encode(k, depth + 1) for k in x],
                "v": [encode(v, depth + 1) for v in x.values()]}
    raise TypeError(f"a {type(x).__name__} cannot be sent (arrays, numbers, strings, None, and "
                    "lists, tuples, dicts and records of them)")


def _is_jax_array(x) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


def decode(data, jax_arrays: bool = True, depth: int = 0):
    """The value :func:`encode` wrote; ``ValueError`` for anything malformed. Arrays of kind
    "jax" come back as JAX arrays when ``jax_arrays`` (and JAX is loaded), else NumPy."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        return [decode(v, jax_arrays, depth + 1) for v in data]
    if not isinstance(data, dict):
        raise ValueError(f"unexpected {type(data).__name__}")
    tag = data.get("t")
    if tag == "tuple" and set(data) == {"t", "v"} and isinstance(data["v"], list):
        return tuple(decode(v, jax_arrays, depth + 1) for v in data["v"])
    if (tag == "dict" and set(data) == {"t", "k", "v"} and isinstance(data["k"], list)
            and isinstance(data["v"], list) and len(data["k"]) == len(data["v"])):
        keys = [decode(k, jax_arrays, depth + 1) for k in data["k"]]
        if not all(isinstance(k, (str, int, float, bool, type(None), tuple)) for k in keys):
            raise ValueError("a dict key that is not a string, number or tuple")
        return dict(zip(keys, (decode(v, jax_arrays, depth + 1) for v in data["v"])))
    if tag == "array" and set(data) == {"t", "kind", "dtype", "shape", "b64"}:
        return _decode_array(data, jax_arrays)
    if tag == "record" and set(data) == {"t", "name", "tuple", "fields", "v"}:
        name, fields, values = data["name"], data["fields"], data["v"]
        ok = (isinstance(name, str) and name.isidentifier() and isinstance(fields, list)
              and isinstance(values, list) and len(fields) == len(values)
              and all(isinstance(f, str) and f.isidentifier() and not f.startswith("_")
                      for f in fields) and isinstance(data["tuple"], bool))
        if not ok:
            raise ValueError("a malformed record")
        values = [decode(v, jax_arrays, depth + 1) for v in values]
        return Record(name, fields, values, data["tuple"])
    raise ValueError("an object with an unknown tag")


def _decode_array(data, jax_arrays: bool):
    kind, dtype, shape, b64 = data["kind"], data["dtype"], data["shape"], data["b64"]
    if kind not in ("numpy", "jax", "scalar") or not isinstance(dtype, str) or len(dtype) > 8:
        raise ValueError("a malformed array")
    dt = np.dtype(dtype)
    if dt.kind not in "biufc" or dt.names is not None or dt.subdtype is not None:
        raise ValueError(f"an array of dtype {dtype!r} (numbers only)")
    if (not isinstance(shape, list) or len(shape) > 32
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise ValueError("a malformed shape")
    raw = base64.b64decode(b64.encode("ascii"), validate=True) if isinstance(b64, str) else None
    if raw is None or len(raw) != dt.itemsize * math.prod(shape):
        raise ValueError("array bytes that do not match dtype and shape")
    arr = np.frombuffer(raw, dt).reshape(shape).copy()
    if kind == "scalar":
        return arr[()]
    if kind == "jax" and jax_arrays and "jax" in sys.modules:
        return sys.modules["jax"].numpy.asarray(arr)
    return arr


_REBUILT = {name: getattr(builtins, name) for name in (
    "ValueError", "TypeError", "IndexError", "KeyError", "ZeroDivisionError", "ArithmeticError",
    "AttributeError", "RuntimeError", "NotImplementedError", "OverflowError",
    "FloatingPointError", "AssertionError", "LookupError", "NameError", "RecursionError",
    "MemoryError", "UnboundLocalError")}


def _rebuild_error(descriptor, exercise: Exercise) -> LearnerError:
    """The :class:`LearnerError` of a descriptor; ``ValueError`` if it is malformed."""
    if (not isinstance(descriptor, dict)
            or set(descriptor) != {"type", "message", "where", "not_started"}
            or not all(isinstance(descriptor[k], str) for k in ("type", "message", "where"))
            or not isinstance(descriptor["not_started"], bool)):
        raise ValueError("a malformed exception descriptor")
    name = descriptor["type"][:80]
    if not name.isidentifier():
        name = "Exception"
    bases = (LearnerError, _REBUILT[name]) if name in _REBUILT else (LearnerError,)
    cls = types.new_class(name, bases)
    err = cls(descriptor["message"][:500])
    where = descriptor["where"][:200]
    err.where = where if re.fullmatch(r" \(at [^()\n]*:\d+\)", where) else ""
    err.not_started = descriptor["not_started"] and _is_own_stub_error(exercise.id, err)
    return err


# ----------------------------------------------------------------------------------------------
# The judge's side: one learner process, spoken to through a pipe in each direction


def _is_library_function(info: dict) -> bool:
    """Whether the learner reported a function whose code lives in the ``rlhf_book`` package."""
    module, file = info.get("module") or "", info.get("file") or ""
    if module == "rlhf_book" or module.startswith("rlhf_book."):
        return True
    if file:
        try:
            return pathlib.Path(file).resolve().is_relative_to(PACKAGE_DIR)
        except (OSError, ValueError):
            return False
    return False


class _Learner:
    """A learner process for one chapter: start it, load the implementation, call functions."""

    def __init__(self, chapter: Chapter, impl: str, exercises_dir, memory_limit: int | None):
        self.chapter, self.impl = chapter, impl
        self.nonce = secrets.token_hex(16)
        self.seq = 0
        self.pending = False  # a request is out and its reply not read: restart before reuse
        self.buffer = b""
        command = [sys.executable, "-m", "rlhf_book.textbook.grading", "--learner", chapter.key,
                   impl, str(exercises_dir or ""), str(int(memory_limit or 0))]
        # grading runs on the CPU: small arrays, and GPU runtimes reserve more address space
        # than the memory limit allows
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        # what the learner's code prints: an unnamed file, appended to by the learner and
        # read and emptied here after each exercise (O_APPEND: writes follow the truncation)
        self.output = tempfile.TemporaryFile()
        fd = self.output.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.output, start_new_session=True,
                                     close_fds=True, env=env)
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.functions: dict = {}

    def take_output(self, limit: int = OUTPUT_LIMIT) -> str:
        """The last ``limit`` characters (and :data:`OUTPUT_LINES` lines) printed since the last
        call (printable text only:
        other control characters, ANSI colours included, become '?'); empties the file."""
        fd = self.output.fileno()
        try:
            size = os.fstat(fd).st_size
            raw = os.pread(fd, 4 * limit, max(size - 4 * limit, 0))
            os.ftruncate(fd, 0)
        except OSError:
            return ""
        text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
        text = re.sub(r"[^\x20-\x7e\n\t\u00a0-\uffff]", "?", text).rstrip()
        cut = len(text) > limit or size > len(raw)
        text = text[-limit:]
        lines = text.splitlines()
        if len(lines) > OUTPUT_LINES:
            lines, cut = lines[-OUTPUT_LINES:], True
        return "\n".join((["... (earlier output left out)"] if cut else []) + lines)

    # -- lifecycle

    def kill(self) -> None:
        """Kill the learner's whole process group (its children too) and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self.output.close()

    def start(self, deadline: float) -> None:
        """Send the nonce and wait until the learner has started Python, JAX and the checks."""
        self._request({"op": "hello"}, "", deadline)

    def load(self, deadline: float, **extra) -> dict:
        """Import the implementation in the learner: ``{exercise id: info}``. ``extra`` goes
        with the request (the function and ``sys.path`` of :func:`check`)."""
        infos = self._request({"op": "load", **extra}, "", deadline)
        ids = {e.id for e in self.chapter.exercises}
        if not isinstance(infos, dict) or set(infos) != ids or not all(
                isinstance(v, dict) and v.get("state") in ("ok", "missing", "not callable")
                and all(isinstance(x, (str, type(None))) for x in v.values())
                for v in infos.values()):
            raise ProtocolViolation("protocol violation: the learner process described its "
                                    "functions in an unexpected form")
        self.functions = infos
        return infos

    def call(self, exercise: Exercise, probe, args: tuple, kwargs: dict, deadline: float):
        try:
            message = {"op": "call", "probe": None if probe is None else probe_key(probe),
                       "args": encode(list(args)), "kwargs": encode(dict(kwargs))}
        except TypeError as err:  # a check passed something it cannot send: the grader's bug
            raise RuntimeError(f"internal: cannot send the arguments of {exercise.id}: {err}")
        return self._request(message, exercise.id, deadline, exercise)

    # -- the channel

    def _request(self, message: dict, exercise_id: str, deadline: float,
                 exercise: Exercise | None = None):
        self.pending = True
        seq, self.seq = self.seq, self.seq + 1
        line = json.dumps({"nonce": self.nonce, "seq": seq, "id": exercise_id, **message})
        self._send(line.encode() + b"\n", deadline)
        reply = self._receive(deadline)
        try:
            body = json.loads(reply)
        except (ValueError, RecursionError):
            raise ProtocolViolation(f"protocol violation: a line that is not a reply on the "
                                    f"result channel: {reply[:60]!r}") from None
        expected = (isinstance(body, dict) and body.get("nonce") == self.nonce
                    and body.get("seq") == seq and body.get("id") == exercise_id
                    and set(body) in ({"nonce", "seq", "id", "ok"},
                                      {"nonce", "seq", "id", "error"}))
        if not expected:
            raise ProtocolViolation(f"protocol violation: an unexpected line on the result "
                                    f"channel: {reply[:60]!r}")
        try:
            if "error" in body:
                error = _rebuild_error(body["error"], exercise or self.chapter.exercises[0])
            else:
                value = decode(body["ok"])
        except (ValueError, TypeError, RecursionError) as err:
            raise ProtocolViolation(f"protocol violation: a malformed reply ({err})") from None
        self.pending = False
        if "error" in body:
            raise error
        return value

    def _send(self, data: bytes, deadline: float) -> None:
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GradingTimeout("timed out while sending the arguments")
            _, ready, _ = select.select([], [fd], [], remaining)
            if not ready:
                continue
            try:
                n = os.write(fd, view[:1 << 16])
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError):
                raise self._died() from None
            view = view[n:]

    def _receive(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise ProtocolViolation(f"protocol violation: a line of more than "
                                        f"{MAX_LINE >> 20} MiB on the result channel")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GradingTimeout("no reply in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise self._died()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _died(self) -> LearnerDied:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.pending = True
        return LearnerDied(f"exited with code {code}" if code is not None else
                           "closed the result channel")


class LearnerFunction(Remote):
    """The judge's stand-in for the learner's function of one exercise: calling it (or
    :func:`rlhf_book.textbook.checks.call` with a probe) asks the learner process."""

    def __init__(self, learner: _Learner, exercise: Exercise, deadline: float):
        self.learner, self.exercise, self.deadline = learner, exercise, deadline

    def __call__(self, *args, **kwargs):
        return self.run_probe(None, args, kwargs)

    def run_probe(self, probe, args: tuple, kwargs: dict):
        if self.learner.pending:  # an earlier failure was swallowed: do not go on
            raise LearnerDied(f"the grading process stopped while grading {self.exercise.function}")
        try:
            return self.learner.call(self.exercise, probe, args, kwargs, self.deadline)
        except LearnerDied as err:
            raise LearnerDied(f"the grading process {err} while grading "
                              f"{self.exercise.function}") from None


def _grade_chapter(chapter: Chapter, impl: str, exercises_dir, timeout: float | None,
                   import_timeout: float = DEFAULT_IMPORT_TIMEOUT,
                   memory_limit: int | None = DEFAULT_MEMORY_LIMIT) -> Iterable[GradeResult]:
    """Yield one result per exercise of ``chapter``; the learner process is restarted after a
    hang, a crash or a protocol violation, and killed (with its process group) at the end."""
    learner: _Learner | None = None
    load_failure = ""
    import_budget = import_timeout
    file = chapter.stub_file(exercises_dir).name if impl == "exercises" else "the library"
    try:
        for exercise in chapter.exercises:
            row = GradeResult(exercise.id, exercise.title, FAILING, section=exercise.section)
            if load_failure:
                row.message = load_failure
                yield row
                continue
            if learner is None:
                learner = _Learner(chapter, impl, exercises_dir, memory_limit)
                load_failure = _start_and_load(learner, file, import_timeout, import_budget)
                import_budget = max(import_budget - getattr(learner, "load_seconds", 0.0), 0.0)
                if load_failure:
                    row.message, row.output = load_failure, learner.take_output()
                    learner.kill()
                    learner = None
                    yield row
                    continue
            row = _grade_exercise(learner, exercise, impl, timeout)
            if learner.pending:  # hung, died or broke the protocol: a fresh one for the next
                learner.kill()
                learner = None
            yield row
    finally:
        if learner is not None:
            learner.kill()


def _start_and_load(learner: _Learner, file: str, import_timeout: float,
                    import_budget: float, **load_extra) -> str:
    """'' when the learner started and imported ``file``; else the message for every row.
    What the learner printed while starting and importing is shown only if that failed."""
    try:
        learner.start(time.monotonic() + STARTUP_TIMEOUT)
    except GradingTimeout:
        return f"the grading process did not start within {STARTUP_TIMEOUT:g}s"
    except LearnerFailure as err:
        return f"the grading process {err} while starting"
    except LearnerError as err:
        return f"the grading process could not start: {_one_line(err)}"
    start = time.monotonic()
    try:
        learner.load(start + import_budget, **load_extra)
    except GradingTimeout:
        return (f"importing {file} did not finish within {import_timeout:g}s (one import time "
                "limit for the chapter)")
    except LearnerDied as err:
        return f"the grading process {err} while importing {file}"
    except LearnerFailure as err:
        return f"{err} (while importing {file})"
    except LearnerError as err:
        return f"could not import {file}: {_one_line(err)}{_where_raised(err)}"
    finally:
        learner.load_seconds = time.monotonic() - start
    learner.take_output()
    return ""


def _printable(text, limit: int = 120) -> str:
    """A string the learner process sent, made one short printable line."""
    return re.sub(r"[^\x20-\x7e]", "?", str(text))[:limit]


def _grade_exercise(learner: _Learner, exercise: Exercise, impl: str,
                    timeout: float | None) -> GradeResult:
    info = learner.functions[exercise.id]
    row = GradeResult(exercise.id, exercise.title, FAILING, section=exercise.section)
    if info["state"] == "missing":
        row.message = f"no function named {exercise.function!r} to grade"
        return row
    if info["state"] == "not callable":
        row.message = f"{exercise.function} is a {_printable(info.get('type'))}, not a function"
        return row
    if impl == "exercises" and _is_library_function(info):
        row.status = USES_REFERENCE
        where = _printable(f"{info.get('module')}.{info.get('qualname')}")
        row.message = (f"{exercise.function} is {where} from the library, not your own code: "
                       "write it in your exercise file")
        return row
    limit = timeout if timeout is not None else exercise.timeout
    # the alarm of run_check stops a check in the main thread; the deadline, anywhere
    fn = LearnerFunction(learner, exercise, time.monotonic() + limit + 1.0)
    result = run_check(exercise, fn, limit)
    if result.status == TIMED_OUT:
        stop = f"{exercise.function}: timed out after {limit:g}s (the grader stopped it)"
        before, then, _ = result.message.partition("; then ")  # failures before the hang
        result.message = f"{before}; then {stop}" if then else stop
        result.seconds = limit
    callees = [all_exercises()[i] for i in str(info.get("uses") or "").split(",")
               if i in all_exercises() and i != exercise.id]
    if callees and result.status != NOT_STARTED:
        result.note = reference_note(callees)
    result.output = learner.take_output()
    return result


def grade(chapters: Iterable[Chapter | str] | None = None, impl: str = "exercises",
          exercises_dir=None, timeout: float | None = None,
          on_result: Callable[[GradeResult], None] | None = None, *,
          import_timeout: float = DEFAULT_IMPORT_TIMEOUT,
          memory_limit: int | None = DEFAULT_MEMORY_LIMIT) -> list[GradeResult]:
    """Grade every exercise of ``chapters`` (default: all) and return the results.

    The reader's code runs in a learner process per chapter; the checks and the verdicts
    run here (see the module docstring). ``timeout`` bounds each exercise (default: the
    exercise's own, 60 s), ``import_timeout`` the imports of a chapter's file, all together;
    ``memory_limit`` is the learner's address space in bytes (None: no limit).
    """
    if impl not in ("reference", "exercises"):
        raise ValueError(f"impl must be 'reference' or 'exercises', got {impl!r}")
    timeout = validate_timeout(timeout)
    import_timeout = validate_timeout(import_timeout, "import_timeout")
    if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit < 2**28):
        raise ValueError(f"memory_limit must be None or a number of bytes >= 256 MiB, "
                         f"got {memory_limit!r}")
    selected = [get_chapter(c) if not isinstance(c, Chapter) else c for c in (chapters or CHAPTERS)]
    results = []
    for chapter in selected:
        if not chapter.exercises:
            continue
        for result in _grade_chapter(chapter, impl, exercises_dir, timeout, import_timeout,
                                     memory_limit):
            results.append(result)
            if on_result:
                on_result(result)
    return results


_COLOURS = {PASSED: "32", FAILING: "31", NOT_STARTED: "33", TIMED_OUT: "35", USES_REFERENCE: "36"}


def format_row(result: GradeResult, colour: bool = False) -> str:
    status = f"{result.status:<12}"
    if colour:
        status = f"\033[{_COLOURS[result.status]}m{status}\033[0m"
    stars = all_exercises()[result.id].stars if result.id in all_exercises() else ""
    row = f"  {result.id:<6}{stars:<5}{result.title[:46]:<48}{status}{result.seconds:>6.1f}s"
    hint = result.status in (FAILING, TIMED_OUT, USES_REFERENCE)
    return "\n".join([row, *result.details("        ", hint)])


def format_summary(results: list[GradeResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in _COLOURS}
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    return ", ".join(parts) + f" (of {len(results)} exercises)"


# ----------------------------------------------------------------------------------------------
# The learner's side: python -m rlhf_book.textbook.grading --learner CHAPTER IMPL DIR MEMORY
#
# Everything below runs in the learner process, next to the reader's code, and is therefore
# trusted by nobody: it only turns requests into calls and outputs into replies.


def _describe(err: BaseException, exercise_id: str) -> dict:
    """An exception as a descriptor: type name, one-line message, where, not started."""
    text = str(err).strip().splitlines()
    return {"type": type(err).__name__, "message": text[0][:500] if text else "",
            "where": _where_raised(err),
            "not_started": _is_own_stub_error(exercise_id, err) if exercise_id else False}


def _origin(fn) -> dict:
    """Where a function's code lives: its module, qualified name and source file."""
    fn = _unwrap(fn)
    code = getattr(fn, "__code__", None)
    module = getattr(fn, "__module__", None)
    return {"module": module if isinstance(module, str) else None,
            "qualname": str(getattr(fn, "__qualname__", type(fn).__name__)),
            "file": getattr(code, "co_filename", None) if code is not None else None}


def _learner_main(chapter_key: str, impl: str, exercises_dir: str, memory_limit: str) -> None:
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # the reader's code can neither read requests nor print into replies:
    os.dup2(2, 1)        # what it prints goes to the judge's output file (standard error)
    sys.stdout = sys.stderr
    limit = int(memory_limit)
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # printing in a loop fills the output file only so far: a write past the limit fails
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_FILE_LIMIT, OUTPUT_FILE_LIMIT))
    chapter = get_chapter(chapter_key)
    importlib.import_module(f"rlhf_book.textbook.checks.{chapter.key}")  # its probes, and JAX
    functions: dict = {}
    nonce = None
    for line in requests:
        request = json.loads(line)
        if nonce is None:
            nonce = request["nonce"]
        seq, exercise_id = request["seq"], request["id"]
        reply = {"nonce": nonce, "seq": seq, "id": exercise_id}
        try:
            if request["op"] == "hello":
                reply["ok"] = "ready"
            elif request["op"] == "load":
                functions, infos = _learner_load(chapter, impl, exercises_dir, request)
                reply["ok"] = encode(infos)
            else:
                args, kwargs = decode(request["args"]), decode(request["kwargs"])
                fn = functions[exercise_id]
                name = request["probe"]
                with with_references(get_exercise(exercise_id), fn):
                    out = fn(*args, **kwargs) if name is None else PROBES[name](fn, *args,
                                                                              **kwargs)
                reply["ok"] = encode(out)
        except BaseException as err:  # noqa: B036 -- the reader's code raised: describe it
            reply.pop("ok", None)
            if isinstance(err, TypeError) and "cannot be sent" in str(err):
                err = TypeError(f"returned {err}")
            reply["error"] = _describe(err, exercise_id)
        for stream in (sys.stdout, sys.stderr):  # what it printed is in the file before the reply
            with contextlib.suppress(Exception):
                stream.flush()
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


def _learner_load(chapter: Chapter, impl: str, exercises_dir: str,
                  request: dict) -> tuple[dict, dict]:
    if impl == "reference":
        functions = {e.id: e.reference() for e in chapter.exercises}
    elif impl == "function":  # check(): one function, sent by the notebook that holds it
        sys.path[:0] = [p for p in request["path"] if isinstance(p, str) and p not in sys.path]
        exercise_id, fn = pickle.loads(base64.b64decode(request["function"]))
        functions = {e.id: fn if e.id == exercise_id else None for e in chapter.exercises}
    else:
        module = load_exercises_module(chapter, pathlib.Path(exercises_dir) if exercises_dir
                                       else None)
        functions = {e.id: getattr(module, e.function, None) for e in chapter.exercises}
    infos = {}
    for exercise_id, fn in functions.items():
        if fn is None:
            infos[exercise_id] = {"state": "missing"}
        elif not callable(fn):
            infos[exercise_id] = {"state": "not callable", "type": type(fn).__name__}
        else:
            uses = ",".join(e.id for e, _, _ in dependencies(get_exercise(exercise_id), fn))
            infos[exercise_id] = {"state": "ok", "uses": uses, **_origin(fn)}
    return functions, infos


if __name__ == "__main__" and sys.argv[1:2] == ["--learner"]:
    _learner_main(*sys.argv[2:6])
