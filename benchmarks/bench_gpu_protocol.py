"""The paper's protocol (1 scan, 50x, 100 epochs) on one GPU, and the two older ways to feed it.

A. on the fly (the engine): the whole protocol through `train()` — wall time, augmented patches/s,
   peak GPU memory; the share of step time spent augmenting comes from bench_engine's alternating
   aug-on/aug-off blocks;
B. per-sample augmentation on the CPU in DataLoader workers (one affine resample per patch, batches
   copied to the GPU): STEPS steps timed, the protocol's time projected from them;
C. a pre-generated N-fold copy in host memory (the paper's way): generation time, its size, STEPS
   training steps from it, the protocol's time projected (generation included);
D. segmentation of a 67-slice scan: onnxruntime (CUDA provider if installed, else CPU) and torch eager.

    python benchmarks/bench_gpu_protocol.py --image IMG --label MASK --out gpu.json      # on the GPU
    python benchmarks/bench_gpu_protocol.py --device cpu --epochs 1 --augment 2 --steps 4 --workers 1
                                            # the same code paths on a CPU, in a minute
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit, segmentation_speed, sync, training_speed  # noqa: E402

from extremeaug.common.config import Compile  # noqa: E402
from extremeaug.data.phantom import write_phantoms  # noqa: E402
from extremeaug.training.augment import AugmentConfig, augmented_batch, sample_params  # noqa: E402
from extremeaug.training.dataset import Case  # noqa: E402
from extremeaug.training.train import RunOptions, TrainConfig, Trainer, train  # noqa: E402

PAPER_EPOCHS = 100


class PerSampleAugment(torch.utils.data.Dataset):
    """What a DataLoader pipeline does: each worker transforms one patch at a time on the CPU."""

    def __init__(self, images, masks, patches, augment: int, seed: int = 0):
        self.images, self.masks, self.patches, self.augment, self.seed = images, masks, patches, augment, seed

    def __len__(self):
        return len(self.patches) * self.augment

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        params = sample_params(1, AugmentConfig(), g, torch.device("cpu"))
        x, y = augmented_batch(self.images, self.masks, self.patches[i % len(self.patches)][None], params)
        return x[0], y[0]


def timed_steps(trainer: Trainer, batches, steps: int) -> float:
    """Seconds per optimiser step over `steps` steps after 3 warm-up steps."""
    it = iter(batches)
    for _ in range(3):
        x, y = next(it)
        trainer.optimise(x.to(trainer.device, non_blocking=True), y.to(trainer.device, non_blocking=True), 0.0)
    sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        trainer.optimise(x.to(trainer.device, non_blocking=True), y.to(trainer.device, non_blocking=True), 0.0)
    sync(trainer.device)
    return (time.perf_counter() - t0) / steps


def stored_batches(copy_x, copy_y, order, batch: int, pin: bool):
    """Random batches from the stored copy, as a training loop over it would draw them."""
    k = 0
    while True:
        idx = order[(k * batch) % len(order):][:batch]
        k += 1
        x = copy_x[idx]
        yield (x.pin_memory() if pin else x), copy_y[idx].float()


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image")
    p.add_argument("--label")
    p.add_argument("--seg-image", help="scan to segment in D (default: --image)")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--augment", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=100, help="timed steps for B and C")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers for B")
    p.add_argument("--stages", default="ABCD", help="which of A, B, C, D to run (default: all)")
    p.add_argument("--compile", default="auto", choices=Compile.values(), help="torch.compile (auto: on CUDA)")
    p.add_argument("--out")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="extremeaug-gpu-"))
    if not a.image:
        a.image, a.label = map(str, write_phantoms(work / "data", 1)[0])
    case, dev = Case(a.image, a.label), torch.device(a.device)
    cfg = TrainConfig(augment=a.augment, epochs=a.epochs, batch_size=a.batch_size, width=a.width, merge_labels=True)
    r = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
         "case": a.image, "augment": a.augment, "epochs": a.epochs, "batch_size": a.batch_size, "compile": a.compile}
    opts = RunOptions(device=a.device, show_progress=False, compile=a.compile)
    if "A" in a.stages:
        on_the_fly(a, r, cfg, case, dev, opts, work)
    if "B" in a.stages or "C" in a.stages:
        trainer = Trainer(cfg, [case], [], work / "feeds", opts)
        tensors = [t.cpu() for t in (trainer.train_set.images, trainer.train_set.masks, trainer.train_set.patches)]
        if "B" in a.stages:
            dataloader_workers(a, r, trainer, dev, *tensors)
        if "C" in a.stages:
            pregenerated_copy(a, r, trainer, dev, *tensors)
    if "D" in a.stages:
        # D. segmentation of the 67-slice scan: onnxruntime (its CUDA provider where onnxruntime-gpu is installed,
        # else the CPU) and torch eager on the device
        if not (work / "protocol" / "model.onnx").exists():
            train(cfg, [case], [], work / "protocol", RunOptions(device=a.device, show_progress=False, max_steps=2))
        r["D_segmentation"] = segmentation_speed(work / "protocol" / "model.onnx", Path(a.seg_image or a.image),
                                                 a.device)
        emit(r, a.out)


def on_the_fly(a, r: dict, cfg: TrainConfig, case: Case, dev: torch.device, opts: RunOptions, work: Path) -> None:
    """A: the protocol through `train()`. The first epoch holds torch.compile's one-off compilation, so the
    steady rate is the median of the later epochs, and the 100-epoch time is projected from both."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, [case], [], work / "protocol", opts)
    wall = time.perf_counter() - t0
    last = result.history[-1]
    patches = last["step"] * a.batch_size
    rates = [row["patches_per_s"] for row in result.history]
    steady = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    epoch_s = patches / len(rates) / steady
    first_s = result.history[0]["elapsed_s"]
    r["A_on_the_fly"] = {"wall_s": round(wall, 1), "training_s": last["elapsed_s"], "steps": last["step"],
                         "patches_per_s": round(patches / last["elapsed_s"], 1), "steady_patches_per_s": steady,
                         "patches_per_s_by_epoch": rates, "first_epoch_extra_s": round(first_s - epoch_s, 1),
                         "paper_protocol_projected_s":
                             round(wall - last["elapsed_s"] + first_s + (PAPER_EPOCHS - 1) * epoch_s, 1)
                         if a.augment == 50 else None, "train_dice": last["train_dice"],
                         "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                         if dev.type == "cuda" else None, "peak_rss_gib": round(rss_gib(), 2)}
    emit(r, a.out)
    speed = training_speed(case, a.device, cfg.width, a.batch_size, max(a.steps // 2, 5), work / "speed")
    r["A_on_the_fly"]["augment_share_eager"] = speed[0]["augment_share"]
    r["A_on_the_fly"]["aug_on_off_patches_per_s_eager"] = [s["patches_per_s"] for s in speed]
    emit(r, a.out)


def dataloader_workers(a, r: dict, trainer: Trainer, dev: torch.device, images, masks, patches) -> None:
    """B: per-sample CPU augmentation in DataLoader workers."""
    loader = torch.utils.data.DataLoader(PerSampleAugment(images, masks, patches, a.augment), batch_size=a.batch_size,
                                         shuffle=True, num_workers=a.workers, pin_memory=dev.type == "cuda",
                                         drop_last=True, persistent_workers=a.workers > 0)
    step_s = timed_steps(trainer, loader, a.steps)
    r["B_dataloader_workers"] = {"workers": a.workers, "patches_per_s": round(a.batch_size / step_s, 1),
                                 "paper_protocol_projected_s": round(step_s * trainer.steps_per_epoch * PAPER_EPOCHS,
                                                                     1)}
    emit(r, a.out)


def pregenerated_copy(a, r: dict, trainer: Trainer, dev: torch.device, images, masks, patches) -> None:
    """C: the pre-generated N-fold copy in host memory (float32 images, uint8 masks)."""
    before = rss_gib()
    t0 = time.perf_counter()
    n = len(patches)
    copy_x = torch.empty(n * a.augment, 1, 128, 128)
    copy_y = torch.empty(n * a.augment, 1, 128, 128, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    for r_ in range(a.augment):
        for s in range(0, n, 512):
            rows = patches[s:s + 512]
            params = sample_params(len(rows), AugmentConfig(), g, torch.device("cpu"))
            x, y = augmented_batch(images, masks, rows, params)
            copy_x[r_ * n + s:r_ * n + s + len(rows)], copy_y[r_ * n + s:r_ * n + s + len(rows)] = x, y.to(torch.uint8)
    generate_s = time.perf_counter() - t0
    order = torch.randperm(len(copy_x))
    step_s = timed_steps(trainer, stored_batches(copy_x, copy_y, order, a.batch_size, dev.type == "cuda"), a.steps)
    r["C_pregenerated_copy"] = {"generate_s": round(generate_s, 1),
                                "copy_gib": round((copy_x.nbytes + copy_y.nbytes) / 2 ** 30, 2),
                                "rss_growth_gib": round(rss_gib() - before, 2),
                                "patches_per_s": round(a.batch_size / step_s, 1),
                                "paper_protocol_projected_s":
                                    round(generate_s + step_s * trainer.steps_per_epoch * PAPER_EPOCHS, 1)}
    emit(r, a.out)


if __name__ == "__main__":
    main()
