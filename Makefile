# One command each: `make run` sets up and serves the repo's boards/ and kernel-builds/;
# `make test` sets up and runs lint, types and the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv run test lint bench clean fuzz

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

# The property-based fuzz tests (tests/test_fuzz_*.py) with a large budget: FUZZ_EXAMPLES
# examples per property instead of the test run's 150 (slow properties run fewer, see
# tests/support/fuzz.py). Prints, per property, how many examples ran and how deep they got.
FUZZ_EXAMPLES ?= 20000
fuzz: venv
	OVERRIDED_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q --timeout=0 \
		--hypothesis-show-statistics tests/test_fuzz_*.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
