# Two commands do all the set-up on a fresh machine (see README):
#   make quickstart   runs the main job on the embedded default
#   make test         lints and runs the whole test suite
# While developing, `make test-fast` lints and runs the suite without the tests marked `slow` (pytest -m "not slow").
VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch; on a GPU machine use e.g. `make TORCH=torch test`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install quickstart test test-fast lint clean device-wheels

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

# The packages a lent GPU machine's image lacks (diffusers and what it needs there, pycocotools), as wheels in .whl/
# for benchmarks/device_pretrain.sh to install there (its Python is 3.12 on x86-64).
device-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl diffusers==0.42.1 pycocotools==2.0.11 importlib_metadata

clean:
	rm -rf $(VENV) runs
