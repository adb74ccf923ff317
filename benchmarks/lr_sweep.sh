#!/usr/bin/env bash
# Learning rate and loss on a short CPU budget: train on phantom 0, validate on phantom 2, 72 s each.
# Usage: benchmarks/lr_sweep.sh [OUT_DIR]   (prints the best validation Dice of each setting)
set -euo pipefail
OUT=${1:-bench-out/lr_sweep}
EXTREMEAUG=${EXTREMEAUG:-extremeaug}
PYTHON=${PYTHON:-python3}
rm -rf "$OUT" && mkdir -p "$OUT"
$PYTHON -c "from extremeaug.data.phantom import write_phantoms; write_phantoms('$OUT/data', 3)"
for setting in "1e-3 dice" "1e-3 dice+bce" "3e-3 dice" "3e-3 dice+bce"; do
  set -- $setting
  $EXTREMEAUG train --image "$OUT/data/phantom_0_image.nii.gz" --label "$OUT/data/phantom_0_mask.nii.gz" \
    --val-image "$OUT/data/phantom_2_image.nii.gz" --val-label "$OUT/data/phantom_2_mask.nii.gz" \
    --out "$OUT/lr$1_$2" --lr "$1" --loss "$2" --time-budget 1.2 --device cpu --quiet | sed "s/^/lr $1, $2: /"
done
