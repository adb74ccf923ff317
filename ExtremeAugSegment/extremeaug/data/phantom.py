"""A synthetic lumbar-spine phantom: sagittal T2-like volumes with intervertebral disc masks.

Vertebral bodies, discs (bright nucleus, darker annulus), the CSF-filled canal with the cord,
posterior elements, subcutaneous fat, noise and a smooth bias field, with random pose (tilt, shift,
lordosis), anatomy (disc heights, vertebral size) and contrast. The mask labels the discs 1 (how many show
varies with the pose, so a level number would not name the same disc in two phantoms); with `structures`
it labels three structures (STRUCTURES: discs 1, vertebral bodies 2, the spinal canal 3). The geometry is a
thick-slice sagittal acquisition.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
import SimpleITK as sitk

from .io import write_image

SIZE = (24, 128, 160)        # voxels: left-right, anterior-posterior, inferior-superior
SPACING = (3.0, 1.5, 1.5)    # mm
STRUCTURES = {1: "intervertebral disc", 2: "vertebral body", 3: "spinal canal"}


@dataclass
class Phantom:
    image: sitk.Image
    mask: sitk.Image


def _superellipse(a: np.ndarray, b: np.ndarray, c: np.ndarray, p: float) -> np.ndarray:
    """Inside-ness of a box-like solid: |a|^2 + |b|^2 + |c|^p < 1 (a, b, c already scaled)."""
    return a ** 2 + b ** 2 + np.abs(c) ** p


def make_phantom(seed: int, size: Tuple[int, int, int] = SIZE,
                 spacing: Tuple[float, float, float] = SPACING, structures: bool = False) -> Phantom:
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip((nz, ny, nx), spacing[::-1])],
                          indexing="ij")
    # pose: tilt in the sagittal plane, shift, lordosis
    tilt = np.radians(rng.uniform(-10, 10))
    y0, z0 = rng.uniform(10, 30), rng.uniform(-12, 12)
    yy, zz = y - y0, z - z0
    u = np.cos(tilt) * zz + np.sin(tilt) * yy            # along the spine (superior +)
    v = -np.sin(tilt) * zz + np.cos(tilt) * yy           # anterior-posterior (posterior +)
    v = v + rng.uniform(0.0, 0.003) * u ** 2             # lordosis: the ends bend posteriorly
    lr = x - rng.uniform(-3, 3)

    period = rng.uniform(29, 35)
    disc_h = rng.uniform(7.5, 10.5)
    half_w, half_d = rng.uniform(20, 25), rng.uniform(15, 19)
    phase = rng.uniform(0, period)
    img = np.full(z.shape, 0.28, np.float32)                       # muscle / soft tissue
    img[v > 62] = 0.75                                             # subcutaneous fat
    img[v > 78] = 0.02                                             # air behind the back
    post = (v > half_d + 18) & (v < 55) & (np.abs(lr) < 28)
    img[post & (np.cos(2 * np.pi * (u - phase) / period) > -0.2)] = 0.38  # posterior elements
    canal = ((lr / 8) ** 2 + ((v - half_d - 10) / 7) ** 2) < 1
    img[canal] = 1.0                                               # CSF
    cord = ((lr / 4) ** 2 + ((v - half_d - 10) / 4) ** 2 < 1) & (u > rng.uniform(0, 60))
    img[cord] = 0.45
    mask = np.zeros(z.shape, np.uint8)
    r_lr, r_ap = lr / half_w, v / half_d
    bodies = np.zeros(z.shape, bool)
    for k in range(-4, 5):
        uc = phase + k * period - period / 2
        body_u = (u - uc - period / 2) / ((period - disc_h) / 2 - 0.5)
        body = _superellipse(r_lr, r_ap, body_u, 8) < 1
        texture = 0.45 + 0.05 * rng.standard_normal(z.shape).astype(np.float32)
        img[body] = texture[body]
        bodies |= body
        disc_u = (u - uc) / (disc_h / 2)
        disc = _superellipse(r_lr * 1.03, r_ap * 1.03, disc_u, 4) < 1
        if not disc.any() or abs(uc) > 0.5 * nz * spacing[2]:
            continue
        nucleus = _superellipse(r_lr / 0.6, r_ap / 0.55, disc_u / 0.7, 2) < 1
        brightness = rng.uniform(0.7, 1.0)
        img[disc] = 0.5
        img[disc & nucleus] = brightness
        mask[disc] = 1
    if structures:
        mask[bodies & (mask == 0)] = 2
        mask[canal] = 3
    # acquisition: contrast, bias field, noise, scanner scaling
    img = np.clip(img, 0, None) ** rng.uniform(0.8, 1.25)
    coeffs = rng.uniform(-0.25, 0.25, 3)
    bias = 1 + coeffs[0] * z / z.max() + coeffs[1] * y / y.max() + coeffs[2] * (z / z.max()) * (y / y.max())
    img = img * bias + rng.normal(0, rng.uniform(0.02, 0.05), img.shape)
    img = np.clip(img, 0, None) * rng.uniform(600, 1800)
    image = sitk.GetImageFromArray(img.astype(np.int16))
    mask_image = sitk.GetImageFromArray(mask)
    for im in (image, mask_image):
        im.SetSpacing(spacing)
        im.SetOrigin([-(n - 1) / 2 * s for n, s in zip(size, spacing)])
    return Phantom(image, mask_image)


def write_phantoms(folder: str | Path, count: int, first_seed: int = 0,
                   structures: bool = False) -> List[Tuple[Path, Path]]:
    """Write phantom_<i>_image.nii.gz / phantom_<i>_mask.nii.gz; returns the (image, mask) paths."""
    folder = Path(folder)
    pairs = []
    for i in range(count):
        p = make_phantom(first_seed + i, structures=structures)
        image, mask = folder / f"phantom_{i}_image.nii.gz", folder / f"phantom_{i}_mask.nii.gz"
        write_image(p.image, image)
        write_image(p.mask, mask)
        pairs.append((image, mask))
    return pairs
