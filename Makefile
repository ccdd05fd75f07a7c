# The two set-up commands of the README. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[train]'

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

# Install everything and run the daemon in the foreground on the repo's config.toml.
run: install
	$(BIN)/iceburgd --config config.toml run

# Install the dev extras and run the whole test suite.
test: install-dev
	$(BIN)/python -m pytest
