"""Shared test fixtures."""

import os

# Several test processes may share one GPU: do not let each grab most of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

from rlhf_book.lm import gpt  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config():
    return gpt.get_config("tiny")


@pytest.fixture(scope="session")
def tiny_params(tiny_config):
    return gpt.init_params(jax.random.PRNGKey(0), tiny_config)


def pytest_addoption(parser):
    group = parser.getgroup("rlhf-book grading")
    group.addoption("--impl", choices=["reference", "exercises"], default="reference",
                    help="which implementation tests/test_grading.py grades: the library's "
                         "reference solutions (default) or your exercises/ stubs")
    group.addoption("--exercises-dir", default=None,
                    help="folder of the chNN_*.py exercise files (default exercises/)")


def pytest_terminal_summary(terminalreporter):
    """Report each notebook's run time (recorded by tests/test_notebooks.py), also under xdist."""
    times = []
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        if report.when == "call":
            times += [(value, report.nodeid) for name, value in report.user_properties
                      if name == "notebook_seconds"]
    if times:
        terminalreporter.section("notebook run times")
        for seconds, nodeid in sorted(times, key=lambda t: t[1]):
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid.split('[')[-1].rstrip(']')}")
