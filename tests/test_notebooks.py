"""Every notebook runs top to bottom on a fresh kernel, and imports the library instead of
copying it."""

import ast
import importlib
import os
import pathlib
import pkgutil
import time

import nbformat
import pytest
from nbclient import NotebookClient

import rlhf_book

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def library_names() -> set[str]:
    """Names of the functions and classes defined anywhere in the ``rlhf_book`` package."""
    names = set()
    for info in pkgutil.walk_packages(rlhf_book.__path__, "rlhf_book."):
        module = importlib.import_module(info.name)
        tree = ast.parse(pathlib.Path(module.__file__).read_text())
        names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return {n for n in names if not n.startswith("_")}


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_does_not_redefine_library_code(path):
    nb = nbformat.read(path, as_version=4)
    defined = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            source = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
            defined |= {n.name for n in ast.walk(ast.parse(source))
                        if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    copied = defined & library_names()
    assert not copied, f"{path.name} redefines library code instead of importing it: {sorted(copied)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, record_property):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_path) if p)
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
    seconds = time.perf_counter() - start
    record_property("seconds", round(seconds, 1))
    print(f"{path.name}: executed in {seconds:.1f}s")
