# The two set-up commands are `make install` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench demo clean

install:
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch comes from the machine's local wheel; install it
	# first so that the extras below find it satisfied and fetch nothing else.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[serve,train,export,dev]"
	# The official code, as a parity reference only (it would pull torchvision).
	$(BIN)/pip install --quiet --no-deps cn_clip==1.6.0
	# Chromium, Prometheus and a Chinese font from Debian, for the tests and the demo.
	scripts/system-deps.sh

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench:
	$(BIN)/python bench/tokenizer.py

# The whole pipeline offline (drawn catalog, two-stage training, export, index), then the
# search page at http://127.0.0.1:8000. About two minutes on 2 cores, then it serves.
demo:
	$(BIN)/cnclip demo --work demo-work

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
