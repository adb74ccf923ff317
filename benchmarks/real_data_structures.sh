#!/usr/bin/env bash
# docs/results.md section 10: one structure (all discs) vs five (one per level), both trained on case 11 alone
# under the same budget, one after the other on the same machine; then a table of union and per-level Dice.
# Usage: benchmarks/real_data_structures.sh [DATA_DIR] [OUT_DIR]   (BUDGET=minutes, DEVICE=cpu|cuda|auto)
set -euo pipefail
DATA=${1:-../shared/data/ivd-mr-t2-lumbar}
OUT=${2:-bench-out/structures}
PYTHON=${PYTHON:-python}
HERE=$(dirname "$0")
LABELS=merge "$HERE/real_data.sh" "$DATA" "$OUT/binary"
LABELS=each "$HERE/real_data.sh" "$DATA" "$OUT/levels"
$PYTHON "$HERE/structures_table.py" "$OUT"
