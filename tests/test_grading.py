"""The grading tests: each exercise's check, pointed at the library (``--impl=reference``, the
default, which must be all green) or at the reader's ``exercises/`` (``--impl=exercises``,
where an exercise not started is an expected failure, "not started", not a traceback)."""

import pathlib

import pytest

from rlhf_book.textbook import catalog, grading

EXERCISES = list(catalog.all_exercises().values())
_loaded: dict = {}


def _exercise_function(exercise, request):
    directory = request.config.getoption("--exercises-dir")
    directory = pathlib.Path(directory) if directory else None
    chapter = exercise.chapter
    if chapter.key not in _loaded:
        _loaded[chapter.key] = grading.load_functions(chapter, "exercises", directory)
    functions, error = _loaded[chapter.key]
    return functions[exercise.id], error


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"{e.id}-{e.function}")
def test_exercise(exercise, request):
    if request.config.getoption("--impl") == "reference":
        exercise.checker()(exercise.reference())  # full traceback if the library is wrong
        return
    fn, error = _exercise_function(exercise, request)
    result = grading.run_check(exercise, fn, load_error=error)
    if result.status == grading.NOT_STARTED:
        pytest.xfail(f"not started: exercise {exercise.id} ({exercise.title})")
    if result.status != grading.PASSED:
        pytest.fail(f"{result.status}: {result.hint}", pytrace=False)


@pytest.mark.parametrize("exercise_id", sorted(catalog.all_exercises()))
def test_a_reference_solution_is_graded_as_it_is(exercise_id):
    # The library's own solution calls the library's functions: nothing to swap, even where a
    # callee merely shares another exercise's name (chapter 7's verifier calls the world's
    # arithmetic `extract_answer`; an exercise of that name elsewhere must not replace it).
    exercise = catalog.get_exercise(exercise_id)
    assert grading.dependencies(exercise, exercise.reference()) == []
