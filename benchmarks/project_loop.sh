#!/usr/bin/env bash
# Measured result (docs/results.md): the bootstrap loop on the real lumbar MRIs, through `extremeaug project`.
# case 11 manual -> train v1 -> segment 20 and 25 -> accept 20 (its real mask stands in for the physician's
# correction of v1's prediction) -> retrain v2 on 11 + 20 -> segment 25 with v2 -> accept 25 as the held-out
# validation case (the correction of v2's prediction) -> validation Dice of v1 and v2 on 25, and the size of
# each version's correction (project cases ... --json, the third panel of models --plot).
# Usage: benchmarks/project_loop.sh [DATA_DIR] [OUT_DIR]   (BUDGET=minutes per training, DEVICE=cpu|cuda|auto)
set -euo pipefail
DATA=${1:-../shared/data/ivd-mr-t2-lumbar}
OUT=${2:-bench-out/project-loop}
BUDGET=${BUDGET:-6}
DEVICE=${DEVICE:-cpu}
EXTREMEAUG=${EXTREMEAUG:-extremeaug}
P="$OUT/project"
rm -rf "$OUT" && mkdir -p "$OUT"
set -x
$EXTREMEAUG project init "$P" --merge-labels   # all discs as one structure, as in docs/results.md section 6
$EXTREMEAUG project add "$P" "$DATA/case11_image.nii.gz" --label "$DATA/case11_mask.nii.gz" --id case11
$EXTREMEAUG project add "$P" "$DATA/case20_image.nii.gz" --id case20
$EXTREMEAUG project add "$P" "$DATA/case25_image.nii.gz" --id case25
$EXTREMEAUG project train "$P" --time-budget "$BUDGET" --device "$DEVICE" --wait 2> "$OUT/train_v1.log"
$EXTREMEAUG project segment "$P" case20 case25 --device "$DEVICE"
$EXTREMEAUG project suggest "$P"
$EXTREMEAUG project accept "$P" case20 --label "$DATA/case20_mask.nii.gz"
$EXTREMEAUG project train "$P" --time-budget "$BUDGET" --device "$DEVICE" --wait 2> "$OUT/train_v2.log"
$EXTREMEAUG project segment "$P" case25 --device "$DEVICE"
$EXTREMEAUG project accept "$P" case25 --label "$DATA/case25_mask.nii.gz" --split validation
$EXTREMEAUG project models "$P" --device "$DEVICE" --plot "$OUT/versions.png"
$EXTREMEAUG project models "$P" --json --no-rescore > "$OUT/models.json"
$EXTREMEAUG project cases "$P" case20 --json > "$OUT/case20.json"
$EXTREMEAUG project cases "$P" case25 --json > "$OUT/case25.json"
$EXTREMEAUG project cases "$P" case20
$EXTREMEAUG project cases "$P" case25
$EXTREMEAUG project status "$P"
$EXTREMEAUG project verify "$P"
