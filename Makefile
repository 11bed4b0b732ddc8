# Two entry points (see README): `make pipeline` and `make test`. Each creates a virtual
# environment in .venv on first use and installs the pinned dependencies of requirements.lock.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install pipeline test test-fast clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

pipeline: $(STAMP)
	$(BIN)/rlhf-book pipeline $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup --timeout=900 $(PYTEST_ARGS)

# Everything but the learning tests and the notebooks: the library's math, the checks, the
# grader, the CLI (a few minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup --timeout=900 -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
