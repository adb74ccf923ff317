#!/usr/bin/env bash
# Measured result 1 (docs/results.md): train on case 11 ONLY, segment cases 20 and 25, evaluate.
# Usage: benchmarks/real_data.sh [DATA_DIR] [OUT_DIR]   (BUDGET=minutes, DEVICE=cpu|cuda|auto,
#        LABELS=merge: all discs as one structure, the paper's binary set-up; LABELS=each: one per level;
#        TRAIN_FLAGS: more `extremeaug train` flags, e.g. "--compile on")
set -euo pipefail
DATA=${1:-../shared/data/ivd-mr-t2-lumbar}
OUT=${2:-bench-out/real}
BUDGET=${BUDGET:-15}
DEVICE=${DEVICE:-cpu}
EXTREMEAUG=${EXTREMEAUG:-extremeaug}
LABELS=${LABELS:-merge}
TRAIN_FLAGS=${TRAIN_FLAGS:-}
case "$LABELS" in merge) MERGE=--merge-labels ;; each) MERGE= ;; *) echo "LABELS=merge or each" >&2; exit 2 ;; esac
rm -rf "$OUT" && mkdir -p "$OUT"
/usr/bin/time -v $EXTREMEAUG train --image "$DATA/case11_image.nii.gz" --label "$DATA/case11_mask.nii.gz" \
  --out "$OUT/model" --time-budget "$BUDGET" --device "$DEVICE" --progress-file "$OUT/progress.jsonl" $MERGE \
  $TRAIN_FLAGS --quiet 2> "$OUT/train_time.txt" | tee "$OUT/train.txt"
for c in 20 25; do
  /usr/bin/time -f "%e s %M KB" -o "$OUT/case${c}_segment_time.txt" \
    $EXTREMEAUG segment --model "$OUT/model/model.onnx" --image "$DATA/case${c}_image.nii.gz" \
    --out "$OUT/case${c}_pred.nii.gz" --probabilities "$OUT/case${c}_prob.nii.gz" --device "$DEVICE" \
    --seg-nrrd "$OUT/case${c}_pred.seg.nrrd"
  $EXTREMEAUG evaluate --prediction "$OUT/case${c}_pred.nii.gz" --reference "$DATA/case${c}_mask.nii.gz" \
    --json > "$OUT/case${c}.json"
  echo "case $c: $(cat "$OUT/case${c}.json")"
done
