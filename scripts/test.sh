#!/usr/bin/env bash
# The README's test command: install brainfm and its test tools, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
VENV="${BRAINFM_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" NIPYPE_NO_ET=1
"$VENV/bin/python" -m pytest -q -ra "$@"
