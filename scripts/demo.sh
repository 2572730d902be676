#!/usr/bin/env bash
# The README's demo: install, make a demo dataset from five real ABIDE subjects that the packaged
# model never saw, run brainfm's participant level and then its group level on it.
# Usage: scripts/demo.sh [OUT_DIR]     (default: demo_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo_out}"
scripts/setup_env.sh
VENV="${BRAINFM_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH" NIPYPE_NO_ET=1
rm -rf "$OUT"
# the held-out subjects' CC200 series ship inside the package (brainfm/data/demo/, ABIDE terms)
DEMO_ABIDE="$("$VENV/bin/python" -c 'import brainfm.data as d, pathlib; print(pathlib.Path(d.__file__).parent / "demo" / "abide-pcp-cc200")')"
brainfm-make-testdata "$OUT/data" --subjects 5 --volumes 170 --abide-dir "$DEMO_ABIDE" \
  --abide-file-id NYU_0051039 --abide-file-id Yale_0050605 --abide-file-id UM_2_0050388 \
  --abide-file-id NYU_0050960 --abide-file-id SBL_0051584
brainfm "$OUT/data/bids" "$OUT/derivatives" participant \
  --atlases CC200 Schaefer2018-200 --nuisance-regressors pcp --fd-thresh 0.5 \
  -w "$OUT/work" --nprocs 2 --omp-nthreads 1
brainfm "$OUT/data/bids" "$OUT/derivatives" group
echo "brainfm outputs (participant and group level) in $OUT/derivatives:"
find "$OUT/derivatives" -type f -not -path '*/sourcedata/*' | sort
echo
echo "Predictions of the five held-out subjects (true ages 8.5, 16, 26.8, 38.8, 49):"
column -t -s $'\t' "$OUT/derivatives/group_predictions.tsv" | cut -c1-160
