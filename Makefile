# One command each: `make run` sets up and serves the repo's boards/ and kernel-builds/;
# `make test` sets up and runs lint, types and the whole test suite; `make install` puts the
# `overrided` command in $(PREFIX)/bin.
# The system's Python, not whichever python3 comes first on PATH (a pyenv shim, a venv):
# `make PYTHON=python3.12` to choose another.
PYTHON ?= $(or $(wildcard /usr/bin/python3),python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PREFIX ?= $(HOME)/.local

.PHONY: venv run test lint bench clean fuzz install uninstall

# The service alone (what `make run` needs), then the test tools on top (`make venv`).
$(BIN)/overrided: pyproject.toml setup.py overrided/tftp/_lockstep.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-extra: $(BIN)/overrided
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.test-extra

run: $(BIN)/overrided
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

# A venv of its own under $(PREFIX)/share/overrided, and $(PREFIX)/bin/overrided linked to it.
install:
	$(PYTHON) -m venv $(PREFIX)/share/overrided/venv
	$(PREFIX)/share/overrided/venv/bin/pip install -q --upgrade pip
	$(PREFIX)/share/overrided/venv/bin/pip install -q .
	mkdir -p $(PREFIX)/bin
	ln -sf $(PREFIX)/share/overrided/venv/bin/overrided $(PREFIX)/bin/overrided
	@echo "installed $(PREFIX)/bin/overrided"

uninstall:
	rm -rf $(PREFIX)/share/overrided/venv $(PREFIX)/bin/overrided

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
