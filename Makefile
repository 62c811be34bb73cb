# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

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
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff format agrl tests scripts
	$(BIN)/ruff check --fix agrl tests scripts

clean:
	rm -rf $(VENV) runs
