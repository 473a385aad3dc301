# Two entry points on a fresh machine: `make serve` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare `torch` requirement would resolve to a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

.PHONY: install serve test lint bench
install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/servd run servd.yaml

lint: $(BIN)/.installed
	$(BIN)/ruff check servd tests examples benchmarks
	$(BIN)/ruff format --check servd tests examples benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks all
