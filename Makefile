# distill-lab: set-up and the main commands. `make run` and `make test` work on a fresh machine
# with Python 3.11 and pip: each creates .venv and installs the project on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch (on this project's CI machines it lies on local disk). On a GPU box:
#   make TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' setup
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job. Until the flows land it is the loss benchmark (about 2 minutes on 2 CPU cores).
run: $(STAMP)
	$(BIN)/python -m bench.kl_memory

## The test suite CI runs (.ci/run calls exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest

bench: run

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
