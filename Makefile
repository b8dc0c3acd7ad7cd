# Two commands on a fresh machine:  make train   |   make test
# (Both create .venv on first use and install the project with: pip install -e ".[dev]")
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# make test-fast: the packages whose tests need no training run (methods and the Lightning glue train)
FAST_TESTS := tests/sparsity tests/continual tests/config tests/data tests/sweeps tests/docs tests/test_architecture.py

.PHONY: install train test test-fast lint docs clean help

help:
	@echo "make train [ARGS='overrides']  set up .venv (first time) and run python train.py"
	@echo "make test                      run the whole test suite (what CI runs; without a SLURM"
	@echo "                               cluster or full MNIST those tests are skipped, with the reason)"
	@echo "make test-fast                 the unit tests: engine, CL core, configs, data, sweeps, docs (no training runs)"
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

test-fast: install  # one worker per core (pytest-xdist), at most 4: their start-up would outweigh more
	$(BIN)/python -m pytest -n auto --maxprocesses=4 -m "not slow and not e2e and not slurm" $(FAST_TESTS)

lint: install
	$(BIN)/ruff check src tests experiments

docs: install
	$(BIN)/mkdocs build --strict

clean:
	rm -rf outputs .pytest_cache site
