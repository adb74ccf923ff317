#!/usr/bin/env bash
# The GPU checks in one command, for the `device` tool's machine (one H100/H200, Python 3.12, torch there;
# SimpleITK and onnxruntime-gpu travel as wheels). Prepare once, here, in the repository root:
#   echo /.whl/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl"
#   python3 -m pip download $P simpleitk==VERSION onnxruntime-gpu==VERSION   # plus any Requires-Dist missing there
#   mkdir -p .gpu-data && cp ../shared/data/ivd-mr-t2-lumbar/case11_* ../shared/data/ivd-mr-t2-lumbar/case20_image.nii.gz .gpu-data/
# then run it with carry [".whl", ".gpu-data"] and the command `bash benchmarks/gpu_check.sh`.
# (.gpu-data is an ignored copy for the device only: the data set never enters the repository.)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/ExtremeAugSegment PYTHONUNBUFFERED=1
OUT=${OUT:-bench-out}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 330 python3 benchmarks/bench_gpu_protocol.py --image .gpu-data/case11_image.nii.gz \
  --label .gpu-data/case11_mask.nii.gz --seg-image .gpu-data/case20_image.nii.gz --workers 12 \
  --out "$OUT/gpu_protocol.json" 2>&1 | tee "$OUT/gpu_protocol.log"
timeout 120 python3 benchmarks/bench_engine.py --device cuda --batch-size 256 --out "$OUT/bench_gpu.json" \
  > "$OUT/bench_gpu.log" 2>&1
timeout 120 python3 -m pytest -x -q -p no:cacheprovider Testing/test_train.py Testing/test_infer.py \
  Testing/test_augment.py 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt"
