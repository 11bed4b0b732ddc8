"""The learner's own exercise file from a notebook: ``my_exercises`` and the "your turn" cells."""

import ast
import os
import pathlib
import pkgutil
import re
import sys

import nbformat
import pytest

import rlhf_book
from rlhf_book.textbook import catalog, check, my_exercises, notebooks
from rlhf_book.textbook.grading import NOT_STARTED, PASSED

CH06 = catalog.get_chapter("ch06")


def write(path: pathlib.Path, text: str) -> None:
    path.write_text(text)


def test_imports_the_file_from_a_given_folder_by_number_short_name_or_key(tmp_path):
    write(tmp_path / f"{CH06.key}.py", "ANSWER = 42\n")
    for name in (6, "6", "ch06", CH06.key):
        assert my_exercises(name, exercises_dir=tmp_path).ANSWER == 42
    assert my_exercises("ch06", exercises_dir=str(tmp_path)).__file__ == str(tmp_path / f"{CH06.key}.py")


def test_an_edit_is_picked_up_by_the_next_call_even_in_the_same_second(tmp_path, monkeypatch):
    # same size, same modification time: a cached .pyc would pass for fresh (Python compares
    # the two), so this also tests that the file is compiled from its source every time
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as on a learner's machine
    path = tmp_path / f"{CH06.key}.py"
    write(path, "def f():\n    return 0.5\n")
    first = my_exercises("ch06", exercises_dir=tmp_path)
    assert first.f() == 0.5
    stat = path.stat()
    write(path, "def f():\n    return 0.7\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same modification time
    second = my_exercises("ch06", exercises_dir=tmp_path)
    assert second.f() == 0.7
    assert first.f() == 0.5  # the old module object is left as it was


def test_works_from_any_working_folder(tmp_path, monkeypatch):
    write(tmp_path / f"{CH06.key}.py", "X = 'mine'\n")
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert my_exercises("ch06", exercises_dir=tmp_path).X == "mine"


def test_default_folder_is_the_repository_exercises():
    module = my_exercises("ch00")
    assert pathlib.Path(module.__file__) == catalog.project_root() / "exercises" / "ch00_mini_gpt.py"
    assert callable(module.causal_mask)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / f"{CH06.key}.py").replace("\\", "\\\\")):
        my_exercises("ch06", exercises_dir=tmp_path)


@pytest.mark.parametrize("bad", ["ch02", 99, "policy_gradients", ""])
def test_unknown_chapter_is_a_value_error_naming_it(bad, tmp_path):
    with pytest.raises(ValueError, match="chapter must be one of"):
        my_exercises(bad, exercises_dir=tmp_path)


def test_bad_exercises_dir_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="exercises_dir"):
        my_exercises("ch06", exercises_dir=3)


def test_a_broken_file_raises_its_error_and_leaves_no_half_module(tmp_path):
    path = tmp_path / f"{CH06.key}.py"
    write(path, "def f(:\n")
    with pytest.raises(SyntaxError):
        my_exercises("ch06", exercises_dir=tmp_path)
    write(path, "raise RuntimeError('boom')\n")
    with pytest.raises(RuntimeError, match="boom"):
        my_exercises("ch06", exercises_dir=tmp_path)
    assert f"rlhf_book_exercises_{CH06.key}" not in sys.modules or \
        getattr(sys.modules[f"rlhf_book_exercises_{CH06.key}"], "__file__", None) != str(path)


def test_check_grades_a_function_of_the_loaded_file_in_its_worker(tmp_path):
    # 6.1, the RLOO advantage, written here from eq. 48: the mean reward of the other K - 1
    write(tmp_path / f"{CH06.key}.py", (
        "import jax.numpy as jnp\n\n"
        "def rloo_advantages(rewards):\n"
        "    rewards = jnp.asarray(rewards)\n"
        "    k = rewards.shape[-1]\n"
        "    others = (rewards.sum(-1, keepdims=True) - rewards) / (k - 1)\n"
        "    return rewards - others\n\n"
        "def grpo_advantages(*args, **kwargs):\n"
        "    raise NotImplementedError('Exercise 6.3 is not done yet')\n"))
    mine = my_exercises("ch06", exercises_dir=tmp_path)
    result = check("6.1", mine.rloo_advantages, quiet=True)
    assert result.status == PASSED, str(result)
    assert "could not be sent to a worker" not in (result.note or "")


