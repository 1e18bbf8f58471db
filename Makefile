# millstream — the commands a newcomer and CI run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## make demo: the example order service with simulated payments at http://127.0.0.1:8080
demo: install
	$(BIN)/millstream demo

## make test: lint (code and Dockerfile), type-check and the whole test suite
test: install-test lint
	$(BIN)/pytest

lint: install-test
	$(BIN)/ruff check millstream tests bench examples
	$(BIN)/mypy millstream examples
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

## make bench: throughput and memory, printed as a table
bench: install-test
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .millstream .pytest_cache .mypy_cache .ruff_cache
