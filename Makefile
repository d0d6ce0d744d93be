PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# Test files go to memory when the machine has it: the keyring's fsyncs then cost nothing.
TEST_ENV := TMPDIR=$(shell test -d /dev/shm && echo /dev/shm || echo /tmp)

.PHONY: run test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The server depends on ./client_lib by a direct reference, which pip installs as a copy (and pip refuses
# `-e ./client_lib -e .` in one command as a conflict): the second line makes client_lib editable again,
# so edits to it are seen.
$(VENV)/.installed-run: $(BIN)/python setup.py pyproject.toml client_lib/pyproject.toml
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps -e ./client_lib
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.py pyproject.toml client_lib/pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps -e ./client_lib
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/tokendealer init
	$(BIN)/python -m tokendealer.demo
	$(BIN)/tokendealer serve --host 127.0.0.1 --port 5000

test: $(VENV)/.installed-test
	$(TEST_ENV) $(BIN)/python -m pytest -q

# The unit tier for the edit loop, in two processes (pytest-xdist): no server processes, PostgreSQL, Redis or
# slow tests (< 30 s).
test-fast: $(VENV)/.installed-test
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 -m "not live and not postgres and not redis and not slow"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check tokendealer client_lib tests examples benchmarks
	$(BIN)/ruff format --check tokendealer client_lib tests examples benchmarks
	$(BIN)/mypy  # tokendealer and client_lib, as pyproject.toml's [tool.mypy] says

clean:
	rm -rf $(VENV) var *.egg-info client_lib/*.egg-info client_lib/build
