"""The test suite's own machinery (tests/conftest.py): the groups of tests one xdist worker runs,
and the trimming of the compilation cache."""

import os
import pathlib
import sys

conftest = sys.modules["conftest"]  # tests/conftest.py, loaded by pytest
REPO = pathlib.Path(__file__).resolve().parents[1]


def test_each_group_names_a_test_file_and_function_that_exist():
    for prefix in conftest.GROUPS:
        path, _, function = prefix.partition("::")
        source = (REPO / path).read_text()
        assert not function or f"def {function.rstrip('[')}(" in source, prefix


def test_a_group_is_one_unit_of_work_and_other_tests_are_their_own():
    group = conftest.group_of
    assert group("tests/test_pipeline_learning.py::test_sft_can_partly_add") == \
        group("tests/test_pipeline_learning.py::test_online_dpo_raises_the_gold_reward")
    assert group("tests/test_notebooks.py::test_notebook_executes[ch00_mini_gpt]") == \
        group("tests/test_notebooks.py::test_notebook_executes[ch04_instruction_tuning]")
    other = "tests/test_notebooks.py::test_notebook_is_committed_with_outputs[ch00_mini_gpt]"
    assert group(other) == other


def test_trim_cache_deletes_the_oldest_files_first(tmp_path):
    for i in range(5):  # 100 bytes each, file i written at time i
        f = tmp_path / f"entry{i}"
        f.write_bytes(b"x" * 100)
        os.utime(f, (i, i))
    conftest.trim_cache(tmp_path, 250)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["entry3", "entry4"]
    conftest.trim_cache(tmp_path, 1000)  # under the limit: nothing goes
    assert len(list(tmp_path.iterdir())) == 2
