# The two commands a person needs: `make serve` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages: bubblewrap is the PythonInterpreter sandbox (without it no model code runs).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)

.PHONY: install system-packages serve test check lint types bench clean

install: system-packages $(STAMP)

system-packages:
	@command -v bwrap >/dev/null 2>&1 || $(SUDO) apt-get install -y -q bubblewrap >/dev/null 2>&1 \
		|| ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q bubblewrap >/dev/null) \
		|| echo "warning: could not install bubblewrap; PythonInterpreter will be unavailable" >&2

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: install
	$(BIN)/deepresearch serve

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: install
	$(BIN)/mypy

check: lint types test

bench: install
	$(BIN)/python bench/streams.py

clean:
	rm -rf $(VENV) .deepresearch .pytest_cache .mypy_cache .ruff_cache
