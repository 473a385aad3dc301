# Two entry points on a fresh machine: `make serve` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# `make serve PORT=8711 HOST=0.0.0.0`: passed to `servd run` as --port/--host, over servd.yaml's
# server.port/host. Only from make's command line: a PORT or HOST in the environment (often set
# for other tools) must not move the daemon, least of all onto the network.
command_line_option = $(if $(and $(filter command line,$(origin $(1))),$($(1))),$(2) $($(1)))
SERVE_ARGS = $(call command_line_option,HOST,--host) $(call command_line_option,PORT,--port)

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare `torch` requirement would resolve to a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

.PHONY: install serve test lint bench
install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(strip $(BIN)/servd run servd.yaml $(SERVE_ARGS))

lint: $(BIN)/.installed
	$(BIN)/ruff check servd tests examples benchmarks
	$(BIN)/ruff format --check servd tests examples benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks all
