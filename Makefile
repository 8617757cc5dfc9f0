# Two commands do all the set-up on a fresh machine (see README):
#   make quickstart   runs the main job on the embedded default
#   make test         lints and runs the whole test suite
# While developing, `make test-fast` lints and runs the suite without the tests marked `slow` (pytest -m "not slow").
VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch; on a GPU machine use e.g. `make TORCH=torch test`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install quickstart test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

quickstart: install
	$(BIN)/adaptkit quickstart

lint: install
	$(BIN)/ruff check adaptkit tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
