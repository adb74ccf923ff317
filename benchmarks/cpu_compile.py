"""Would `torch.compile` pay on the CPU? The engine's training step (width, batch 16, 128 x 128 patches, Dice
loss, Adam) eager and compiled, in one process: the compiled step's warm-up (compilation) and both step times,
and the training length from which compiling comes out ahead.

    python benchmarks/cpu_compile.py [--width 8] [--steps 20] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_engine import emit

from extremeaug.networks.model import ResUNet
from extremeaug.training.losses import segmentation_loss

WARMUP_STEPS = 3


def timed_steps(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple:
    """(seconds of the first WARMUP_STEPS steps, seconds per step after them)."""
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    t0 = time.perf_counter()
    for i in range(WARMUP_STEPS + steps):
        if i == WARMUP_STEPS:
            t1 = time.perf_counter()
        loss = segmentation_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return t1 - t0, (time.perf_counter() - t1) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 128, 128), (torch.rand(16, 1, 128, 128) > 0.7).float()
    eager_warm, eager = timed_steps(ResUNet(a.width), x, y, a.steps)
    compiled_warm, compiled = timed_steps(torch.compile(ResUNet(a.width)), x, y, a.steps)
    _, eager_again = timed_steps(ResUNet(a.width), x, y, a.steps)   # the machine may have changed meanwhile
    eager = (eager + eager_again) / 2
    extra = compiled_warm - eager_warm
    report = {"width": a.width, "threads": torch.get_num_threads(), "eager_step_s": round(eager, 3),
              "compiled_step_s": round(compiled, 3), "compile_warmup_s": round(extra, 1),
              "break_even_steps": round(extra / (eager - compiled)) if eager > compiled else None}
    report["break_even_minutes"] = (round(report["break_even_steps"] * eager / 60, 1)
                                    if report["break_even_steps"] else None)
    emit(report, a.out)


if __name__ == "__main__":
    main()
