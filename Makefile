# The two set-up commands of a fresh machine: `make demo` and `make test`; `make stack-test` runs the
# docker compose stack for real on this machine's CPUs (deploy/stack-test/stack-test.sh).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: demo test lint bench stack-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,jax]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/badnet-prune demo --out $(DEMO_DIR)

# The second pytest run is the JAX pass: the tests of the worker path that also run on Keras's JAX
# backend (tests/conftest.py JAX_PASS), with XLA's compiled programs kept across its processes.
# Each pass runs its test files in one process a core and one more, at most 4 (pytest-xdist: a process
# waiting on a worker or a service leaves its core to another) and ends with its 25 slowest tests;
# docs/testing.md says where the time goes.
TEST_PROCESSES ?= -n $(shell n=$$(nproc); echo $$(( n + 1 < 4 ? n + 1 : 4 ))) --dist loadfile
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(TEST_PROCESSES) --durations=25 $(PYTEST_ARGS)
	KERAS_BACKEND=jax JAX_COMPILATION_CACHE_DIR=$(VENV)/jax-cache $(BIN)/python -m pytest -m jax_pass \
		$(TEST_PROCESSES) --durations=25 $(JAX_PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python bench/engine.py

stack-test:
	deploy/stack-test/stack-test.sh
