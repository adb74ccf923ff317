"""The uncertainty map beside the errors it should point at, on the sagittal slice with the most wrong voxels
(docs/figures/uncertainty_overlay.png).

Usage: python benchmarks/uncertainty_figure.py MODEL.onnx SCAN MASK OUT.png [--tta]
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from extremeaug.data.io import read_binary, read_scan  # noqa: E402
from extremeaug.data.preprocess import orient  # noqa: E402
from extremeaug.evaluation.metrics import uncertainty_scores  # noqa: E402
from extremeaug.inference.segmenter import Segmenter  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("scan")
    ap.add_argument("mask")
    ap.add_argument("out")
    ap.add_argument("--tta", action="store_true")
    a = ap.parse_args()
    scan, ref = read_scan(a.scan), read_binary(a.mask)
    mask, _, unsure = Segmenter(a.model, "cpu").analyse(scan, tta=a.tta)
    scores = uncertainty_scores(unsure, mask, ref)
    image, u, p, r = (sitk.GetArrayFromImage(orient(x)) for x in (scan, unsure, mask, ref))   # [S-I, P-A, L-R]
    wrong = (p > 0) != (r > 0)
    k = int(wrong.sum(axis=(0, 1)).argmax())                 # the sagittal slice with the most wrong voxels
    spacing = orient(scan).GetSpacing()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax in axes:
        ax.imshow(image[::-1, :, k], cmap="gray", aspect=spacing[2] / spacing[1])
        ax.axis("off")
    shown = np.ma.masked_less(u[::-1, :, k], 0.1)           # as the Slicer module draws it: u >= 0.1 only
    axes[0].imshow(shown, cmap="inferno", vmin=0, vmax=1, alpha=0.7, aspect=spacing[2] / spacing[1])
    axes[0].set_title(f"uncertainty (>= 0.1); AUROC {scores['auroc']:.2f}, {100 * scores['captured']:.0f} % of the "
                      "wrong voxels\nin the most uncertain 5 % of the prediction's 5 mm neighbourhood", fontsize=9)
    axes[1].contour(p[::-1, :, k] > 0, [0.5], colors="red", linewidths=1.0)
    axes[1].contour(r[::-1, :, k] > 0, [0.5], colors="lime", linewidths=1.0, linestyles="dashed")
    axes[1].imshow(np.ma.masked_equal(wrong[::-1, :, k].astype(np.uint8), 0), cmap="cool", vmin=0, vmax=1,
                   alpha=0.8, aspect=spacing[2] / spacing[1])
    axes[1].set_title("wrong voxels (magenta); red: model, green dashed: reference", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(f"{a.out}: slice {k}, {scores}")


if __name__ == "__main__":
    main()
