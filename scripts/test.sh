#!/usr/bin/env bash
# Set up a CPU-only test environment and run the whole test suite. Needs no GPU, no model hub.
#   scripts/test.sh [pytest args]
# The CPU torch build (torch==2.13.0) is pinned so pip never pulls several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${DSOCR_TEST_VENV:-.venv-test}

if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e '.[test]'

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" -m ruff check src tests scripts/bench.py
"$VENV/bin/python" -m pytest "$@"
