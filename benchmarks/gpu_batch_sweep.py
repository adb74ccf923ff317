"""Where the compiled GPU step's time goes: steady training patches/s of the engine's own step (augmentation,
network, Dice, fused Adam) at several batch sizes and ways of compiling it: `eager`; `network` (the network
alone compiled, augmentation and loss eager: the step before the fused one); and the fused step (augmentation,
network and loss in one graph) in torch.compile's modes `default`, `reduce-overhead` (CUDA graphs),
`max-autotune-no-cudagraphs`. A rate that grows with the batch means the step waits on the host (launches),
which CUDA graphs remove; a flat one means the GPU itself is the limit. `warm_up_s` holds the compilation:
with inductor's cache of an earlier process (TORCHINDUCTOR_CACHE_DIR) it is the cached start.

    python benchmarks/gpu_batch_sweep.py --image IMG --label MASK --config 256:network --config 256:default \\
        --config 512:default --config 256:reduce-overhead --out sweep.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit, sync  # noqa: E402

from extremeaug.training.dataset import Case  # noqa: E402
from extremeaug.training.step import TrainingStep, compile_step  # noqa: E402
from extremeaug.training.train import RunOptions, TrainConfig, Trainer  # noqa: E402


def measure(case: Case, batch: int, mode: str, device: str, steps: int, work: Path) -> dict:
    trainer = Trainer(TrainConfig(augment=50, batch_size=batch, merge_labels=True), [case], [], work,
                      RunOptions(device=device, show_progress=False, compile="off"))
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if mode == "network":
        trainer.compiled = TrainingStep(torch.compile(trainer.net), trainer.cfg.loss)
    elif mode != "eager":
        trainer.compiled = compile_step(trainer.step_fn, None if mode == "default" else mode)
    t0 = time.perf_counter()
    for k in range(3):                                   # compilation, cuDNN autotuning, graph capture
        trainer.train_step(trainer.order.parts(*divmod(k, trainer.steps_per_epoch)), 0.0)
    sync(trainer.device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in range(3, 3 + steps):
        trainer.train_step(trainer.order.parts(*divmod(k, trainer.steps_per_epoch)), 0.0)
    sync(trainer.device)
    step_s = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if trainer.device.type == "cuda" else None
    return {"batch": batch, "mode": mode, "warm_up_s": round(warm_s, 1), "step_ms": round(step_s * 1e3, 2),
            "patches_per_s": round(batch / step_s, 1), "peak_gpu_gib": None if peak is None else round(peak, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--config", action="append", required=True, metavar="BATCH:MODE",
                   help="MODE: eager, network, default, reduce-overhead, max-autotune-no-cudagraphs")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="extremeaug-sweep-"))
    rows = []
    for i, config in enumerate(a.config):
        batch, mode = config.split(":")
        rows.append(measure(Case(a.image, a.label), int(batch), mode, a.device, a.steps, work / str(i)))
        emit({"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "rows": rows}, a.out)


if __name__ == "__main__":
    main()
