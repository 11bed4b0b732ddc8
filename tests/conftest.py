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
