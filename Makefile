# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The suite runs in pytest-xdist worker processes, one per usable core (at most 4): most of
# its time is single-threaded XLA compilation. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= $(shell $(PY) -c "import os; a = getattr(os, 'sched_getaffinity', None); \
	print(min(4, len(a(0)) if a else os.cpu_count() or 1))")

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agrl reproduce --out runs/reproduce

test: $(STAMP)
	$(BIN)/ruff format --check agrl tests scripts
	$(BIN)/ruff check agrl tests scripts
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

format: $(STAMP)
	$(BIN)/ruff format agrl tests scripts
	$(BIN)/ruff check --fix agrl tests scripts

clean:
	rm -rf $(VENV) runs
