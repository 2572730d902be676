#!/usr/bin/env bash
# The README's demo: install, make a demo dataset, run brainfm's participant level on it.
# Usage: scripts/demo.sh [OUT_DIR]     (default: demo_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_out}"
scripts/setup_env.sh
VENV="${BRAINFM_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" NIPYPE_NO_ET=1
rm -rf "$OUT"
ABIDE=()
if [ -f ../shared/data/abide-pcp-cc200/rois_cc200.tar.xz ]; then
  ABIDE=(--abide-dir ../shared/data/abide-pcp-cc200)   # real ABIDE signals when available
fi
brainfm-make-testdata "$OUT/data" --subjects 2 "${ABIDE[@]}"
brainfm "$OUT/data/bids" "$OUT/derivatives" participant \
  --atlases CC200 Schaefer2018-200 --nuisance-regressors pcp --fd-thresh 0.5 \
  -w "$OUT/work" --nprocs 2 --omp-nthreads 1
echo "brainfm outputs:"
find "$OUT/derivatives" -type f -not -path '*/atlases/*' | sort
