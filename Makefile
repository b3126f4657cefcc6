# The command surface: README and CI call these targets and nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean system-packages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/omnimetrics serve --demo

# Chromium, Node.js, Prometheus and Redis for the browser, JavaScript, /metrics and Redis Stream tests (installed if missing).
system-packages:
	./scripts/system-packages.sh

test: $(STAMP) system-packages
	$(BIN)/python -m pytest

bench: $(STAMP)
	./scripts/system-packages.sh bench
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
