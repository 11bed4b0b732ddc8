# Entry points (see README): `make install`, `make lab` (the notebooks in JupyterLab), `make book`
# (the HTML book), `make pipeline` and `make test`. Each creates a virtual environment in .venv on
# first use and installs the pinned dependencies of requirements.lock.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install lab book pipeline test test-fast clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test,book]'
	touch $(STAMP)

install: $(STAMP)

# JupyterLab on notebooks/, with the virtual environment's own "python3" kernel (the kernel the
# notebooks name): JUPYTER_PREFER_ENV_PATH puts the environment's kernels before any of the user's,
# and PYTHONPATH lets a notebook import the learner's `exercises` package from the repository.
lab: $(STAMP)
	JUPYTER_PREFER_ENV_PATH=1 PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" \
		$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(ARGS)

# The HTML book from the chapter guides and the executed notebooks (nothing is executed), read
# offline: open book/_build/html/index.html.
book: $(STAMP)
	$(BIN)/sphinx-build -q -c book . book/_build/html -d book/_build/doctrees $(ARGS)
	@echo "The book is in book/_build/html: open book/_build/html/index.html in a browser."

pipeline: $(STAMP)
	$(BIN)/rlhf-book pipeline $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup --timeout=900 --durations=25 $(PYTEST_ARGS)

# Everything but the learning tests and the notebooks: the library's math, the checks, the
# grader, the CLI (a few minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadgroup --timeout=900 -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .cache .pytest_cache .hypothesis book/_build
