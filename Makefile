PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint types pytest demo bench bench-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bulksend tests benchmarks
	$(BIN)/ruff format --check bulksend tests benchmarks

types: $(STAMP)
	$(BIN)/mypy --strict bulksend

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint types pytest

demo: $(STAMP)
	$(BIN)/bulksend demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
