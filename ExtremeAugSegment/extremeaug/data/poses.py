"""Test-time augmentation: a model's slice probabilities averaged over poses of the training's own family.

A model trained on one scan has seen its anatomy only under the augmentation's rotations and scales; averaging its
answer over a few such poses of a new scan (each mapped back) smooths out the poses it happens to read worse.
Segmentation (`inference.segmenter`) and the pseudo-labels of unlabeled scans (`training.pseudo`) both decide from
these averages when the model's `tta` setting is on, so a pseudo-label is what `segment` would have given.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk

POSES = ((0.0, 1.0), (-10.0, 1.0), (10.0, 1.0), (0.0, 0.9), (0.0, 1.1))   # (degrees, scale)


def averaged_over_poses(slices: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`predict` ([n, ..., S, S] slices -> [n, K, S, S] probabilities) averaged over POSES: each pose's slices
    through `predict`, its probabilities mapped back; a pixel averages over the poses that saw it."""
    total, weight = None, np.zeros((1, 1) + slices.shape[-2:], np.float32)
    ones = np.ones((1,) + slices.shape[-2:], np.float32)
    for angle, scale in POSES:
        probs = warp(predict(warp(slices, angle, scale)), angle, scale, inverse=True)
        total = probs if total is None else total + probs
        weight += warp(ones, angle, scale, inverse=True)[:, None]   # where the pose saw the slice
    return total / np.maximum(weight, 1e-6)


def warp(stack: np.ndarray, angle_deg: float, scale: float, inverse: bool = False) -> np.ndarray:
    """Rotate every slice of [n, S, S] (or [n, K, S, S]) by `angle_deg` and scale it by `scale` about its centre,
    as training's augmentation does (linear interpolation, zeros outside); `inverse` maps such a result back."""
    if angle_deg == 0 and scale == 1:
        return stack
    shape = stack.shape
    volume = sitk.GetImageFromArray(np.ascontiguousarray(stack.reshape((-1,) + shape[-2:]), np.float32))
    a, k = np.radians(angle_deg), (scale if inverse else 1.0 / scale)
    sign = -1.0 if inverse else 1.0
    transform = sitk.AffineTransform(3)   # output point -> input point, in the slice plane only
    transform.SetMatrix([k * np.cos(a), sign * k * np.sin(a), 0.0, -sign * k * np.sin(a), k * np.cos(a), 0.0,
                         0.0, 0.0, 1.0])
    transform.SetCenter([(shape[-1] - 1) / 2.0, (shape[-2] - 1) / 2.0, 0.0])
    out = sitk.Resample(volume, volume, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).reshape(shape)
