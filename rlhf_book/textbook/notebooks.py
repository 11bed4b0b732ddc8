"""Run the chapter notebooks top to bottom on a fresh kernel (nbclient).

The tests execute every notebook this way and fail on any error; ``rlhf-book notebooks``
does the same and writes the outputs back, so the committed notebooks show their results on
GitHub. The run time is recorded in the notebook's metadata (``rlhf_book.seconds``), where
the README's chapter table reads it from.
"""

from __future__ import annotations

import os
import pathlib
import re
import time

from rlhf_book.textbook.catalog import CHAPTERS, project_root


def notebook_paths(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    return sorted(((root or project_root()) / "notebooks").glob("*.ipynb"))


def execute(path: pathlib.Path, *, write: bool = False, timeout: int = 600) -> float:
    """Execute ``path`` in a fresh ``python3`` kernel; returns the run time in seconds.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the failing cell and traceback)
    when a cell fails. With ``write``, the executed notebook replaces ``path`` atomically.
    The kernel imports the package from this checkout, installed or not.
    """
    import nbformat
    from nbclient import NotebookClient

    path = pathlib.Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(project_root()), saved) if p)  # the kernel inherits the environment
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    seconds = time.perf_counter() - start
    if write:
        nb.metadata["rlhf_book"] = {"seconds": round(seconds, 1)}
        tmp = path.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        tmp.replace(path)
    return seconds


def recorded_seconds(path: pathlib.Path) -> float | None:
    """The run time stored by the last ``rlhf-book notebooks`` run, if any."""
    import nbformat

    return nbformat.read(path, as_version=4).metadata.get("rlhf_book", {}).get("seconds")


# ----------------------------------------------------------------------------------------------
# The "Your turn" section that ends every notebook that sets exercises (all but a tutorial such
# as chapter 0's scaling out): its table of exercises follows the catalogue

TABLE_HEADER = "| id | exercise | function | difficulty |"


def your_turn_table(exercises) -> str:
    """The markdown table of ``exercises`` a notebook's "Your turn" section shows."""
    rows = [TABLE_HEADER, "|----|----------|----------|------------|"]
    rows += [f"| {e.id} | {e.title} | `{e.function}` | {e.stars} |" for e in exercises]
    return "\n".join(rows)


NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve")

# "Chapter 6's eight exercises are in ...": the count the sync keeps true
_COUNT = re.compile(r"^((?:Chapter \d+|This notebook)'s )(\w+)( exercises)", re.M)


def _synced_your_turn(source: str, exercises) -> str:
    """``source`` (a "Your turn" cell) with its exercise table rewritten from ``exercises``,
    and the count in its opening sentence ("Chapter 6's eight exercises are ...")."""
    n = len(exercises)
    source = _COUNT.sub(lambda m: m[1] + (NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n))
                        + m[3], source, count=1)
    lines = source.split("\n")
    if TABLE_HEADER not in lines:
        raise ValueError(f"the 'Your turn' cell has no exercise table (a line {TABLE_HEADER!r})")
    start = lines.index(TABLE_HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + [your_turn_table(exercises)] + lines[end:])


def sync_your_turn(path: pathlib.Path, exercises, *, write: bool = True) -> bool:
    """Rewrite the exercise table of the "Your turn" cell of the notebook at ``path`` from
    ``exercises`` (the catalogue's); returns whether it changed. Only that markdown cell
    changes, so no re-execution is needed. With ``write=False`` only reports."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "Your turn" in cell.source.split("\n")[0]:
            new = _synced_your_turn(cell.source, exercises)
            if new == cell.source:
                return False
            if write:
                cell.source = new
                tmp = path.with_suffix(".ipynb.tmp")
                nbformat.write(nb, tmp)
                tmp.replace(path)
            return True
    raise ValueError(f"{path.name} has no 'Your turn' section")


def sync_all_your_turn(*, write: bool = True, paths=None) -> list[pathlib.Path]:
    """:func:`sync_your_turn` for every notebook of every chapter (or ``paths``, a dict from a
    chapter to its notebooks), each with the exercises it sets
    (:meth:`~rlhf_book.textbook.catalog.Chapter.exercises_of`); returns the notebooks whose
    table changed (or, with ``write=False``, would change). A notebook that sets no exercise
    (a tutorial such as chapter 0's scaling out) has no "Your turn" section and is skipped."""
    paths = paths or {chapter: chapter.notebooks() for chapter in CHAPTERS}
    return [path for chapter, notebooks in paths.items() for path in notebooks
            if path.exists() and chapter.exercises_of(path)
            and sync_your_turn(path, chapter.exercises_of(path), write=write)]
