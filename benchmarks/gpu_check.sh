#!/usr/bin/env bash
# The GPU checks in one command that fits the `device` tool's 15 minutes (one H100/H200, Python 3.12 and torch
# there; SimpleITK travels as a wheel, onnxruntime-gpu (~244 MiB) does not fit the 64 MiB carry, so onnxruntime
# runs on the CPU there and the GPU's segmentation number is torch's). Prepare once, here, in the repository root:
#   echo /.whl/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl simpleitk==2.5.3
#   mkdir -p .gpu-data && cp ../shared/data/ivd-mr-t2-lumbar/case{11,20,25}_* .gpu-data/
# then run it with carry [".whl", ".gpu-data"] and the command `bash benchmarks/gpu_check.sh` (5 minutes, H200).
# `bash benchmarks/gpu_check.sh width` (a second call, about 5 minutes) trains width 8 and width 16 for the same
# 1.5 GPU minutes each on case 11 and scores them on cases 20 and 25: the width-8-everywhere question of issue 14.
# (.gpu-data is an ignored copy for the device only: the data set never enters the repository.)
# Every stage writes its JSON as it goes, under a timeout of its own, so one that fails keeps the others.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/ExtremeAugSegment PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUT=${OUT:-bench-out/gpu}
mkdir -p "$OUT"
D=.gpu-data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if [ "${1:-}" = width ]; then
  timeout 420 python3 benchmarks/gpu_lr_check.py --image $D/case11_image.nii.gz --label $D/case11_mask.nii.gz \
    --test $D/case20_image.nii.gz $D/case20_mask.nii.gz --test $D/case25_image.nii.gz $D/case25_mask.nii.gz \
    --lr 3e-3 --width 8 16 --minutes 1.5 --epochs 1000 --out "$OUT/width.json" > "$OUT/width.log" 2>&1
  tail -c 1500 "$OUT/width.json"; tail -c 600 "$OUT/width.log"
  exit 0
fi
# 1. the paper's protocol (1 scan, 50x) at the CUDA defaults for 6 epochs, projected to 100, and segmentation
timeout 200 python3 benchmarks/bench_gpu_protocol.py --image $D/case11_image.nii.gz --label $D/case11_mask.nii.gz \
  --seg-image $D/case20_image.nii.gz --epochs 6 --steps 20 --stages AD --out "$OUT/protocol.json" \
  > "$OUT/protocol.log" 2>&1
# 2. the CUDA tests: compiled training, resume, the onnxruntime provider, out of memory
timeout 130 python3 -m pytest -m cuda -q -p no:cacheprovider Testing/test_cuda.py > "$OUT/pytest_cuda.txt" 2>&1
# 3. the learning rate at batch 256 on real held-out scans
timeout 170 python3 benchmarks/gpu_lr_check.py --image $D/case11_image.nii.gz --label $D/case11_mask.nii.gz \
  --test $D/case20_image.nii.gz $D/case20_mask.nii.gz --test $D/case25_image.nii.gz $D/case25_mask.nii.gz \
  --lr 3e-3 1e-2 --epochs 8 --out "$OUT/lr.json" > "$OUT/lr.log" 2>&1
# 4. the same protocol eagerly (--compile off), for the compile's share
timeout 70 python3 benchmarks/bench_gpu_protocol.py --image $D/case11_image.nii.gz --label $D/case11_mask.nii.gz \
  --epochs 6 --steps 10 --stages A --compile off --out "$OUT/protocol_eager.json" > "$OUT/protocol_eager.log" 2>&1
tail -n 12 "$OUT"/pytest_cuda.txt; tail -c 600 "$OUT"/*.log
# (docs/results.md section 3 also ran, in a call of its own: benchmarks/gpu_batch_sweep.py --image ... --label ...
#  --config 512:default --config 256:reduce-overhead --steps 40)
