"""Scans and masks turned into normalised slice stacks on the training device, plus the patch table."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..common.errors import ExtremeAugError
from ..common.structures import Structure
from ..data.io import read_scan, read_structures
from ..common.config import SliceGrid
from ..data.preprocess import (Preprocessing, context_index, grid_pixel_mm, make_template, mask_to_slices,
                               resolve_plane, scan_to_slices, slice_size_for)
from .augment import patch_size, patch_table


@dataclass
class Case:
    image: str
    label: Optional[str]       # None: an unlabeled scan (pseudo-labels)
    id: Optional[str] = None   # a project's case id; None names the case after its image file

    @property
    def name(self) -> str:
        return self.id or Path(self.image).name


@dataclass
class PreparedCase:
    case: Case
    images: np.ndarray   # [n, S, S] float32 in [0, 1]
    masks: np.ndarray    # [n, K, S, S] uint8 in {0, 1}: one channel per structure of `labels`
    labels: List[Structure]
    spacing: Tuple[float, float, float]   # of the slice grid, mm

    def volumes_mm3(self) -> np.ndarray:
        """Each structure's volume on the slice grid, [K]."""
        return self.masks.sum(axis=(0, 2, 3)) * float(np.prod(self.spacing))


def load_case(case: Case, prep: Preprocessing, table: Optional[Sequence[Structure]] = None,
              label_values: Optional[Sequence[int]] = None, merge: bool = False,
              scan: Optional[sitk.Image] = None) -> PreparedCase:
    """Slices and per-structure mask slices of a case.

    Args:
        table: the structures to learn, in channel order; None takes them from this case's mask.
        label_values, merge: which label values to learn, and whether as one structure.
        scan: the case's scan when the caller has read it already.
    """
    scan = read_scan(case.image) if scan is None else scan
    structures, labels = read_structures(case.label, scan, table, label_values, merge)
    images, grid = scan_to_slices(scan, prep)
    masks = np.stack([mask_to_slices(m, grid, prep.axis) for m in structures], axis=1).astype(np.uint8)
    return PreparedCase(case, images, masks, labels, grid.GetSpacing())


def check_cases(cases: Sequence[Case]) -> None:
    """Fail fast, before minutes of preprocessing, when any listed file is missing."""
    for c in cases:
        for p in (c.image, c.label) if c.label is not None else (c.image,):
            if not os.path.exists(p):
                raise ExtremeAugError(f"{p}: no such file or folder")


def make_preprocessing(template_scan: sitk.Image, plane: str, grid: SliceGrid) -> Preprocessing:
    """The fitted grid keeps the template scan's own grid and stores its pixel size, at which every other scan is
    sampled; the paper's grid stretches every scan to 256 x 256."""
    plane = resolve_plane(template_scan, plane)
    size = slice_size_for(template_scan, plane, grid)
    pixel_mm = grid_pixel_mm(template_scan, plane, size) if SliceGrid.parse(grid) == SliceGrid.FIT else None
    return Preprocessing(plane=plane, slice_size=size, template=make_template(template_scan), pixel_mm=pixel_mm)


class SliceSet:
    """All slices of some cases, resident on one device, and the patch table over them (128-pixel patches at
    stride 64, or one patch per slice when a slice is smaller)."""

    def __init__(self, prepared: List[PreparedCase], device: torch.device, context: int = 0):
        self.cases = [p.case for p in prepared]
        self.labels = prepared[0].labels
        self.counts = [len(p.images) for p in prepared]
        images = np.concatenate([p.images for p in prepared])
        masks = np.concatenate([p.masks for p in prepared])
        self.images = torch.from_numpy(images).to(device)
        offsets = np.cumsum([0] + self.counts[:-1])   # neighbours are taken within each case's own stack
        index = np.concatenate([o + context_index(n, context) for o, n in zip(offsets, self.counts)])
        # network inputs [n, 2c + 1, S, S]: a view of the slices in 2D, a copy of them with neighbours in 2.5D
        self.inputs = self.images.unsqueeze(1) if context == 0 else self.images[torch.from_numpy(index).to(device)]
        self.masks = torch.from_numpy(masks).to(device)
        self.slice_size = images.shape[-1]
        self.patch = patch_size(self.slice_size)
        self.patches = patch_table(len(images), self.slice_size, self.patch, self.patch // 2).to(device)
        if not masks.any():
            raise ExtremeAugError("the masks are empty after resampling to the slice grid")

    def per_case(self):
        start = 0
        for case, n in zip(self.cases, self.counts):
            yield case, slice(start, start + n)
            start += n

    @property
    def nbytes(self) -> int:
        return self.images.element_size() * self.images.nelement() + self.masks.nelement()
