#!/usr/bin/env bash
# The GPU checks in two calls that fit the `device` tool's 15 minutes together (one H100/H200, Python 3.12 and
# torch there; SimpleITK travels as a wheel, onnxruntime-gpu (~244 MiB) does not fit the 64 MiB carry, so
# onnxruntime runs on the CPU there and the GPU's segmentation number is torch's). Prepare once, here, in the
# repository root:
#   echo /.whl/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl simpleitk==2.5.3
#   mkdir -p .gpu-data && cp ../shared/data/ivd-mr-t2-lumbar/case{11,20,25}_* .gpu-data/
# then run each with carry [".whl", ".gpu-data"]:
#   `bash benchmarks/gpu_check.sh`        speed (about 7 minutes, H200): the paper's protocol with an empty and
#       with a warm inductor cache and eagerly; patches/s per batch and compile mode (the fused step, the network
#       compiled alone, CUDA graphs); held-out Dice of the fused step against the eager one.
#   `bash benchmarks/gpu_check.sh width`  (about 6 minutes) width 8 and width 16 for the same 1.5 GPU minutes each
#       on case 11, scored on cases 20 and 25 (the width-16-on-CUDA question), then the CUDA tests.
# `DEVICE=cpu bash benchmarks/gpu_check.sh [width]` rehearses both on a CPU with a phantom, in minutes.
# (.gpu-data is an ignored copy for the device only: the data set never enters the repository.)
# Every stage writes its JSON as it goes, under a timeout of its own, so one that fails keeps the others.
set -uo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-bench-out/gpu}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/ExtremeAugSegment
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  D=.gpu-data; TRAIN="--image $D/case11_image.nii.gz --label $D/case11_mask.nii.gz"
  TESTS="--test $D/case20_image.nii.gz $D/case20_mask.nii.gz --test $D/case25_image.nii.gz $D/case25_mask.nii.gz"
  EPOCHS=6; STEPS=40; LR_EPOCHS=8; MINUTES=1.5; SEG="--seg-image $D/case20_image.nii.gz"; AUG=50; B=256; B2=512
  COMPILE=auto
else   # the rehearsal: the same stages, a phantom, a few steps
  export PYTHONPATH=$PWD/ExtremeAugSegment
  P=$OUT/phantom; python3 -c "from extremeaug.data.phantom import write_phantoms; write_phantoms('$P', 3)"
  TRAIN="--image $P/phantom_0_image.nii.gz --label $P/phantom_0_mask.nii.gz"
  TESTS="--test $P/phantom_1_image.nii.gz $P/phantom_1_mask.nii.gz"
  EPOCHS=2; STEPS=3; LR_EPOCHS=1; MINUTES=0.2; SEG=""; AUG=2; B=16; B2=32
  COMPILE=on   # the CPU compiles only when asked
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/extremeaug-inductor   # empty on a fresh machine: the first start is cold
RUN="--device $DEVICE --augment $AUG --epochs $EPOCHS --batch-size $B --compile $COMPILE"
if [ "${1:-}" = width ]; then
  timeout 260 python3 benchmarks/gpu_lr_check.py $TRAIN $TESTS --device "$DEVICE" --lr 3e-3 --width 8 16 \
    --augment $AUG --batch-size $B --minutes $MINUTES --epochs 1000 --out "$OUT/width.json" > "$OUT/width.log" 2>&1
  # the CUDA tests: compiled training, resume, the onnxruntime provider, out of memory
  [ "$DEVICE" = cuda ] && timeout 120 python3 -m pytest -m cuda -q -p no:cacheprovider Testing/test_cuda.py \
    > "$OUT/pytest_cuda.txt" 2>&1
  tail -c 1500 "$OUT/width.json"; tail -c 600 "$OUT/width.log"; tail -n 12 "$OUT"/pytest_cuda.txt 2>/dev/null
  exit 0
fi
rm -rf "$TORCHINDUCTOR_CACHE_DIR"
# 1. the paper's protocol (1 scan, 50x) at the defaults (the fused compiled step) for EPOCHS epochs, projected to
#    100: with an empty inductor cache, then in a new process with the cache it left, then eagerly
timeout 150 python3 benchmarks/bench_gpu_protocol.py $TRAIN $SEG $RUN --steps 10 --stages AD \
  --out "$OUT/protocol_cold.json" > "$OUT/protocol_cold.log" 2>&1
timeout 70 python3 benchmarks/bench_gpu_protocol.py $TRAIN $RUN --steps 10 --stages A \
  --out "$OUT/protocol_warm.json" > "$OUT/protocol_warm.log" 2>&1
timeout 60 python3 benchmarks/bench_gpu_protocol.py $TRAIN $RUN --steps 10 --stages A --compile off \
  --out "$OUT/protocol_eager.json" > "$OUT/protocol_eager.log" 2>&1
# 2. where the step's time goes: batch sizes and compile modes (the first starts from the cache of stage 1)
timeout 150 python3 benchmarks/gpu_batch_sweep.py $TRAIN --device "$DEVICE" --steps $STEPS --config $B:default \
  --config $B2:default --config $B:network --config $B:reduce-overhead \
  --out "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
# 3. held-out Dice: the fused compiled step against the eager one, same seed and draws
timeout 100 python3 benchmarks/gpu_lr_check.py $TRAIN $TESTS --device "$DEVICE" --lr 3e-3 --compile on off \
  --epochs $LR_EPOCHS --augment $AUG --batch-size $B --out "$OUT/fused_dice.json" > "$OUT/fused_dice.log" 2>&1
tail -c 400 "$OUT"/*.log; tail -c 2500 "$OUT/sweep.json" "$OUT/fused_dice.json"
