# One command each: `make run` sets up and serves the repo's boards/ and kernel-builds/;
# `make test` sets up and runs lint, types and the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv run test lint bench clean

$(BIN)/overrided: pyproject.toml setup.py overrided/tftp/_lockstep.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/overrided

run: venv
	$(BIN)/overrided serve

lint: venv
	$(BIN)/ruff check overrided tests bench
	$(BIN)/ruff format --check overrided tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -ra

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
