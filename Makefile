# The two commands of the README. Each sets up what it needs on first use (idempotent):
# the shared virtual environment (scripts/setup_env.sh) and the Fashion-MNIST files (scripts/setup_data.sh).
SHELL := /bin/bash
PY := .venv/bin/python
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))
ARGS ?=

.PHONY: reproduce test lint setup data bench clean

setup:
	@bash scripts/setup_env.sh

data: setup
	@bash scripts/setup_data.sh

reproduce: setup data
	$(PY) -m groupnorm reproduce $(ARGS)

test: setup data
	$(PY) -m ruff check .
	$(PY) -m pytest $(ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup
	$(PY) benchmarks/layers.py
	$(PY) benchmarks/kernels.py --quick
	$(PY) benchmarks/train_step.py

clean:
	rm -rf .pytest_cache .ruff_cache
