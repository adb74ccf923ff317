"""Does the augmentation's mask interpolation shrink structures? Each structure's slices (on the model's
256 x 256 grid) are rotated and scaled as training does (one bilinear `grid_sample`, then the mask
thresholded at 0.5) over the whole slice, without shift, and the mask's area is compared with the area the
transform should give (the input's times scale squared), both thresholded and before the threshold.
Only slices whose structure stays well inside the field of view under the largest scale are counted.

    python benchmarks/augment_mask_bias.py ../shared/data/ivd-mr-t2-lumbar ../shared/data/msd-hippocampus
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from extremeaug.common.config import SCALE_RANGE
from extremeaug.data.preprocess import PLANE_AXIS, mask_to_slices, orient, resolve_plane, slice_grid
from extremeaug.training.augment import AffineParams, augmented_batch

DRAWS = 16


def areas(slices: torch.Tensor, draws: int, generator: torch.Generator):
    """(expected, thresholded, soft) areas of each slice under `draws` random rotations and scales."""
    n, size = slices.shape[0], slices.shape[-1]
    u = torch.rand(n * draws, 2, generator=generator)
    angle = (2 * u[:, 0] - 1) * math.radians(20.0)
    scale = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[:, 1]
    params = AffineParams(angle, scale, torch.zeros(n * draws, 2))
    rows = torch.stack([torch.arange(n).repeat_interleave(draws), torch.zeros(n * draws, dtype=torch.int64),
                        torch.zeros(n * draws, dtype=torch.int64)], dim=1)
    soft, hard = augmented_batch(slices, slices, rows, params, patch=size)   # the mask as image: unthresholded
    expected = slices.sum(dim=(1, 2)).repeat_interleave(draws) * scale ** 2
    return expected, hard.sum(dim=(1, 2, 3)), soft.sum(dim=(1, 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+")
    parser.add_argument("--slice-size", type=int, default=256)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    print("| data | structure | slices | thresholded / expected area (5th percentile) | soft / expected |")
    print("|---|---|---|---|---|")
    for folder in map(Path, args.data):
        per = {}
        for mask_path in sorted(folder.glob("*_mask.nii.gz")):
            scan = sitk.ReadImage(str(mask_path).replace("_mask", "_image"))
            labels = sitk.ReadImage(str(mask_path))
            axis = PLANE_AXIS[resolve_plane(scan, "auto")]
            grid = slice_grid(orient(scan), axis, args.slice_size)
            for value in (int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v):
                slices = mask_to_slices(orient(sitk.Cast(labels == value, sitk.sitkUInt8)), grid, axis)
                inside = []
                for s in slices:
                    ys, xs = np.nonzero(s)
                    margin = args.slice_size * (1 - 1 / SCALE_RANGE[1]) / 2 + 4   # out of view when scaled up
                    if len(ys) and min(ys.min(), xs.min()) > margin and \
                            max(ys.max(), xs.max()) < args.slice_size - margin:
                        inside.append(s)
                if inside:
                    e, h, so = areas(torch.from_numpy(np.stack(inside)), DRAWS, generator)
                    per.setdefault(value, []).append((h / e, so / e))
        for value, parts in sorted(per.items()):
            hard = torch.cat([p[0] for p in parts]).numpy()
            soft = torch.cat([p[1] for p in parts]).numpy()
            print(f"| {folder.name} | {value} | {len(hard) // DRAWS} | {hard.mean():.4f} ({np.percentile(hard, 5):.3f}) "
                  f"| {soft.mean():.4f} |")


if __name__ == "__main__":
    main()
