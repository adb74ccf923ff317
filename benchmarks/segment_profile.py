"""Where `extremeaug segment`'s seconds go on this machine: each stage of the command, in-process, timed
separately (any model of the width in question will do: its weights do not change the time). It also
reports the floor under the model stage: the network's floating-point operations for the scan (torch's flop
counter on the same architecture) over this machine's float32 matrix-multiply rate (numpy, 2048 x 2048).

    python benchmarks/segment_profile.py --model MODEL.onnx --image SCAN [--repeats 3] [--slice-size N] [--out FILE]

The whole command, imports and file writing included, is timed from the shell:
    /usr/bin/time -f "%e s" extremeaug segment --model MODEL.onnx --image SCAN --out mask.nii.gz
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

t_start = time.perf_counter()
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from extremeaug.data.io import read_scan, write_image  # noqa: E402
from extremeaug.data.preprocess import scan_to_slices, slices_to_scan  # noqa: E402
from extremeaug.inference.segmenter import Segmenter  # noqa: E402

IMPORTS_S = time.perf_counter() - t_start


def stages(model: str, image: str, out: Path, slice_size=None) -> tuple:
    """({stage: seconds}, the number of slices the model ran on)."""
    seconds, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    segmenter = Segmenter(model, "cpu", slice_size)
    lap("onnxruntime session")
    scan = read_scan(image)
    lap("read scan")
    slices, grid = scan_to_slices(scan, segmenter.prep)
    lap("slices: orient, resample, histogram match")
    probs = segmenter._slice_probabilities(slices)
    lap("model")
    volume = np.stack([sitk.GetArrayFromImage(slices_to_scan(probs[:, k], grid, segmenter.prep.axis, scan))
                       for k in range(probs.shape[1])])
    lap("back onto the scan's grid")
    mask, _, _ = segmenter.decide(volume, scan, uncertainty=False)   # as `segment` without --uncertainty
    lap("threshold, components")
    write_image(mask, out)
    lap("write mask")
    return seconds, len(slices)


def model_gflop(segmenter: Segmenter, n_slices: int) -> float:
    """The network's floating-point operations (a multiply-add counts 2) on the scan's slices."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from extremeaug.networks.model import ResUNet

    net = ResUNet(int(segmenter.metadata["width"]), segmenter.session.get_inputs()[0].shape[1],
                  classes=len(segmenter.labels)).eval()
    size = segmenter.prep.slice_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, net.in_channels, size, size))
    return counter.get_total_flops() * n_slices / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply rate (numpy's BLAS, all cores), best of `repeats`."""
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slice-size", type=int, help="as `segment --slice-size` (default: the model's)")
    p.add_argument("--out")
    a = p.parse_args()
    runs, counts = zip(*(stages(a.model, a.image, Path("segment_profile_mask.nii.gz"), a.slice_size)
                         for _ in range(a.repeats)))
    Path("segment_profile_mask.nii.gz").unlink()
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    gflop = model_gflop(Segmenter(a.model, "cpu", a.slice_size), counts[0])
    peak = matmul_gflops()
    text = json.dumps({"imports_s": round(IMPORTS_S, 3), "runs": runs, "median_s": median,
                       "model_gflop": round(gflop, 1), "model_gflops_reached": round(gflop / median["model"], 1),
                       "matmul_gflops": round(peak, 1), "model_floor_s": round(gflop / peak, 3)}, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
