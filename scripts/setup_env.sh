#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install brainfm with its test tools.
# Usage: scripts/setup_env.sh            (idempotent; set BRAINFM_VENV to use another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BRAINFM_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# torch first, pinned to the CPU build, then the project (its own requirement stays torch>=2.2)
"$VENV/bin/python" -m pip install -q -c constraints.txt "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]"
"$VENV/bin/python" -c "import brainfm; print('brainfm', brainfm.__version__, 'installed in $VENV')"
