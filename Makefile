# Two commands on a fresh machine:  make train   |   make test
# (Both create .venv on first use and install the project with: pip install -e ".[dev]")
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install train test test-fast lint docs clean help

help:
	@echo "make train [ARGS='overrides']  set up .venv (first time) and run python train.py"
	@echo "make test                      run the whole test suite (what CI runs; without a SLURM"
	@echo "                               cluster or full MNIST those tests are skipped, with the reason)"
	@echo "make test-fast                 the in-process tests only (no slow, end-to-end or SLURM tests)"
	@echo "make lint                      ruff"
	@echo "make docs                      build the documentation site into site/ (mkdocs, strict)"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not e2e and not slurm"

lint: install
	$(BIN)/ruff check src tests experiments

docs: install
	$(BIN)/mkdocs build --strict

clean:
	rm -rf outputs .pytest_cache site
