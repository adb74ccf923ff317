#!/usr/bin/env bash
# Measured results for docs/results.md section 7: the paper's grid on CPU, in the order it was run.
# Every block is resumable (finished models are kept): rerun the script to continue after a stop.
# Usage: benchmarks/experiment_grid.sh [DATA_DIR] [OUT_DIR]   (DEVICE=cpu|cuda|auto)
set -euo pipefail
DATA=${1:-../shared/data/ivd-mr-t2-lumbar}
OUT=${2:-bench-out/experiment}
DEVICE=${DEVICE:-cpu}
EXTREMEAUG=${EXTREMEAUG:-extremeaug}
PYTHON=${PYTHON:-python}
set -x
# 1. phantoms: 1, 3, 5, 9 training scans, validation on 3 fixed phantoms; pool mode (the paper's N fixed
#    copies) under the same time budget per model, so the levels differ only in transform diversity
$PYTHON -c "from extremeaug.data.phantom import write_phantoms; write_phantoms('$OUT/phantoms', 12)"
$EXTREMEAUG experiment --data "$OUT/phantoms" --out "$OUT/phantoms-grid" --scans 1,3,5,9 --augment 5,20,50 \
  --augment-mode pool --time-budget 1 --val phantom_9,phantom_10,phantom_11 --device "$DEVICE" --quiet
# 2. real data, the paper's protocol (pool, fixed epochs: 50x = 10x the steps of 5x): one scan, each in turn
$EXTREMEAUG experiment --data "$DATA" --out "$OUT/real" --scans 1 --augment 5,20,50 --augment-mode pool \
  --epochs 1 --device "$DEVICE" --quiet
# 3. real data, compute-matched with the 50x pool model of block 2 (case 11): 5x pool for 10 epochs (the same
#    steps, 10 distinct transforms per patch instead of 50) and fresh (a new transform at every step)
$EXTREMEAUG experiment --data "$DATA" --out "$OUT/real" --scans 1 --folds 1 --augment 5 --augment-mode pool \
  --epochs 10 --device "$DEVICE" --quiet
$EXTREMEAUG experiment --data "$DATA" --out "$OUT/real" --scans 1 --folds 1 --augment 50 --augment-mode fresh \
  --epochs 1 --device "$DEVICE" --quiet
# 4. real data, two training scans, each pair in turn (11+20 -> 25, 20+25 -> 11, 25+11 -> 20), the paper's
#    protocol at 5x and 50x
$EXTREMEAUG experiment --data "$DATA" --out "$OUT/real" --scans 2 --augment 5,50 --augment-mode pool \
  --epochs 1 --device "$DEVICE" --quiet
