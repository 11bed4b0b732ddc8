"""Grading: run an exercise's check against the reader's code or the library's.

Three entry points share one function, :func:`run_check`:

* ``rlhf-book grade [chNN]`` (:func:`grade`) grades ``exercises/chNN_*.py`` in a separate
  worker process, so code that hangs, crashes the interpreter or calls ``sys.exit`` costs one
  row of the table, never the grader;
* ``pytest tests/test_grading.py --impl=exercises`` turns each result into a test outcome
  ("not started" is an expected failure, not a traceback);
* :func:`check` grades one function in place, from a notebook.

A result's status is one of ``passed``, ``failing``, ``not started`` (the stub still raises
its ``NotImplementedError``) or ``timed out``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, Iterable

from rlhf_book.textbook.catalog import CHAPTERS, Chapter, Exercise, get_chapter, get_exercise

PASSED, FAILING, NOT_STARTED, TIMED_OUT = "passed", "failing", "not started", "timed out"


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


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Interrupt the block after ``seconds`` with :class:`GradingTimeout`.

    Uses ``SIGALRM``, so it only works in the main thread on POSIX; elsewhere the block runs
    without a limit (the worker process of :func:`grade` still enforces one from outside).
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
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "rlhf_book/textbook" not in f.filename.replace(os.sep, "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {pathlib.Path(f.filename).name}:{f.lineno})"


def run_check(exercise: Exercise, fn: Callable | None, timeout: float | None = None,
              load_error: str = "") -> GradeResult:
    """Grade ``fn`` against the exercise's check; never raises (except KeyboardInterrupt)."""
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
    except NotImplementedError as err:
        own = str(err).startswith(f"Exercise {exercise.id} ")
        if own:
            result.status, result.message = NOT_STARTED, ""
        else:  # the function calls another unfinished exercise, or raises it itself
            result.message = f"{exercise.function} raised {_one_line(err)}"
    except AssertionError as err:  # the check's one-line verdict
        result.message = _one_line(err).removeprefix("Mismatch: ")
    except BaseException as err:  # anything the student's code raised, SystemExit included
        result.message = f"{exercise.function} raised {_one_line(err)}{_where_raised(err)}"
    result.seconds = time.perf_counter() - start
    return result


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
    """``({exercise id: function or None}, load error)`` for one chapter and implementation."""
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
    result = run_check(get_exercise(exercise_id), fn, timeout)
    if not quiet:
        print(result)
    return result


# ----------------------------------------------------------------------------------------------
# The grader: a worker process per chapter, watched from outside


def _worker(impl: str, exercises_dir: str | None, ids: list[str], timeout: float | None) -> None:
    """Grade ``ids`` and write one JSON line per event to the real stdout. Everything the
    graded code prints goes to stderr, so it cannot corrupt the protocol."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    exercises = [get_exercise(i) for i in ids]
    functions, error = load_functions(exercises[0].chapter, impl,
                                      pathlib.Path(exercises_dir) if exercises_dir else None)
    for exercise in exercises:
        channel.write(json.dumps({"start": exercise.id}) + "\n")
        result = run_check(exercise, functions[exercise.id], timeout, load_error=error)
        channel.write(json.dumps({"result": dataclasses.asdict(result)}) + "\n")
    channel.close()


def _read_lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def _grade_chapter(chapter: Chapter, impl: str, exercises_dir, timeout: float | None,
                   startup: float = 120.0) -> Iterable[GradeResult]:
    """Yield one result per exercise of ``chapter``, restarting the worker after a hang."""
    todo = [e.id for e in chapter.exercises]
    while todo:
        command = [sys.executable, "-m", "rlhf_book.textbook.grading", impl,
                   str(exercises_dir or ""), "" if timeout is None else str(timeout), *todo]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        current, deadline = None, time.monotonic() + startup
        while todo:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = "timeout"
            if line == "timeout" or line is None:  # hung, or the process died
                proc.kill()
                proc.wait()
                exercise = get_exercise(current or todo[0])
                if line == "timeout" and current:
                    limit = timeout if timeout is not None else exercise.timeout
                    yield GradeResult(exercise.id, exercise.title, TIMED_OUT, limit,
                                      f"{exercise.function}: timed out after {limit:g}s "
                                      "(the grader stopped it)", exercise.section)
                else:
                    how = ("did not start in time" if line == "timeout" else
                           f"exited with code {proc.returncode}")
                    yield GradeResult(exercise.id, exercise.title, FAILING, 0.0,
                                      f"the grading process {how} while grading "
                                      f"{exercise.function}", exercise.section)
                todo.remove(exercise.id)
                break
            event = json.loads(line)
            if "start" in event:
                current = event["start"]
                limit = timeout if timeout is not None else get_exercise(current).timeout
                deadline = time.monotonic() + limit + 30.0  # in-process alarm fires first
            else:
                result = GradeResult(**event["result"])
                todo.remove(result.id)
                current = None
                yield result
        else:
            proc.wait()


def grade(chapters: Iterable[Chapter | str] | None = None, impl: str = "exercises",
          exercises_dir=None, timeout: float | None = None,
          on_result: Callable[[GradeResult], None] | None = None) -> list[GradeResult]:
    """Grade every exercise of ``chapters`` (default: all) and return the results."""
    if impl not in ("reference", "exercises"):
        raise ValueError(f"impl must be 'reference' or 'exercises', got {impl!r}")
    selected = [get_chapter(c) if not isinstance(c, Chapter) else c for c in (chapters or CHAPTERS)]
    results = []
    for chapter in selected:
        if not chapter.exercises:
            continue
        for result in _grade_chapter(chapter, impl, exercises_dir, timeout):
            results.append(result)
            if on_result:
                on_result(result)
    return results


_COLOURS = {PASSED: "32", FAILING: "31", NOT_STARTED: "33", TIMED_OUT: "35"}


def format_row(result: GradeResult, colour: bool = False) -> str:
    status = f"{result.status:<12}"
    if colour:
        status = f"\033[{_COLOURS[result.status]}m{status}\033[0m"
    row = f"  {result.id:<6}{result.title[:46]:<48}{status}{result.seconds:>6.1f}s"
    return row + (f"\n        {result.hint}" if result.status in (FAILING, TIMED_OUT) else "")


def format_summary(results: list[GradeResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in _COLOURS}
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    return ", ".join(parts) + f" (of {len(results)} exercises)"


if __name__ == "__main__":  # the worker: python -m rlhf_book.textbook.grading IMPL DIR TIMEOUT IDS...
    _impl, _dir, _timeout, *_ids = sys.argv[1:]
    _worker(_impl, _dir or None, _ids, float(_timeout) if _timeout else None)
