"""Engine benchmark (not a test): prints numbers for the machine it runs on.

1. training patches/s with on-the-fly augmentation vs augmentation off, and the share of step time
   spent augmenting;
2. peak memory at --augment 5 vs 50 (must be flat: nothing is stored per augmented copy);
3. segmentation seconds of a 67-slice scan: onnxruntime vs torch eager.

    python benchmarks/bench_engine.py [--device cpu|cuda] [--width W] [--batch-size B] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from extremeaug.common.files import write_bytes
from extremeaug.data.io import write_image
from extremeaug.data.phantom import make_phantom, write_phantoms
from extremeaug.data.preprocess import scan_to_slices, slices_to_scan
from extremeaug.inference.segmenter import Segmenter
from extremeaug.training.augment import AugmentConfig, augmented_batch, sample_params, step_generator
from extremeaug.training.dataset import Case
from extremeaug.training.train import DEFAULT_WIDTH, RunOptions, TrainConfig, Trainer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_speed(case: Case, device: str, width, batch: int, steps: int, work: Path) -> list:
    """Eager steps with augmentation on and off, timed in alternating blocks so drift hits both alike."""
    trainers = {aug: Trainer(TrainConfig(width=width, batch_size=batch, augmentation=aug), [case], [],
                             work / f"speed_{aug}", RunOptions(device=device, show_progress=False, compile="off"))
                for aug in (True, False)}
    dev = trainers[True].device
    parts = lambda t, k: t.order.parts(0, k)
    spent = {True: 0.0, False: 0.0}
    for k in range(5):                                   # warm-up (cuDNN autotune, allocator)
        for t in trainers.values():
            t.train_step(parts(t, k), 0.0)
    block = 5
    for start in range(5, 5 + steps, block):
        for aug, t in trainers.items():
            sync(dev)
            t0 = time.perf_counter()
            for k in range(start, start + block):
                t.train_step(parts(t, k), 0.0)
            sync(dev)
            spent[aug] += time.perf_counter() - t0
    n = len(range(5, 5 + steps, block)) * block
    results = []
    for aug, t in trainers.items():
        step_s = spent[aug] / n
        aug_cfg = AugmentConfig(enabled=aug)
        sync(dev)
        t0 = time.perf_counter()
        for k in range(n):
            params = sample_params(batch, aug_cfg, step_generator(0, k, dev), dev)
            augmented_batch(t.train_set.images, t.train_set.masks, t.train_set.patches[t.order.batch(0, k)], params)
        sync(dev)
        aug_s = (time.perf_counter() - t0) / n
        results.append({"augmentation": aug, "width": t.cfg.width, "batch_size": batch, "steps": n,
                        "patches_per_s": round(batch / step_s, 1), "step_ms": round(step_s * 1e3, 2),
                        "augment_ms": round(aug_s * 1e3, 2), "augment_share": round(aug_s / step_s, 4)})
    return results


PEAK = """
import json, resource, sys, torch
from extremeaug.training.dataset import Case
from extremeaug.training.train import RunOptions, TrainConfig, Trainer
image, label, out, device, augment, width, batch = sys.argv[1:8]
t = Trainer(TrainConfig(augment=int(augment), width=None if width == 'None' else int(width), batch_size=int(batch)),
            [Case(image, label)], [], out, RunOptions(device=device, show_progress=False))
if t.device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
for k in range(20):
    t.train_step(t.order.parts(0, k), 0.0)
gpu = torch.cuda.max_memory_allocated() / 2**20 if t.device.type == 'cuda' else None
print(json.dumps({"augment": int(augment), "steps_per_epoch": t.steps_per_epoch,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_gpu_mib": gpu}))
"""


def peak_memory(case: Case, device: str, width, batch: int, augment: int, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK, case.image, case.label, str(work / f"peak{augment}"), device,
                          str(augment), str(width), str(batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def onnx_device(device: str) -> str:
    """onnxruntime-gpu is too large to carry to the GPU check machine: without its CUDA provider, onnxruntime is
    measured on the CPU and the torch row is the GPU's number."""
    import onnxruntime as ort

    return device if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def segmentation_speed(model: Path, scan_path: Path, device: str, repeats: int = 3) -> dict:
    from extremeaug.data.io import read_scan
    from extremeaug.training.checkpoint import load_weights

    scan = read_scan(scan_path)
    seg = Segmenter(model, onnx_device(device))
    seg.segment(scan)                                      # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        seg.segment(scan)
    onnx_s = (time.perf_counter() - t0) / repeats
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    net = load_weights(model.with_name("model.pt")).to(dev)

    def torch_segment():
        slices, grid = scan_to_slices(scan, seg.prep)
        with torch.no_grad():
            prob = torch.cat([net.probabilities(torch.from_numpy(slices[s:s + 8, None]).to(dev)).cpu()
                              for s in range(0, len(slices), 8)])[:, 0].numpy()
        return slices_to_scan(prob, grid, seg.prep.axis, scan) > 0.5

    torch_segment()
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch_segment()
    torch_s = (time.perf_counter() - t0) / repeats
    return {"slices": scan.GetSize()[0], "onnxruntime_s": round(onnx_s, 3), "providers": seg.providers,
            "torch_device": dev.type, "torch_eager_s": round(torch_s, 3), "speedup": round(torch_s / onnx_s, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--width", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--image", help="training scan (default: a built-in phantom)")
    p.add_argument("--label")
    p.add_argument("--out", help="write the results here as JSON")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="extremeaug-bench-"))
    if a.image:
        case = Case(a.image, a.label)
    else:
        image, mask = write_phantoms(work / "data", 1)[0]
        case = Case(str(image), str(mask))
    dev = torch.device("cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu")
    width = a.width or DEFAULT_WIDTH[dev.type]
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_threads": torch.get_num_threads(),
                           "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
                           "torch": torch.__version__}, "case": case.image}
    results["training"] = training_speed(case, a.device, width, a.batch_size, a.steps, work)
    on, off = results["training"]
    results["augmentation_overhead"] = round(off["patches_per_s"] / on["patches_per_s"] - 1, 4)
    emit(results, a.out)
    results["memory"] = [peak_memory(case, a.device, width, a.batch_size, n, work) for n in (5, 50)]
    emit(results, a.out)
    # a 67-slice sagittal scan (the real data's size), segmented with a model of this width
    big = make_phantom(7, size=(67, 221, 221), spacing=(1.0, 1.0, 1.0))
    write_image(big.image, work / "scan67.nii.gz")
    Trainer(TrainConfig(width=width, epochs=1, augment=1), [case], [], work / "segmodel",
            RunOptions(device=a.device, show_progress=False, max_steps=2)).run()
    results["segmentation"] = segmentation_speed(work / "segmodel" / "model.onnx", work / "scan67.nii.gz", a.device)
    emit(results, a.out)


def emit(results: dict, out) -> None:
    """Print and write after every stage, so a stage that crashes or runs out of time keeps the ones before it."""
    text = json.dumps(results, indent=1)
    print(text, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_bytes(text.encode(), out)   # the engine's one write path: a full disk is one line, not a 0-byte file


if __name__ == "__main__":
    main()
