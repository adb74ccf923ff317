#!/usr/bin/env bash
# docs/results.md section 11: leave-one-out over the three shared scans (train on one, segment the two others,
# every scan in turn) for each training variant, then every segmentation setting of benchmarks/loo.py on each
# model. Every model is kept: rerun the script to continue after a stop.
# Usage: benchmarks/loo.sh [DATA_DIR] [OUT_DIR]   (AUGMENT=10: 377 steps of batch 16 per model, ~4 CPU minutes;
# the whole script about 3 hours on 2 CPU cores)
set -euo pipefail
DATA=${1:-../shared/data/ivd-mr-t2-lumbar}
OUT=${2:-bench-out/loo}
AUGMENT=${AUGMENT:-10}
EXTREMEAUG=${EXTREMEAUG:-extremeaug}
PYTHON=${PYTHON:-python}
run() {   # run NAME [train flags...]: fixed steps (1 epoch at AUGMENT x), so a busy machine changes time, not results
  local name=$1; shift
  $EXTREMEAUG experiment --data "$DATA" --out "$OUT/$name" --scans 1 --augment "$AUGMENT" --epochs 1 \
    --device cpu --quiet "$@"
}
set -x
run baseline
run baseline-seed1 --seed 1
run intensity --intensity
run dice+bce --loss dice+bce
run context1 --context 1
run context1-seed1 --context 1 --seed 1
run context2 --context 2
run batch32 --batch-size 32                                   # the same patches in half the steps: the same time
run baseline-15min --epochs 4                                 # the 15-minute confirmation (1,508 steps)
run two-scans --scans 2 --augment 5                           # one correction round: each pair, scored on the third
run width4 --width 4 --augment 19                             # a quarter of the operations, trained as long as width 8
run width4-seed1 --width 4 --augment 19 --seed 1
SETTINGS=plain,relative-0.2,tta,tta+relative-0.2
$PYTHON "$(dirname "$0")/loo.py" --data "$DATA" --out "$OUT/table" "$OUT"/baseline "$OUT"/baseline-seed1 \
  "$OUT"/intensity "$OUT"/dice+bce "$OUT"/context1 "$OUT"/context1-seed1 "$OUT"/context2 "$OUT"/batch32
$PYTHON "$(dirname "$0")/loo.py" --data "$DATA" --out "$OUT/table-15min" --settings $SETTINGS "$OUT"/baseline-15min
$PYTHON "$(dirname "$0")/loo.py" --data "$DATA" --out "$OUT/table-two" --settings $SETTINGS "$OUT"/two-scans
$PYTHON "$(dirname "$0")/loo.py" --data "$DATA" --out "$OUT/table-width4" --settings $SETTINGS "$OUT"/baseline \
  "$OUT"/baseline-seed1 "$OUT"/width4 "$OUT"/width4-seed1
$PYTHON "$(dirname "$0")/loo.py" --data "$DATA" --out "$OUT/table-size" \
  --settings plain,size-224,size-288,tta,tta+size-224 "$OUT"/baseline "$OUT"/baseline-seed1   # segment --slice-size
