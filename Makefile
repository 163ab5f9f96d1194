# The two set-up commands are `make install` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench demo clean deploy-up deploy-down test-deploy deploy-train-image

install:
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch comes from the machine's local wheel; install it
	# first so that the extras below find it satisfied and fetch nothing else.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[serve,train,export,milvus,distributed,dev]"
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

# The compose stack on this machine (deploy/local/stack.sh): a Docker daemon if none runs,
# stand-in base images, our images, 2 API replicas behind the gateway on 127.0.0.1:8000.
deploy-up:
	deploy/local/stack.sh up

deploy-down:
	deploy/local/stack.sh down

# deploy/Dockerfile.train built on a stand-in with the CPU torch, and the demo's pipeline
# (two-stage training, export, index) run in it. Not part of test-deploy (minutes, GBs).
deploy-train-image:
	deploy/local/stack.sh train-image

# Brings the stack up, checks it through the gateway, and takes it down (the last test).
test-deploy:
	deploy/local/stack.sh up
	$(BIN)/python -m pytest -m stack -q tests/deploy/test_stack.py || { deploy/local/stack.sh down; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
