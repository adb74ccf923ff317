"""Would the exported graph be faster with each ConvTranspose (2 x 2, stride 2) written as a 1 x 1 convolution to
4x the channels and a pixel shuffle (DepthToSpace)? The same arithmetic, so the outputs must agree; the
question is only onnxruntime's speed on this CPU (docs/results.md section 2).

    python benchmarks/upsample_check.py [--widths 4 8] [--repeats 6] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_engine import emit

from extremeaug.networks.export import onnx_bytes
from extremeaug.networks.model import ResUNet

SLICES = 67   # the real scans' sagittal slice count


class ShuffledUpsample(nn.Module):
    """A ConvTranspose2d(k=2, s=2) as a 1 x 1 convolution to 4 * cout channels, then a pixel shuffle."""

    def __init__(self, up: nn.ConvTranspose2d):
        super().__init__()
        cin, cout = up.weight.shape[:2]
        self.conv = nn.Conv2d(cin, cout * 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(up.weight.permute(1, 2, 3, 0).reshape(cout * 4, cin, 1, 1))
            self.conv.bias.copy_(up.bias.repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


def seconds_per_scan(session: ort.InferenceSession, x: np.ndarray) -> float:
    t = time.perf_counter()
    session.run(None, {"image": x})
    return (time.perf_counter() - t) / len(x) * SLICES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[4, 8])
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    x = np.random.rand(8, 1, 256, 256).astype(np.float32)
    report = {"slices": SLICES, "runs": []}
    for width in a.widths:
        net = ResUNet(width).eval()
        plain = ort.InferenceSession(onnx_bytes(net), providers=["CPUExecutionProvider"])
        for i, up in enumerate(net.upsample):
            net.upsample[i] = ShuffledUpsample(up)
        shuffled = ort.InferenceSession(onnx_bytes(net), providers=["CPUExecutionProvider"])
        diff = float(np.abs(plain.run(None, {"image": x})[0] - shuffled.run(None, {"image": x})[0]).max())
        pairs = [(seconds_per_scan(plain, x), seconds_per_scan(shuffled, x))   # alternating, so a change in the
                 for _ in range(a.repeats)]                                      # machine's speed hits both
        a_times, b_times = zip(*pairs)
        report["runs"].append({"width": width, "max_abs_diff": diff,
                               "convtranspose_s": round(float(np.median(a_times)), 3),
                               "conv_pixel_shuffle_s": round(float(np.median(b_times)), 3)})
        emit(report, a.out)


if __name__ == "__main__":
    main()
