# The two commands a person needs: `make serve` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the tests need: bubblewrap is the PythonInterpreter sandbox (without it no model
# code runs), Chromium runs the web page's browser tests, and redis-server serves the Redis store's
# tests (each starts its own on a free port). Each is checked by the command it installs.
APT_PACKAGES := bwrap:bubblewrap chromium:chromium redis-server:redis-server
# apt-get needs root: sudo when not root (and there).
SUDO := $(shell [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && echo sudo)

.PHONY: install system-packages serve test check lint types bench bench-serving clean

install: $(STAMP) system-packages

system-packages:
	@missing=""; \
	for entry in $(APT_PACKAGES); do \
	  command -v $${entry%%:*} >/dev/null 2>&1 || missing="$$missing $${entry#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,redis]'
	touch $(STAMP)

serve: install
	$(BIN)/deepresearch serve

# Two test processes, a test file each at a time (its fixtures stay in one process): most
# tests wait on real servers, browsers and sockets, so two halve the time even on two cores.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: install
	$(BIN)/mypy

check: lint types test

bench: install
	$(BIN)/python bench/streams.py

# The serving benchmark needs LangGraph's dev server and matplotlib (the `bench` extra). They get
# their own venv: langsmith, which langgraph-api pulls in, registers a pytest plugin that would
# otherwise load into `make test`. ARGS are passed on, e.g. `make bench-serving ARGS=--quick`.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench-serving: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/serving.py $(ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .deepresearch .pytest_cache .mypy_cache .ruff_cache
