"""Shared test fixtures."""

import os
import pathlib

# Several test processes may share one GPU: do not let each grab most of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# JAX's persistent compilation cache, kept in the repository's .cache/jax (git ignores it; `make
# clean` removes it): two thirds of the fast tests' time is XLA compiling (measured with
# jax.monitoring: 60 of 74 s in one module), the same programs in every run, so a second run
# reads them from disk. The settings are environment variables so that the processes the tests
# start (notebook kernels, graders, the 8-device worker) share the cache; each can be overridden
# from outside. An entry is keyed by the program, the compile options, JAX's version and the
# device. JAX's own size limit rescans the whole folder at every write (quadratic in the
# thousands of entries a run writes), so the cache is trimmed once per run instead
# (`pytest_configure`).
CACHE_DIR = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "jax"
CACHE_MAX_BYTES = 2 * 2**30
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the many small ones too

import jax  # noqa: E402
import pytest  # noqa: E402

from rlhf_book.lm import gpt  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config():
    return gpt.get_config("tiny")


@pytest.fixture(scope="session")
def tiny_params(tiny_config):
    return gpt.init_params(jax.random.PRNGKey(0), tiny_config)


def trim_cache(folder: pathlib.Path, max_bytes: int) -> None:
    """Delete the oldest files of ``folder`` until the rest hold at most ``max_bytes``."""
    stats = [(f.stat(), f) for f in folder.glob("*") if f.is_file()]
    files = sorted((stat.st_mtime, stat.st_size, f) for stat, f in stats)
    total = sum(size for _, size, _ in files)
    for _, size, f in files:
        if total <= max_bytes:
            break
        f.unlink(missing_ok=True)
        total -= size


def pytest_configure(config):
    if not hasattr(config, "workerinput") and CACHE_DIR.is_dir():  # once, in the main process
        trim_cache(CACHE_DIR, CACHE_MAX_BYTES)


# Tests that share one expensive result, or must run in file order, run on one xdist worker:
# the pipeline's learning run, the 8-device worker, and the notebooks (ch00 and ch04 store the
# models later notebooks load). pytest-xdist's own `xdist_group` marks do nothing under pytest
# 9: xdist tags each test's id with its group, and pytest 9's ids cannot be changed that way,
# so `--dist loadgroup` spread those tests over the workers (two workers each ran the whole
# pipeline at once). The scheduler below keeps every test whose id starts with one of these
# prefixes on one worker, in order; the rest are spread one by one.
GROUPS = ("tests/test_pipeline_learning.py::", "tests/test_lm_sharding.py::",
          "tests/test_notebooks.py::test_notebook_executes[")


def group_of(nodeid: str) -> str:
    """The unit of work ``nodeid`` belongs to: its group's prefix, or itself."""
    return next((prefix for prefix in GROUPS if nodeid.startswith(prefix)), nodeid)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return group_of(nodeid)

    return Groups(config, log)


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
