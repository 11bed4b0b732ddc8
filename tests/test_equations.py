"""The equation index (``chapters/EQUATIONS.md``): the book's equation table, the citation
parser, and that the committed index is what the source generates."""

import json
import re

from rlhf_book.textbook import equations
from rlhf_book.textbook.equations import BOOK_EQUATIONS, MODULE, Site


def test_committed_index_is_current():
    assert equations.index_is_current(), \
        "chapters/EQUATIONS.md is stale: run `rlhf-book chapters --sync` and commit it"


# ----------------------------------------------------------------------------------------------
# The book's equations


def test_book_equations_are_numbered_1_to_146_without_gaps_or_repeats():
    numbers = [eq.number for eq in BOOK_EQUATIONS]
    assert len(numbers) == len(set(numbers)), "an equation number appears twice"
    # The book's numbering has no gaps: chapters 3, 5, 6, 8, 9, 15 and Appendix A number their
    # equations consecutively across the whole book.
    assert numbers == list(range(1, 147))


def test_book_equations_are_in_book_order_and_name_their_chapter_section():
    chapter_order = list(equations.CHAPTER_TITLES)
    positions = [chapter_order.index(eq.chapter) for eq in BOOK_EQUATIONS]
    assert positions == sorted(positions), "chapters out of book order"
    for eq in BOOK_EQUATIONS:
        assert re.fullmatch(rf"§{eq.chapter}(\.\d+)*", eq.section), eq
        assert eq.name and eq.name == eq.name.strip(), eq


def test_every_equation_the_package_cites_is_a_book_equation():
    known = {eq.number for eq in BOOK_EQUATIONS}
    unknown = {n: sites for n, sites in equations.scan_package().citations.items()
               if n not in known}
    assert not unknown, "docstrings cite equations the book does not have: " + "; ".join(
        f"eq. {n} in " + ", ".join(f"{s.path}: {s.qualname}" for s in sites)
        for n, sites in sorted(unknown.items()))


def test_range_citations_are_reported_not_refused():
    """The project cites each equation individually; ranges are listed in the index's footer
    for the chapter owners to split, and printed here, but they do not fail the suite."""
    ranges = equations.scan_package().ranges
    for r in ranges:
        print(f"cited as a range: {r.site.path}: {r.site.qualname}: {r.text}")
    text = equations.render_index()
    assert "## Cited as a range" in text
    assert all(f"`{r.site.path}: {r.site.qualname}`: {r.text}" in text for r in ranges)


# ----------------------------------------------------------------------------------------------
# The citation parser


def numbers(text):
    return [c.numbers for c in equations.parse_citations(text)]


def test_parser_reads_single_citations():
    assert numbers("the advantage (book §6.1.6, eq. 57).") == [(57,)]
    assert numbers("Eq. 22's binary loss") == [(22,)]
    assert numbers("as in eq. (123), then") == [(123,)]


def test_parser_reads_lists_and_expands_ranges():
    assert numbers("eqs. 5, 6 and 7") == [(5, 6, 7)]
    assert numbers("eqs. 5, 6, and 7") == [(5, 6, 7)]
    assert numbers("eqs. 5-7") == [(5, 6, 7)]
    assert numbers("eqs. 5–7") == [(5, 6, 7)]  # an en dash
    assert numbers("eqs. (121)-(123)") == [(121, 122, 123)]
    assert numbers("eqs. 55-56 and 74") == [(55, 56, 74)]
    assert numbers("eqs. 47-49, 52, 57-58") == [(47, 48, 49, 52, 57, 58)]
    [citation] = equations.parse_citations("(eqs. 47-49, 52, 57-58)")
    assert citation.ranges == ("47-49", "57-58") and citation.text == "eqs. 47-49, 52, 57-58"


def test_parser_ignores_what_is_not_a_book_equation():
    # A singular "eq." takes no list: the number after the comma is not an equation.
    assert numbers("report 95 for eq. 3, 8 for always-on") == [(3,)]
    assert numbers("a paper's equation (Yu et al. 2025, eq. 13)") == []
    assert numbers("book eq. 137; Ouyang et al. 2022, eq. 2") == [(137,)]
    assert numbers("freq. 5, seq. 6, eq. 1.5, the equation") == []


