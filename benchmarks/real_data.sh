#!/usr/bin/env bash
# Measured result 1 (docs/results.md): train on case 11 ONLY, segment cases 20 and 25, evaluate.
# Usage: benchmarks/real_data.sh [DATA_DIR] [OUT_DIR]   (BUDGET=minutes, DEVICE=cpu|cuda|auto)
set -euo pipefail
DATA=${1:-../shared/data/ivd-mr-t2-lumbar}
OUT=${2:-bench-out/real}
BUDGET=${BUDGET:-15}
DEVICE=${DEVICE:-cpu}
EXTREMEAUG=${EXTREMEAUG:-extremeaug}
rm -rf "$OUT" && mkdir -p "$OUT"
/usr/bin/time -v $EXTREMEAUG train --image "$DATA/case11_image.nii.gz" --label "$DATA/case11_mask.nii.gz" \
  --out "$OUT/model" --time-budget "$BUDGET" --device "$DEVICE" --progress-file "$OUT/progress.jsonl" \
  --quiet 2> "$OUT/train_time.txt" | tee "$OUT/train.txt"
for c in 20 25; do
  /usr/bin/time -f "%e s" $EXTREMEAUG segment --model "$OUT/model/model.onnx" --image "$DATA/case${c}_image.nii.gz" \
    --out "$OUT/case${c}_pred.nii.gz" --probabilities "$OUT/case${c}_prob.nii.gz" --device "$DEVICE"
  $EXTREMEAUG evaluate --prediction "$OUT/case${c}_pred.nii.gz" --reference "$DATA/case${c}_mask.nii.gz" \
    --json > "$OUT/case${c}.json"
  echo "case $c: $(cat "$OUT/case${c}.json")"
done
