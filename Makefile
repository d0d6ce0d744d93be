PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# Test files go to memory when the machine has it: the keyring's fsyncs then cost nothing.
TEST_ENV := TMPDIR=$(shell test -d /dev/shm && echo /dev/shm || echo /tmp)

.PHONY: run test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: $(BIN)/python setup.py pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.py pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/tokendealer init
	$(BIN)/python -m tokendealer.demo
	$(BIN)/tokendealer serve --host 127.0.0.1 --port 5000

test: $(VENV)/.installed-test
	$(TEST_ENV) $(BIN)/python -m pytest -q

# The unit tier for the edit loop: no server processes, PostgreSQL, Redis or slow tests (< 30 s).
test-fast: $(VENV)/.installed-test
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not live and not postgres and not redis and not slow"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check tokendealer client_lib tests examples benchmarks
	$(BIN)/ruff format --check tokendealer client_lib tests examples benchmarks

clean:
	rm -rf $(VENV) var *.egg-info