SYNTHETIC_MODULE = '''"""A toy chapter (book §9.9): eqs. 5-6."""


def toy_advantage(x):
    """The toy advantage (book §9.9, eq. 5; also eqs. 6 and 7)."""
    def inner():
        """eq. 8"""
    return x


class ToyConfig:
    """Settings (eq. 9)."""

    def method(self):
        """Eqs. (10)-(11)."""
'''


def test_scanner_maps_docstring_citations_to_qualified_names(tmp_path):
    package = tmp_path / "toy_package"
    (package / "textbook").mkdir(parents=True)
    (package / "toy.py").write_text(SYNTHETIC_MODULE)
    (package / "textbook" / "machinery.py").write_text('"""Cites eq. 99, implements nothing."""')
    scan = equations.scan_package(package)

    def site(qualname):
        return [Site("toy_package/toy.py", qualname)]

    assert scan.citations == {
        5: site(MODULE) + site("toy_advantage"), 6: site(MODULE) + site("toy_advantage"),
        7: site("toy_advantage"), 8: site("toy_advantage.inner"), 9: site("ToyConfig"),
        10: site("ToyConfig.method"), 11: site("ToyConfig.method"),
    }
    assert [(r.site.qualname, r.text) for r in scan.ranges] == [
        (MODULE, "eqs. 5-6"), ("ToyConfig.method", "Eqs. (10)-(11)")]


# ----------------------------------------------------------------------------------------------
# Tests, notebooks and the rendered index


def test_tests_are_found_by_whole_word():
    # (names of no real function, so that this file is not listed in the index)
    tests = {"tests/a.py": "from m import toy_advantage\n",
             "tests/b.py": "losses.toy_advantage(r)\n",
             "tests/c.py": "toy_advantage_reference(r)\n"}
    assert equations.tests_naming("toy_advantage", tests) == ["tests/a.py", "tests/b.py"]


def test_notebook_sections_follow_the_markdown_headings(tmp_path):
    notebook = {"cells": [
        {"cell_type": "markdown", "source": ["# Chapter 9: a toy\n", "Covers eq. 5."]},
        {"cell_type": "markdown", "source": ["## 1. Selection (book §9.1, eqs. 6-7)"]},
        {"cell_type": "code", "source": ["# a comment, not a heading\n", "toy_advantage(1)"]},
        {"cell_type": "markdown",
         "source": ["## 2. Next\n", "```python\n", "# no heading\n", "```"]},
    ]}
    path = tmp_path / "ch09_toy.ipynb"
    path.write_text(json.dumps(notebook))
    sections = equations.notebook_sections(path, "notebooks/ch09_toy.ipynb")
    assert [s.heading for s in sections] == ["Chapter 9: a toy", "§1 Selection", "§2 Next"]
    assert "toy_advantage(1)" in sections[1].text
    assert equations.cited_numbers(sections[1].text) == {6, 7}
    assert "# no heading" in sections[2].text


def test_index_lists_every_equation_and_cites_only_what_readers_can_open():
    text = equations.render_index()
    rows = re.findall(r"^\| (\d+) \| §", text, flags=re.MULTILINE)
    assert [int(n) for n in rows] == [eq.number for eq in BOOK_EQUATIONS]
    assert re.search(rf"\*\*{len(BOOK_EQUATIONS)} equations, \d+ implemented\*\*", text)
    # Design §4b: no seed file names, line numbers, inventory codes or paths into shared/.
    forbidden = [r"reference notes", r"shared/", r"\b\d{3}_[0-9a-f]{16}\b", r"\bseeds?[ /]\d",
                 r"\bL\d{2,5}\b", r"\b[WETCX]\d{1,2}(\.\d+)?\b"]
    for pattern in forbidden:
        assert not re.search(pattern, text), f"the index contains {pattern!r}"
