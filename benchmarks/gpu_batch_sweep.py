"""Where the compiled GPU step's time goes: steady training patches/s of the engine's own step (augmentation,
compiled network, Dice, fused Adam) at several batch sizes and torch.compile modes. A rate that grows with
the batch means the step waits on the host (launches), which CUDA graphs ("reduce-overhead") remove; a flat
one means the GPU itself is the limit.

    python benchmarks/gpu_batch_sweep.py --image IMG --label MASK --config 256:default --config 512:default \\
        --config 256:reduce-overhead --out sweep.json
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
from extremeaug.training.train import RunOptions, TrainConfig, Trainer  # noqa: E402


def measure(case: Case, batch: int, mode: str, device: str, steps: int, work: Path) -> dict:
    trainer = Trainer(TrainConfig(augment=50, batch_size=batch, merge_labels=True), [case], [], work,
                      RunOptions(device=device, show_progress=False, compile="off"))
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if mode != "eager":
        trainer.compiled = torch.compile(trainer.model, mode=None if mode == "default" else mode)
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
                   help="MODE: eager, default, reduce-overhead, max-autotune-no-cudagraphs")
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
