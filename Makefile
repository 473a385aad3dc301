# Two entry points on a fresh machine: `make serve` and `make test`. Both install first, each
# only what it needs: serving never downloads the test tools.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP = $(BIN)/python -m pip install --quiet --disable-pip-version-check
# `make serve PORT=8711 HOST=0.0.0.0`: passed to `servd run` as --port/--host, over servd.yaml's
# server.port/host. Only from make's command line: a PORT or HOST in the environment (often set
# for other tools) must not move the daemon, least of all onto the network.
command_line_option = $(if $(and $(filter command line,$(origin $(1))),$($(1))),$(2) $($(1)))
SERVE_ARGS = $(call command_line_option,HOST,--host) $(call command_line_option,PORT,--port)
# Material for MkDocs prints a notice about its successor on every build; the build's own
# warnings (broken links, anchors, pages left out of the nav) still fail it under --strict.
export NO_MKDOCS_2_WARNING := 1

# The runtime: torch first, pinned (a bare `torch` requirement would resolve to a multi-GB CUDA
# build), then servd and its dependencies, and scikit-learn for the example classifier that the
# shipped servd.yaml serves (the `examples` extra).
$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -e '.[examples]'
	touch $@

# What `make test` needs on top: pytest, ruff, mypy, Ray, the official clients, MkDocs.
$(BIN)/.installed-test: $(BIN)/.installed
	$(PIP) -e '.[test]'
	touch $@

# What `make docs` needs on top of the runtime: MkDocs with the Material theme.
$(BIN)/.installed-docs: $(BIN)/.installed
	$(PIP) -e '.[docs]'
	touch $@

.PHONY: install serve test lint docs docs-build bench
install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(strip $(BIN)/servd run servd.yaml $(SERVE_ARGS))

lint: $(BIN)/.installed-test
	$(BIN)/ruff check servd tests examples benchmarks
	$(BIN)/ruff format --check servd tests examples benchmarks
	$(BIN)/mypy

# The docs site, built as CI builds it: a broken link or anchor fails (into site/, git-ignored).
# Not --quiet: it silences the warnings, and --strict then passes what it should refuse.
docs-build: $(BIN)/.installed-test
	$(BIN)/mkdocs build --strict

test: lint docs-build
	$(BIN)/python -m pytest

# The docs site on http://127.0.0.1:8000/, rebuilt as the pages change.
docs: $(BIN)/.installed-docs
	$(BIN)/mkdocs serve -a 127.0.0.1:8000

bench: $(BIN)/.installed-test
	$(BIN)/python -m benchmarks all
