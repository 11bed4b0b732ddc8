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
* :func:`check` grades one function in place, from a notebook (also in-process: a reader
  checking their own notebook is not the threat the grader guards against).

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
import functools
import importlib
import importlib.util
import json
import math
import os
import pathlib
import re
import resource
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
from typing import Callable, Iterable

import numpy as np

from rlhf_book.textbook.catalog import (CHAPTERS, PACKAGE_DIR, Chapter, Exercise, get_chapter,
                                        get_exercise)
from rlhf_book.textbook.checks import PROBES, Remote, probe_key

PASSED, FAILING, NOT_STARTED, TIMED_OUT = "passed", "failing", "not started", "timed out"
USES_REFERENCE = "uses the reference"

DEFAULT_MEMORY_LIMIT = 8 * 2**30  # bytes of address space for the learner process
DEFAULT_IMPORT_TIMEOUT = 60.0     # seconds to import the reader's file, shared by a chapter
STARTUP_TIMEOUT = 120.0           # seconds for a learner process to start Python and JAX
MAX_LINE = 64 * 2**20             # the longest reply the judge reads


@dataclasses.dataclass
class GradeResult:
    """The outcome of grading one exercise; ``message`` is one line ('' when passed)."""

    id: str
    title: str
    status: str
    seconds: float = 0.0
    message: str = ""
    section: str = ""

    @property
    def hint(self) -> str:
        """The one-line hint shown under a row that did not pass."""
        if self.status == PASSED:
            return ""
        return f"hint ({self.section}): {self.message}" if self.message else f"see {self.section}"

    def __str__(self) -> str:
        line = f"{self.id} {self.title}: {self.status} ({self.seconds:.1f}s)"
        return line + (f"\n    {self.hint}" if self.status != PASSED else "")


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

    ``fn`` is the function itself (in place) or a :class:`LearnerFunction` (the grader)."""
    result = GradeResult(exercise.id, exercise.title, FAILING, section=exercise.section)
    if fn is None:
        result.message = load_error or f"no function named {exercise.function!r} to grade"
        return result
    if not callable(fn):
        result.message = f"{exercise.function} is a {type(fn).__name__}, not a function"
        return result
    start = time.perf_counter()
    try:
        with time_limit(timeout if timeout is not None else exercise.timeout):
            exercise.checker()(fn)
        result.status = PASSED
    except KeyboardInterrupt:
        raise
    except GradingTimeout as err:
        result.status, result.message = TIMED_OUT, f"{exercise.function}: {err}"
    except LearnerFailure as err:
        result.message = str(err)
    except LearnerError as err:  # rebuilt from the learner process: never the check's verdict
        if isinstance(err, NotImplementedError) and getattr(err, "not_started", False):
            result.status, result.message = _not_started(exercise, err)
        else:
            result.message = f"{exercise.function} raised {_one_line(err)}{_where_raised(err)}"
    except NotImplementedError as err:
        result.status, result.message = _not_started(exercise, err)
    except AssertionError as err:  # the check's one-line verdict
        result.message = _one_line(err).removeprefix("Mismatch: ")
    except BaseException as err:  # anything the student's code raised, SystemExit included
        result.message = f"{exercise.function} raised {_one_line(err)}{_where_raised(err)}"
    result.seconds = time.perf_counter() - start
    return result


def _is_own_stub_error(exercise_id: str, err: BaseException) -> bool:
    return isinstance(err, NotImplementedError) and str(err).startswith(f"Exercise {exercise_id} ")


def _not_started(exercise: Exercise, err: BaseException) -> tuple[str, str]:
    if _is_own_stub_error(exercise.id, err):
        return NOT_STARTED, ""
    # the function calls another unfinished exercise, or raises it itself
    return FAILING, f"{exercise.function} raised {_one_line(err)}{_where_raised(err)}"


# ----------------------------------------------------------------------------------------------
# Loading the implementation to grade


def load_exercises_module(chapter: Chapter, exercises_dir: pathlib.Path | None = None):
    """Import ``exercises/<chapter>.py`` fresh. Raises whatever importing it raises."""
    path = chapter.stub_file(exercises_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (run `rlhf-book exercises` to create it)")
    name = f"rlhf_book_exercises_{chapter.key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


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
          quiet: bool = False) -> GradeResult:
    """Grade one function in place, e.g. ``check("0.1", my_causal_mask)`` in a notebook.

    Prints one line (and the hint when it fails) and returns the :class:`GradeResult`.
    """
    timeout = validate_timeout(timeout)
    result = run_check(get_exercise(exercise_id), fn, timeout)
    if not quiet:
        print(result)
    return result


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
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     close_fds=True, env=env)
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.functions: dict = {}

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

    def start(self, deadline: float) -> None:
        """Send the nonce and wait until the learner has started Python, JAX and the checks."""
        self._request({"op": "hello"}, "", deadline)

    def load(self, deadline: float) -> dict:
        """Import the implementation in the learner: ``{exercise id: info}``."""
        infos = self._request({"op": "load"}, "", deadline)
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
                    learner.kill()
                    learner = None
                    row.message = load_failure
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
                    import_budget: float) -> str:
    """'' when the learner started and imported ``file``; else the message for every row."""
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
        learner.load(start + import_budget)
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
        result.message = f"{exercise.function}: timed out after {limit:g}s (the grader stopped it)"
        result.seconds = limit
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
    row = f"  {result.id:<6}{result.title[:46]:<48}{status}{result.seconds:>6.1f}s"
    shown = (FAILING, TIMED_OUT, USES_REFERENCE)
    return row + (f"\n        {result.hint}" if result.status in shown else "")


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
    seen = 0
    while seen < 16:
        inner = getattr(fn, "__wrapped__", None) or (
            fn.func if isinstance(fn, functools.partial) else None)
        if inner is None:
            break
        fn, seen = inner, seen + 1
    code = getattr(fn, "__code__", None)
    module = getattr(fn, "__module__", None)
    return {"module": module if isinstance(module, str) else None,
            "qualname": str(getattr(fn, "__qualname__", type(fn).__name__)),
            "file": getattr(code, "co_filename", None) if code is not None else None}


def _learner_main(chapter_key: str, impl: str, exercises_dir: str, memory_limit: str) -> None:
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # the reader's code can neither read requests nor print into replies
    os.dup2(devnull, 1)
    sys.stdout = sys.stderr
    limit = int(memory_limit)
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
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
                functions, infos = _learner_load(chapter, impl, exercises_dir)
                reply["ok"] = encode(infos)
            else:
                args, kwargs = decode(request["args"]), decode(request["kwargs"])
                fn = functions[exercise_id]
                name = request["probe"]
                out = fn(*args, **kwargs) if name is None else PROBES[name](fn, *args, **kwargs)
                reply["ok"] = encode(out)
        except BaseException as err:  # noqa: B036 -- the reader's code raised: describe it
            reply.pop("ok", None)
            if isinstance(err, TypeError) and "cannot be sent" in str(err):
                err = TypeError(f"returned {err}")
            reply["error"] = _describe(err, exercise_id)
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


def _learner_load(chapter: Chapter, impl: str, exercises_dir: str) -> tuple[dict, dict]:
    if impl == "reference":
        functions = {e.id: e.reference() for e in chapter.exercises}
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
            infos[exercise_id] = {"state": "ok", **_origin(fn)}
    return functions, infos


if __name__ == "__main__" and sys.argv[1:2] == ["--learner"]:
    _learner_main(*sys.argv[2:6])