def test_the_committed_stub_reports_not_started():
    result = check("0.1", my_exercises("ch00").causal_mask, quiet=True)
    assert result.status == NOT_STARTED, str(result)


# ---------------------------------------------------------------------------------------------
# The "your turn" section that ends every notebook

def your_turn(path: pathlib.Path):
    nb = nbformat.read(path, as_version=4)
    index = next((i for i, c in enumerate(nb.cells)
                  if c.cell_type == "markdown" and "Your turn" in c.source.splitlines()[0]), None)
    assert index is not None, f"{path.name} has no 'Your turn' heading"
    return nb, index


def own_exercises(chapter: catalog.Chapter, path: pathlib.Path) -> list[catalog.Exercise]:
    return list(chapter.exercises_of(path))


ALL_NOTEBOOKS = [(chapter, path) for chapter in catalog.CHAPTERS for path in chapter.notebooks()]
# The notebooks with exercises; the others are tutorials (chapter 0's scaling out)
NOTEBOOKS = [(chapter, path) for chapter, path in ALL_NOTEBOOKS if own_exercises(chapter, path)]
TUTORIALS = [(chapter, path) for chapter, path in ALL_NOTEBOOKS if not own_exercises(chapter, path)]


def _package_modules() -> set[str]:
    return {info.name.rsplit(".", 1)[-1]
            for info in pkgutil.walk_packages(rlhf_book.__path__, "rlhf_book.")}


def test_each_exercise_is_set_by_exactly_one_notebook_and_companions_set_some():
    modules = _package_modules()
    for chapter in catalog.CHAPTERS:
        owned = [e.id for path in chapter.notebooks() for e in own_exercises(chapter, path)]
        assert sorted(owned) == sorted(e.id for e in chapter.exercises), chapter.short
        assert own_exercises(chapter, chapter.notebook()), f"{chapter.key} sets no exercise"
        # a companion or sequel sets the exercises of the module named after it; one with no
        # such module is a tutorial and sets none
        for stem in chapter.companions + chapter.sequels:
            has_module = stem.split("_", 1)[1] in modules
            assert bool(own_exercises(chapter, stem)) == has_module, \
                f"{stem} sets {'no' if has_module else 'some'} exercise"
    primer = catalog.get_chapter("ch00").notebooks()[0]
    own = own_exercises(catalog.get_chapter("ch00"), primer)
    assert [e.id for e in own] == ["0.7", "0.8", "0.9"]
    assert [path.stem for _, path in TUTORIALS] == ["ch00_scaling_out"]


@pytest.mark.parametrize("chapter, path", TUTORIALS, ids=[path.stem for _, path in TUTORIALS])
def test_a_tutorial_has_numbered_headings_and_no_your_turn_section(chapter, path):
    nb = nbformat.read(path, as_version=4)
    assert not any(c.cell_type == "markdown" and c.source and "Your turn" in c.source.splitlines()[0]
                   for c in nb.cells), f"{path.name} sets no exercise but has a 'Your turn' section"
    headings = [int(n) for c in nb.cells if c.cell_type == "markdown"
                for n in re.findall(r"^## (\d+)\. ", c.source, re.M)]
    assert headings and headings == list(range(1, len(headings) + 1)), f"{path.name}: {headings}"
    assert notebooks.sync_all_your_turn(write=False, paths={chapter: [path]}) == []


