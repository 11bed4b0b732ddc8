"""The learner's own exercise file, imported from anywhere (a notebook included).

A notebook runs with ``notebooks/`` as its working folder, so ``from exercises import ...``
fails there: the repository root is not on ``sys.path``. And once imported, a module is cached,
so an edit to the file would not be seen without ``importlib.reload``. :func:`my_exercises`
does both jobs: it finds ``exercises/chNN_*.py`` by path and imports it afresh on every call::

    from rlhf_book.textbook import check, my_exercises
    mine = my_exercises("ch06")           # your exercises/ch06_policy_gradients.py, as saved now
    check("6.1", mine.rloo_advantages)
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pathlib
import sys
import types

from rlhf_book.textbook.catalog import get_chapter, project_root


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles the file from its source on every import, never from ``__pycache__``.

    A cached ``.pyc`` is trusted when the source's modification time (in whole seconds) and
    size match; an edit saved within the same second that keeps the file's size (``0.5`` made
    ``0.7``) would then run the old code. Reading the source each time rules that out.
    """

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def exercises_file(chapter: str | int, exercises_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """The path of a chapter's exercise file, ``<exercises_dir>/chNN_<slug>.py``.

    ``chapter`` is a number (``6``), a short name (``"ch06"``) or the full key
    (``"ch06_policy_gradients"``); an unknown chapter raises a ``ValueError`` that lists the
    chapters. ``exercises_dir`` defaults to the checkout's ``exercises/`` folder.
    """
    found = get_chapter(chapter)
    if exercises_dir is None:
        folder = project_root() / "exercises"
    elif isinstance(exercises_dir, (str, pathlib.Path)):
        folder = pathlib.Path(exercises_dir)
    else:
        raise ValueError(f"exercises_dir must be a path or None, got {exercises_dir!r}")
    return folder / f"{found.key}.py"


def my_exercises(chapter: str | int, exercises_dir: str | pathlib.Path | None = None) -> types.ModuleType:
    """Import your ``exercises/chNN_*.py`` as it is saved now, and return the module.

    Every call reads the file again, so after editing it you re-run the cell and get your
    new code (no ``importlib.reload``, no ``sys.path`` change, from any working folder).
    ``chapter`` is ``6``, ``"ch06"`` or ``"ch06_policy_gradients"``; ``exercises_dir``
    defaults to the repository's ``exercises/`` folder.

    Raises ``ValueError`` for an unknown chapter, ``FileNotFoundError`` naming the path when
    the file is missing (``rlhf-book exercises`` writes the stubs), and whatever importing
    your file raises (a ``SyntaxError`` points at your line).

    The module is registered in ``sys.modules`` under the name ``rlhf-book grade`` uses,
    ``rlhf_book_exercises_chNN_<slug>``, so that :func:`~rlhf_book.textbook.check` can send
    your function to its worker process.
    """
    path = exercises_file(chapter, exercises_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run `rlhf-book exercises` to write the stubs, or pass "
            "exercises_dir= the folder that holds your chNN_*.py files")
    name = f"rlhf_book_exercises_{path.stem}"
    loader = _SourceOnlyLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses and cloudpickle look a module up by its name
    try:
        loader.exec_module(module)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    return module
