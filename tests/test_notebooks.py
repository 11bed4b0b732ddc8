"""Every notebook runs top to bottom on a fresh kernel, and imports the library instead of
copying it."""

import ast
import importlib
import pathlib
import pkgutil

import nbformat
import pytest

import rlhf_book
from rlhf_book.textbook import catalog, notebooks

NOTEBOOKS = notebooks.notebook_paths()


def library_names() -> set[str]:
    """Names of the functions and classes defined anywhere in the ``rlhf_book`` package."""
    names = set()
    for info in pkgutil.walk_packages(rlhf_book.__path__, "rlhf_book."):
        module = importlib.import_module(info.name)
        tree = ast.parse(pathlib.Path(module.__file__).read_text())
        names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return {n for n in names if not n.startswith("_")}


def test_every_chapter_has_a_notebook_and_every_notebook_a_chapter():
    # a chapter's notebooks are its companions (chapter 0's JAX primer), then its main one
    assert NOTEBOOKS, "no notebooks found"
    expected = [p.name for c in catalog.CHAPTERS for p in c.notebooks()]
    assert len(expected) == len(set(expected)), "a notebook belongs to two chapters"
    assert {p.name for p in NOTEBOOKS} == set(expected)


def test_chapter_notebooks_lists_companions_first():
    chapter = catalog.get_chapter("ch00")
    assert [p.name for p in chapter.notebooks()] == ["ch00_jax_primer.ipynb", "ch00_mini_gpt.ipynb",
                                                     "ch00_scaling_out.ipynb"]
    assert chapter.notebooks()[1] == chapter.notebook()
    assert catalog.get_chapter("ch06").notebooks() == (catalog.get_chapter("ch06").notebook(),)
    # companions sort before the main notebook, so a run of all notebooks reads them first
    assert sorted(chapter.notebooks()) == list(chapter.notebooks())
    # sequels come after it, and sort after it too
    ch07 = catalog.get_chapter("ch07")
    assert [p.name for p in ch07.notebooks()] == ["ch07_reasoning.ipynb",
                                                  "ch07_reasoning_length.ipynb"]
    assert sorted(ch07.notebooks()) == list(ch07.notebooks())


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
def test_notebook_is_committed_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} has unexecuted cells"
    assert "seconds" in nb.metadata.get("rlhf_book", {}), \
        f"{path.name} was not saved by `rlhf-book notebooks` (no recorded run time)"


@pytest.mark.slow  # each notebook trains its models: minutes, not seconds
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
# one xdist worker runs them in file order (tests/conftest.py, GROUPS): ch00 and ch04 store the
# models later notebooks load
def test_notebook_executes(path, record_property):
    seconds = notebooks.execute(path)  # raises CellExecutionError with the failing cell
    record_property("notebook_seconds", round(seconds, 1))
    print(f"{path.name}: executed in {seconds:.1f}s")
