"""Run the chapter notebooks top to bottom on a fresh kernel (nbclient).

The tests execute every notebook this way and fail on any error; ``rlhf-book notebooks``
does the same and writes the outputs back, so the committed notebooks show their results on
GitHub. The run time is recorded in the notebook's metadata (``rlhf_book.seconds``), where
the README's chapter table reads it from.
"""

from __future__ import annotations

import os
import pathlib
import time

from rlhf_book.textbook.catalog import project_root


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
