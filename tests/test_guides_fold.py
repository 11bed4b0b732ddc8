"""The chapter guides never show an exercise's solution before the exercise section.

Inside a guide's code excerpts each solution region (``# BEGIN SOLUTION`` .. ``# END SOLUTION``)
is replaced by a ``# ... exercise N.k: your code here`` line; the solutions are folded, one
``<details>`` block per exercise, in a "Solutions" section at the end of the chapter's guide.
These tests read the solution text straight from the library files (through
``stubs.library_solution_regions``), not from the guide machinery, and look for it in the guides.
Each exercise's difficulty (one to three stars) is in the catalogue and in its guide's table.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import textwrap

import pytest

from rlhf_book.textbook import catalog, guides, stubs

ROOT = catalog.project_root()
SOLUTIONS_HEADING = "\n## Solutions\n"


def _regions() -> list[tuple[str, list[str]]]:
    """Every solution region of the library as ``(file, its lines without the markers)``."""
    found = []
    for rel, regions in stubs.library_solution_regions().items():
        lines = (ROOT / rel).read_text().splitlines()
        found += [(rel, lines[begin + 1:end]) for begin, end in regions]
    return found


def _lines_outside_regions() -> set[str]:
    """The stripped lines of the package's source that lie outside every solution region."""
    outside = set()
    regions = stubs.library_solution_regions()
    for path in sorted(catalog.PACKAGE_DIR.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        inside = {n for begin, end in regions.get(rel, []) for n in range(begin, end + 1)}
        outside |= {line.strip() for n, line in enumerate(path.read_text().splitlines())
                    if n not in inside}
    return outside


def _before_solutions(text: str) -> str:
    """A guide's text up to its Solutions section (all of it if there is none)."""
    return text.split(SOLUTIONS_HEADING, 1)[0]


def _guides() -> list[pathlib.Path]:
    return sorted((ROOT / "chapters").glob("ch*.md"))


def test_the_library_has_one_solution_region_per_exercise():
    assert len(_regions()) == len(catalog.all_exercises()) >= 38


def test_no_guide_shows_solution_code_before_its_solutions_section():
    # A line of a solution that appears nowhere else in the package (not a bare `return x`)
    # identifies that solution; none may stand in a guide before its Solutions section, and
    # neither may any whole region.
    outside = _lines_outside_regions()
    texts = {path.name: _before_solutions(path.read_text()) for path in _guides()}
    guide_lines = {name: {line.strip() for line in text.splitlines()}
                   for name, text in texts.items()}
    with_distinctive_lines = 0
    for rel, lines in _regions():
        distinctive = {line.strip() for line in lines
                       if line.strip() and not line.strip().startswith("#")} - outside
        with_distinctive_lines += bool(distinctive)
        whole = textwrap.dedent("\n".join(lines)).strip("\n")
        for name, text in texts.items():
            assert not distinctive & guide_lines[name], (
                f"{name} shows solution code from {rel} before its Solutions section: "
                f"{sorted(distinctive & guide_lines[name])}")
            assert whole not in textwrap.dedent(text), f"{name} shows a solution region of {rel}"
    # the check is not vacuous: nearly every solution has a line found nowhere else
    assert with_distinctive_lines >= len(_regions()) - 2


def test_excerpts_mark_where_each_solution_was():
    for chapter in catalog.CHAPTERS:
        text = _before_solutions(chapter.guide().read_text())
        for exercise in chapter.exercises:
            placeholder = (f"# ... exercise {exercise.id}: your code here "
                           f"(solution at the end of this guide)")
            assert text.count(placeholder) == 1, f"{chapter.guide().name}: {placeholder!r}"
    # chapter 6 quotes chapter 15's KL estimators: that placeholder points to chapter 15's guide
    ch06 = catalog.get_chapter("ch06").guide().read_text()
    assert ("# ... exercise 15.1: your code here (solution at the end of the chapter 15 guide)"
            in ch06)
    assert "exercise 15.1: your code here (solution at the end of this guide)" not in ch06


def test_every_exercise_has_exactly_one_folded_solution_after_its_exercise_section():
    texts = {path: path.read_text() for path in _guides()}
    regions = {}
    for rel, lines in _regions():
        regions.setdefault(rel, []).append(lines)
    for chapter in catalog.CHAPTERS:
        for exercise in chapter.exercises:
            summary = f"<summary>Solution {exercise.id} ({exercise.function})</summary>"
            counts = {path.name: text.count(summary) for path, text in texts.items()}
            assert sum(counts.values()) == 1 and counts[chapter.guide().name] == 1, counts
            text = texts[chapter.guide()]
            exercises_at = text.index("\n## Exercises\n")
            solutions_at = text.index(SOLUTIONS_HEADING)
            at = text.index(summary)
            assert exercises_at < solutions_at < at
            # the folded block: blank lines around the fence (GitHub and MyST need them)
            block = re.match(r"<summary>.*?</summary>\n\n```python\n(?P<code>.*?)\n```\n\n</details>",
                             text[at:], re.DOTALL)
            assert block, f"{chapter.guide().name}: solution {exercise.id} is not a folded block"
            assert text[:at].rstrip().endswith("<details>")
            # ...holding the real solution: one of the module's regions, line for line
            code = block["code"].splitlines()
            module_file = exercise.module.replace(".", "/") + ".py"
            assert code[0] == f"# {module_file}"
            assert any(_contains(code, [line.strip() for line in region if line.strip()])
                       for region in regions[module_file]), f"solution {exercise.id}"
            assert f"def {exercise.function}(" in block["code"]
            assert "BEGIN SOLUTION" not in block["code"] and "END SOLUTION" not in block["code"]


def _contains(code: list[str], wanted: list[str]) -> bool:
    """Whether ``wanted`` (stripped lines) appears in ``code`` as a contiguous run."""
    stripped = [line.strip() for line in code if line.strip()]
    return any(stripped[k:k + len(wanted)] == wanted for k in range(len(stripped)))


def test_the_solutions_section_is_the_last_of_each_guide():
    for chapter in catalog.CHAPTERS:
        text = chapter.guide().read_text()
        assert text.count(SOLUTIONS_HEADING) == 1, chapter.guide().name
        assert "\n## " not in text.split(SOLUTIONS_HEADING, 1)[1], chapter.guide().name


def test_stale_catches_a_drifted_solution_block_and_sync_restores_it(tmp_path):
    (tmp_path / "chapters").mkdir()
    original = catalog.get_chapter("ch06").guide()
    guide = tmp_path / "chapters" / original.name
    shutil.copy(original, guide)
    guides.sync(tmp_path)  # as the source is now (the committed guide may lag behind it)
    assert guides.stale(tmp_path) == []
    good = guide.read_text()
    head, tail = good.split(SOLUTIONS_HEADING, 1)
    assert "ddof=1" in tail
    guide.write_text(head + SOLUTIONS_HEADING + tail.replace("ddof=1", "ddof=0"))
    assert guides.stale(tmp_path) == [f"{original.name}: solutions"]
    assert guides.sync(tmp_path) == [guide] and guide.read_text() == good
    # a guide without the block is stale too, and sync appends the section at the end
    guide.write_text(head.rstrip("\n") + "\n")
    assert guides.stale(tmp_path) == [f"{original.name}: solutions"]
    guides.sync(tmp_path)
    assert guide.read_text() == good and guides.stale(tmp_path) == []


def test_stale_catches_a_solution_printed_in_an_excerpt(tmp_path):
    # the guide as it was before solutions were folded: the excerpt shows the solution lines
    (tmp_path / "chapters").mkdir()
    original = catalog.get_chapter("ch06").guide()
    guide = tmp_path / "chapters" / original.name
    placeholder = "    # ... exercise 6.3: your code here (solution at the end of this guide)\n"
    leaked = "    std = jnp.std(rewards, axis=1, keepdims=True, ddof=1)\n"
    shutil.copy(original, guide)
    guides.sync(tmp_path)
    assert guides.stale(tmp_path) == [] and placeholder in guide.read_text()
    guide.write_text(guide.read_text().replace(placeholder, leaked, 1))
    assert guides.stale(tmp_path) == [f"{original.name}: grpo-advantages"]


def test_solution_regions_must_sit_inside_an_excerpt_and_belong_to_an_exercise(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    region = "    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n"
    (package / "a.py").write_text("# [guide:x]\ny = 1\n# [/guide]\ndef f():\n" + region)
    assert guides.source_excerpts(package)["x"].code == "y = 1"  # a region outside excerpts...
    (package / "a.py").write_text("# [guide:x]\ndef f():\n" + region + "# [/guide]\n")
    with pytest.raises(ValueError, match="no exercise"):  # ...but this one no exercise claims
        guides.source_excerpts(package)
    (package / "a.py").write_text("def f():\n    # BEGIN SOLUTION\n    # [guide:x]\n"
                                  "    return 1\n    # END SOLUTION\n    # [/guide]\n")
    with pytest.raises(ValueError, match="inside the solution region"):
        guides.source_excerpts(package)


# ----------------------------------------------------------------------------------------------
# Difficulty


def test_every_exercise_has_one_to_three_stars():
    for exercise in catalog.all_exercises().values():
        assert exercise.difficulty in (1, 2, 3), exercise.id
        assert exercise.stars == "\u2605" * exercise.difficulty
    levels = {e.difficulty for e in catalog.all_exercises().values()}
    assert levels == {1, 2, 3}


def test_difficulty_follows_the_solution():
    # judged from the solution: a scan is never easy, a one-line solution never the hardest
    by_function = {(e.module.replace(".", "/") + ".py", e.function): e
                   for e in catalog.all_exercises().values()}
    for rel, regions in stubs.library_solution_regions().items():
        lines = (ROOT / rel).read_text().splitlines()
        for begin, end in regions:
            # the region's function: the last top-level `def` above the region
            name = next(re.match(r"def (\w+)", line)[1] for line in reversed(lines[:begin])
                        if line.startswith("def "))
            exercise = by_function[(rel, name)]
            code = [line for line in lines[begin + 1:end]
                    if line.strip() and not line.strip().startswith("#")]
            if any("scan(" in line for line in code):
                assert exercise.difficulty == 3, exercise.id
            if len(code) == 1:
                assert exercise.difficulty < 3, exercise.id


def test_a_difficulty_out_of_range_is_refused():
    exercise = catalog.Exercise("9.9", "t", "m:f", "book §1", difficulty=2)
    assert exercise.stars == "\u2605\u2605"
    assert catalog.Exercise("9.9", "t", "m:f", "book §1").stars == ""  # unrated
    for bad in (0, 4, 2.5, True, "2"):
        with pytest.raises(ValueError, match="difficulty"):
            catalog.Exercise("9.9", "t", "m:f", "book §1", difficulty=bad)


def test_each_guide_shows_the_stars_of_its_exercises():
    for chapter in catalog.CHAPTERS:
        text = chapter.guide().read_text()
        section = text[text.index("\n## Exercises\n"):text.index(SOLUTIONS_HEADING)]
        header = next(line for line in section.splitlines() if line.startswith("|"))
        assert [c.strip().lower() for c in header.split("|")][1:3] == ["id", "difficulty"]
        for exercise in chapter.exercises:
            row = f"| {exercise.id} | {exercise.stars} |"
            assert section.count(row) == 1, f"{chapter.guide().name}: {row}"
        assert "\u2605 a formula in a line or two" in section
