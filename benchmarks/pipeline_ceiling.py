"""The pipeline's own ceiling: each reference mask taken through the model's preprocessing to the slice grid
(linear resampling, threshold 0.5, as training sees it) and back onto the scan's grid (linear, threshold
0.5, as segmentation does), then scored against itself. No model is involved, so a loss of voxels here is
the grid's, not the network's. Per structure: Dice and predicted/reference voxels.

    python benchmarks/pipeline_ceiling.py ../shared/data/ivd-mr-t2-lumbar ../shared/data/msd-hippocampus
    python benchmarks/pipeline_ceiling.py DATA --slice-size 128 256 512
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from extremeaug.data.preprocess import PLANE_AXIS, mask_to_slices, orient, resolve_plane, slice_grid, slices_to_scan


def round_trip(scan: sitk.Image, mask: sitk.Image, size: int) -> sitk.Image:
    """The mask as the model would learn it and as its perfect prediction would come back."""
    axis = PLANE_AXIS[resolve_plane(scan, "auto")]
    grid = slice_grid(orient(scan), axis, size)
    slices = mask_to_slices(orient(mask), grid, axis)
    back = slices_to_scan(slices, grid, axis, scan)
    out = sitk.Cast(back > 0.5, sitk.sitkUInt8)
    out.CopyInformation(scan)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="folders of *_image.nii.gz / *_mask.nii.gz pairs")
    parser.add_argument("--slice-size", type=int, nargs="+", default=[256])
    args = parser.parse_args()
    print("| data | slice size | structure | scans | Dice (min) | predicted / reference (min) |")
    print("|---|---|---|---|---|---|")
    for folder in map(Path, args.data):
        pairs = [(m.with_name(m.name.replace("_mask", "_image")), m) for m in sorted(folder.glob("*_mask.nii.gz"))]
        for size in args.slice_size:
            rows = {}
            for image, mask_path in pairs:
                scan, labels = sitk.ReadImage(str(image)), sitk.ReadImage(str(mask_path))
                reference = sitk.GetArrayViewFromImage(labels)
                for value in (v for v in np.unique(reference) if v):
                    mask = sitk.Cast(labels == int(value), sitk.sitkUInt8)
                    back = sitk.GetArrayFromImage(round_trip(scan, mask, size)).astype(bool)
                    ref = reference == value
                    dice = 2 * np.count_nonzero(back & ref) / (np.count_nonzero(back) + np.count_nonzero(ref))
                    rows.setdefault(int(value), []).append((dice, np.count_nonzero(back) / np.count_nonzero(ref)))
            for value, scores in sorted(rows.items()):
                d, r = np.array(scores).T
                print(f"| {folder.name} | {size} | {value} | {len(scores)} | {d.mean():.3f} ({d.min():.3f}) "
                      f"| {r.mean():.3f} ({r.min():.3f}) |")


if __name__ == "__main__":
    main()
