# The two set-up commands are `make install` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench clean

install:
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch comes from the machine's local wheel; install it
	# first so that the extras below find it satisfied and fetch nothing else.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[serve,train,export,dev]"
	# The official code, as a parity reference only (it would pull torchvision).
	$(BIN)/pip install --quiet --no-deps cn_clip==1.6.0

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench:
	$(BIN)/python bench/tokenizer.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