def test_the_your_turn_tables_follow_the_catalogue():
    # `rlhf-book chapters --sync` writes them; this fails when an exercise was added without it
    stale = notebooks.sync_all_your_turn(write=False)
    assert not stale, f"run `rlhf-book chapters --sync`: stale tables in {[p.name for p in stale]}"


def test_the_table_sync_rewrites_only_the_table_and_its_count(tmp_path):
    chapter = catalog.get_chapter("ch09")
    path = tmp_path / chapter.notebook().name
    nb = nbformat.read(chapter.notebook(), as_version=4)
    _, index = your_turn(chapter.notebook())
    first = chapter.exercises[0]
    # a stale table row and a stale count
    stale = nb.cells[index].source.replace(f"| {first.id} |", "| 9.0 |")
    nb.cells[index].source = re.sub(r"Chapter 9's \w+ exercises", "Chapter 9's eleven exercises", stale)
    nbformat.write(nb, path)
    assert notebooks.sync_all_your_turn(write=False, paths={chapter: [path]}) == [path]
    assert notebooks.sync_all_your_turn(paths={chapter: [path]}) == [path]
    after = nbformat.read(path, as_version=4)
    cell = after.cells[index].source
    rows = [line.split(" | ") for line in cell.splitlines() if re.match(r"\| \d", line)]
    assert [(r[0][2:], r[2].strip("`"), r[3].rstrip(" |")) for r in rows] == \
        [(e.id, e.function, e.stars) for e in chapter.exercises]
    n = len(chapter.exercises)
    assert f"Chapter 9's {notebooks.NUMBER_WORDS[n]} exercises are in" in cell
    assert [c.source for i, c in enumerate(after.cells) if i != index] == \
        [c.source for i, c in enumerate(nb.cells) if i != index]
    assert notebooks.sync_all_your_turn(paths={chapter: [path]}) == []  # idempotent


@pytest.mark.parametrize("chapter, path", NOTEBOOKS, ids=[path.stem for _, path in NOTEBOOKS])
def test_every_notebook_ends_with_a_your_turn_section(chapter, path):
    nb, index = your_turn(path)
    markdown, code = nb.cells[index], nb.cells[index + 1]
    # numbered headings run 1, 2, ..., N with no gap, and "Your turn" is the last
    headings = [int(n) for c in nb.cells if c.cell_type == "markdown"
                for n in re.findall(r"^## (\d+)\. ", c.source, re.M)]
    assert headings == list(range(1, len(headings) + 1)), f"{path.name}: headings {headings}"
    assert markdown.source.startswith(f"## {headings[-1]}. Your turn")
    # it says where the exercises are, how to grade them all, and names each of its own
    assert f"exercises/{chapter.key}.py" in markdown.source
    assert f"rlhf-book grade {chapter.short}" in markdown.source
    own = own_exercises(chapter, path)
    for exercise in own:
        assert exercise.id in markdown.source and f"`{exercise.function}`" in markdown.source, exercise.id
    # the code cell imports the learner's file with my_exercises and grades a function of it
    assert code.cell_type == "code"
    tree = ast.parse(code.source)
    calls = {ast.unparse(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert ast.literal_eval(calls["my_exercises"].args[0]) == chapter.short
    exercise_id = ast.literal_eval(calls["check"].args[0])
    graded = ast.unparse(calls["check"].args[1])
    assert graded == f"mine.{catalog.get_exercise(exercise_id).function}"
    assert catalog.get_exercise(exercise_id).chapter == chapter
    assert catalog.get_exercise(exercise_id) in own, \
        f"{path.name} grades another notebook's exercise"
    # committed with its output: the stubs are not started
    text = "".join(o.get("text", "") for o in code.get("outputs", []))
    assert code.get("execution_count") and f"{exercise_id} " in text and "not started" in text, text
    # and nothing but "What's next" (if any) and the final timing cell after it
    for cell in nb.cells[index + 2:]:
        assert cell.cell_type == "code" or cell.source.startswith("## What's next"), cell.source[:60]
