#!/usr/bin/env bash
# Set up a CPU-only test environment and run the whole test suite. Needs no GPU, no model hub.
#   scripts/test.sh [pytest args]
# torch==2.13.0 is pinned: this project's CI machines hold a CPU build of it locally, so pip never
# pulls several GB of CUDA wheels there. Elsewhere set TORCH_INDEX_URL (for example
# https://download.pytorch.org/whl/cpu) to get the CPU build from PyTorch's index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${DSOCR_TEST_VENV:-.venv-test}

if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
TORCH_FROM=()
[[ -n ${TORCH_INDEX_URL:-} ]] && TORCH_FROM=(--index-url "$TORCH_INDEX_URL")
"$VENV/bin/python" -m pip install -q "${TORCH_FROM[@]}" torch==2.13.0
"$VENV/bin/python" -m pip install -q -e '.[test]'
# Triton runs the paged attention kernel under its interpreter on the CPU (a test compares it with
# the reference); its wheels exist for Linux only.
[[ $(uname -s) == Linux ]] && "$VENV/bin/python" -m pip install -q triton==3.9.0

# The remote-code profile: the official checkpoints' own code needs transformers 4.46.x, so its
# engine is also tested in a second environment with that stack.
RVENV=${DSOCR_REMOTE_VENV:-.venv-remote-test}
if [[ ! -x $RVENV/bin/python ]]; then
  "$PYTHON" -m venv "$RVENV"
fi
"$RVENV/bin/python" -m pip install -q --upgrade pip
"$RVENV/bin/python" -m pip install -q "${TORCH_FROM[@]}" torch==2.13.0
"$RVENV/bin/python" -m pip install -q transformers==4.46.3 tokenizers==0.20.3 einops addict easydict \
  pytest pillow 'pymupdf>=1.24,<2' 'numpy<2.3' typer rich tqdm safetensors huggingface_hub
"$RVENV/bin/python" -m pip install -q --no-deps -e .

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" -m ruff check src tests scripts/bench.py
"$RVENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_infer_engine.py
"$VENV/bin/python" -m pytest "$@"
