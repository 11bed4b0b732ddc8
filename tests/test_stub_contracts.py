"""Stub docstrings state the contract, not the implementation.

An exercise function's docstring is split by its first paragraph that starts with ``How:``
(:func:`rlhf_book.textbook.stubs.split_docstring`): the stub keeps the part before it, the
contract (what is computed, the book section or equation or the paper, the shapes), and never
the part from it on (the implementation). These tests hold every exercise of the catalogue to
that rule, and :func:`split_docstring` to its definition on hand-written docstrings.
"""

from __future__ import annotations

import ast
import re

import pytest

from rlhf_book.textbook import catalog, stubs

EXERCISES = list(catalog.all_exercises().values())
IDS = [e.id for e in EXERCISES]

# A citation a reader can open: a book section (§6.1.6) or equation (eq. 57, eqs. 47, 48),
# the book's appendix, or a paper by author and year (Schulman 2020, Meng et al. 2024).
CITATION = re.compile(r"§\d|\beqs?\. \d|\bApp(?:endix|\.) [A-Z]|\b[A-Z][A-Za-z-]+ (?:et al\. )?(?:19|20)\d\d\b")
# A shape: brackets holding at least one axis name or "...", e.g. [N, T], [t, t], [..., V];
# a numeric range such as [0, 1] is not a shape.
SHAPE = re.compile(r"\[(?=[^\]\n]*(?:[A-Za-z]|\.\.\.))[^\]\n]*\]")


def _stub_docstrings() -> dict[str, str]:
    """Every exercise's docstring as the generated stub files hold it, by exercise id."""
    docs = {}
    for chapter in catalog.CHAPTERS:
        if not chapter.exercises:
            continue
        tree = ast.parse(stubs.stub_source(chapter))
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        for exercise in chapter.exercises:
            docs[exercise.id] = ast.get_docstring(functions[exercise.function], clean=False)
    return docs


STUB_DOCS = _stub_docstrings()


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_stub_docstring_is_the_contract_part_of_the_library_docstring(exercise):
    library = exercise.reference().__doc__
    contract, how = stubs.split_docstring(library)
    assert STUB_DOCS[exercise.id] == contract
    # the two parts are the library docstring, cut once: its beginning and its end
    assert library.startswith(contract.rstrip(" \t")) and library.endswith(how)
    assert len(contract.strip()) + len(how) < len(library)
    assert not re.search(r"(?m)^\s*How:", contract)


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_stub_docstring_holds_no_marker_and_no_implementation_text(exercise):
    stub_doc = STUB_DOCS[exercise.id]
    assert not re.search(r"(?m)^\s*How:", stub_doc)
    _, how = stubs.split_docstring(exercise.reference().__doc__)
    # every sentence-sized piece of the "How:" part is absent from the stub
    for line in how.removeprefix(stubs.HOW).splitlines():
        if len(line.strip()) >= 25:
            assert line.strip() not in stub_doc, f"{exercise.id}: {line.strip()!r} leaked"


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_every_contract_cites_the_book_or_a_paper_and_gives_shapes(exercise):
    contract = STUB_DOCS[exercise.id]
    assert CITATION.search(contract), f"{exercise.id}: no book section, equation or paper"
    assert SHAPE.search(contract), f"{exercise.id}: no shape such as [N, T]"


def test_most_exercises_move_an_implementation_recipe_out_of_the_stub():
    # the point of the split: the recipes (computed as..., clamp before exp, lax.scan, ...)
    # live below the marker; a handful of exercises whose contract is all there is keep none
    with_how = [e.id for e in EXERCISES if stubs.split_docstring(e.reference().__doc__)[1]]
    assert len(with_how) >= 30, with_how
    stub_text = "\n".join(STUB_DOCS.values())
    for recipe in ("lax.scan", "expm1", "softplus", "jnp.where", "log1mexp", "cumlogsumexp",
                   "Computed as", "einsum"):
        assert recipe not in stub_text, recipe


# ----------------------------------------------------------------------------------------------
# split_docstring on hand-written docstrings


def test_split_docstring_cuts_before_the_first_how_paragraph():
    doc = "Summary, eq. 1.\n\n    Shapes: ``x [N]``.\n\n    How: a scan.\n    More how.\n    "
    contract, how = stubs.split_docstring(doc)
    assert contract == "Summary, eq. 1.\n\n    Shapes: ``x [N]``.\n    "
    assert how == "How: a scan.\n    More how.\n    "


def test_split_docstring_without_marker_is_all_contract():
    doc = "Summary.\n\n    Nothing about how. Somehow: not a marker.\n    "
    assert stubs.split_docstring(doc) == (doc, "")


def test_split_docstring_needs_a_paragraph_start():
    # "How:" inside a paragraph, or without the blank line before it, is text, not the marker
    doc = "Summary.\n    How: continues the first paragraph.\n    "
    assert stubs.split_docstring(doc) == (doc, "")
    doc = "Summary.\n\n    Howling: not the marker either.\n    "
    assert stubs.split_docstring(doc) == (doc, "")


def test_split_docstring_refuses_a_non_string():
    with pytest.raises(ValueError, match="doc"):
        stubs.split_docstring(None)


def test_a_stub_of_a_function_with_a_how_paragraph_keeps_only_the_contract(tmp_path, monkeypatch):
    # a tiny library module with one exercise, turned into a stub by the real generator
    package = tmp_path / "howpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(
        'import jax.numpy as jnp\n\n\n'
        'def double(x):\n'
        '    """Twice ``x [N]`` (book §1.1).\n\n'
        '    How: add it to itself.\n'
        '    """\n'
        '    # BEGIN SOLUTION\n'
        '    return x + x\n'
        '    # END SOLUTION\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(stubs, "PACKAGE_DIR", tmp_path / "rlhf_book")
    exercise = catalog.Exercise("99.1", "doubling", "howpkg.mod:double", "book §1.1")
    stub = stubs.stub_function(exercise)
    assert '"""Twice ``x [N]`` (book §1.1).\n    """' in stub
    assert "add it to itself" not in stub and "x + x" not in stub
    namespace = {}
    exec(stub, namespace)
    assert namespace["double"].__doc__ == "Twice ``x [N]`` (book §1.1).\n    "
    with pytest.raises(NotImplementedError, match="Exercise 99.1 "):
        namespace["double"](1)
