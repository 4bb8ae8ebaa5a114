# make test   - lint, type-check and run the unit suite (creates venv/ first)
# make bench  - time the program under mocks against the bare import floor
PYTHON ?= python3
VENV := venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements

.PHONY: test lint typecheck unit bench clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/evaluate_program.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis rendered
