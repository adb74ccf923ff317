"""The paper's preprocessing: 2D slices along one plane, each resampled in-plane to 256x256 (or, with the fitted
grid, to the scan's own in-plane size), and intensities mapped to [0, 1] by linear histogram matching to a
template.

Everything inference must repeat is in `Preprocessing`, which the model's ONNX metadata carries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..common.config import SCALE_RANGE, Plane, SliceGrid
from ..common.errors import ExtremeAugError
from .histogram import match_histogram

# After orienting to LPS, index axis 0 runs left-right (sagittal slices), 1 anterior-posterior
# (coronal), 2 inferior-superior (axial).
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
ORIENTATION = "LPS"
SLICE_SIZE = 256
NETWORK_DEPTH = 5   # the U-Net (model.py) halves a slice this many times, so slice sizes are multiples of 2 ** 5
FIT_RANGE = (64, 512)   # the fitted grid's smallest and largest slice
TEMPLATE_QUANTILES = 1001
TEMPLATE_PERCENTILES = (0.5, 99.5)


@dataclass
class Preprocessing:
    plane: str                      # resolved plane: sagittal, coronal or axial
    slice_size: int = SLICE_SIZE
    template: List[float] = field(default_factory=list)  # quantiles of the template's [0, 1] intensities
    histogram_levels: int = 1024
    match_points: int = 15
    # The slices' pixel size in mm along the two in-plane axes (index order): every scan is sampled at it, so its
    # anatomy appears at the size training saw whatever its field of view. None: each scan's in-plane extent is
    # stretched to slice_size (the paper's grid, and models from before this field).
    pixel_mm: Optional[List[float]] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """From a model's metadata, refused (ValueError naming the field) when it cannot be what we wrote."""
        if not isinstance(d, dict) or d.get("plane") not in PLANE_AXIS:
            raise ValueError(f"unknown plane {d.get('plane') if isinstance(d, dict) else d!r} (expected one of "
                             f"{', '.join(PLANE_AXIS)})")
        prep = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if not (isinstance(prep.slice_size, int) and 16 <= prep.slice_size <= 4096):
            raise ValueError(f"slice size {prep.slice_size!r} is not 16 to 4096")
        if not (isinstance(prep.template, list) and len(prep.template) >= 2 and
                all(isinstance(v, (int, float)) and np.isfinite(v) for v in prep.template)):
            raise ValueError("the intensity template is missing or not a list of numbers")
        if prep.pixel_mm is not None and not (
                isinstance(prep.pixel_mm, list) and len(prep.pixel_mm) == 2 and
                all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in prep.pixel_mm)):
            raise ValueError(f"pixel size {prep.pixel_mm!r} is not two positive numbers")
        if not (isinstance(prep.histogram_levels, int) and prep.histogram_levels >= 2 and
                isinstance(prep.match_points, int) and prep.match_points >= 1):
            raise ValueError("the histogram settings are not positive integers")
        return prep

    @property
    def axis(self) -> int:
        return PLANE_AXIS[self.plane]


def segment_sizes(trained: int, augmented: bool = True) -> List[int]:
    """Slice sizes a model trained on `trained`-pixel slices can segment at: its own, and the multiples of
    2 ** NETWORK_DEPTH whose ratio to it lies in the augmentation's scale range, where the anatomy appears at a
    scale training showed the model (none of those when it was trained without augmentation)."""
    step = 2 ** NETWORK_DEPTH
    return sorted({trained} | ({n for n in range(step, 2 * trained + 1, step)
                                if SCALE_RANGE[0] <= n / trained <= SCALE_RANGE[1]} if augmented else set()))


def check_slice_size(asked: int, trained: int, augmented: bool = True) -> int:
    """`asked` when the model can segment at it (`segment_sizes`), else an error that names the closest size.

    Fewer pixels per slice is fewer operations: 224 instead of 256 takes about 0.77 of the model's time."""
    sizes = segment_sizes(trained, augmented)
    if asked in sizes:
        return asked
    if not augmented:
        raise ExtremeAugError(f"slice size {asked}: the model was trained without augmentation, so it segments at "
                              f"its own {trained} only")
    closest = min(sizes, key=lambda n: (abs(n - asked), n))
    raise ExtremeAugError(f"slice size {asked}: the model segments at {', '.join(map(str, sizes))} (multiples of "
                          f"{2 ** NETWORK_DEPTH} within {SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g}x the {trained} it was "
                          f"trained on: its augmentation's scale range); the closest is {closest}")


def fitted_slice_size(image: sitk.Image, plane: str) -> int:
    """The fitted grid's slice size: the larger in-plane voxel count, rounded up to a multiple of 2 ** NETWORK_DEPTH,
    within FIT_RANGE. `slice_grid` stretches each in-plane axis to the slice size on its own, so no axis is
    resampled coarser than the scan (up to FIT_RANGE's top) and none is padded."""
    size = orient(image).GetSize()
    count = max(n for a, n in enumerate(size) if a != PLANE_AXIS[plane])
    step = 2 ** NETWORK_DEPTH
    return int(min(max(-(-count // step) * step, FIT_RANGE[0]), FIT_RANGE[1]))


def slice_size_for(image: sitk.Image, plane: str, grid: SliceGrid) -> int:
    """Args:
        plane: a resolved plane (`resolve_plane`)."""
    return fitted_slice_size(image, plane) if SliceGrid.parse(grid) == SliceGrid.FIT else SLICE_SIZE


def orient(image: sitk.Image) -> sitk.Image:
    """Permute/flip axes (no interpolation) so that slicing along a plane is the same for every scan."""
    return sitk.DICOMOrient(image, ORIENTATION)


def resolve_plane(image: sitk.Image, plane: str) -> str:
    """`auto` = the acquisition plane: the two finest spacings in-plane; ties go to the thinnest slab."""
    plane = Plane.parse(plane)
    if plane != Plane.AUTO:
        return plane.value
    oriented = orient(image)
    spacing, size = oriented.GetSpacing(), oriented.GetSize()
    axis = max(range(3), key=lambda a: (round(spacing[a], 3), -size[a]))
    return {v: k for k, v in PLANE_AXIS.items()}[axis]


def make_template(image: sitk.Image) -> List[float]:
    """Quantiles of the scan rescaled to [0, 1] between robust percentiles (the paper's template)."""
    array = sitk.GetArrayViewFromImage(image).astype(np.float64)
    lo, hi = np.percentile(array, TEMPLATE_PERCENTILES)
    if hi <= lo:
        lo, hi = float(array.min()), float(array.max())
    scaled = np.clip((array - lo) / (hi - lo), 0.0, 1.0)
    return [float(q) for q in np.quantile(scaled, np.linspace(0, 1, TEMPLATE_QUANTILES))]


def normalise(image: sitk.Image, prep: Preprocessing) -> sitk.Image:
    """Linear (piecewise) histogram matching to the template, clipped to [0, 1] (`histogram.match_histogram`:
    ITK's HistogramMatchingImageFilter with the mean threshold, in numpy)."""
    out = sitk.GetImageFromArray(_normalised(sitk.GetArrayViewFromImage(image), prep))
    out.CopyInformation(image)
    return out


def _normalised(array: np.ndarray, prep: Preprocessing, source: Optional[np.ndarray] = None) -> np.ndarray:
    matched = match_histogram(np.asarray(array, np.float32), prep.template, prep.histogram_levels,
                              prep.match_points, None if source is None else np.asarray(source, np.float32))
    return np.clip(matched, 0.0, 1.0, out=matched)


def slice_grid(oriented: sitk.Image, axis: int, size: int, pixel_mm: Optional[List[float]] = None) -> sitk.Image:
    """A grid whose two in-plane axes have `size` voxels, centred on the scan: over its whole in-plane extent (each
    axis stretched to `size`), or with `pixel_mm` at that pixel size (the scan cropped or padded to it)."""
    old_size, old_spacing = np.array(oriented.GetSize()), np.array(oriented.GetSpacing())
    new_size, new_spacing = old_size.copy(), old_spacing.copy()
    for k, a in enumerate(a for a in range(3) if a != axis):
        new_size[a] = size
        new_spacing[a] = old_spacing[a] * old_size[a] / size if pixel_mm is None else pixel_mm[k]
    shift = (new_spacing - old_spacing) / 2.0
    if pixel_mm is not None:   # the stretched grid's extents agree by construction
        shift += (old_size * old_spacing - new_size * new_spacing) / 2.0
    direction = np.array(oriented.GetDirection()).reshape(3, 3)
    origin = np.array(oriented.GetOrigin()) + direction @ shift
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in new_spacing])
    grid.SetOrigin([float(o) for o in origin])
    grid.SetDirection(oriented.GetDirection())
    return grid


def grid_pixel_mm(image: sitk.Image, plane: str, size: int) -> List[float]:
    """The in-plane pixel size of `image`'s slices stretched to `size` pixels a side: what the fitted grid stores,
    so that the training scan's own grid is unchanged and every other scan is sampled as it was."""
    oriented = orient(image)
    return [float(oriented.GetSpacing()[a] * oriented.GetSize()[a] / size) for a in range(3) if a != PLANE_AXIS[plane]]


def covering(prep: Preprocessing, image: sitk.Image) -> Preprocessing:
    """`prep` with a slice size whose window, at its pixel size, covers `image`'s in-plane extent: its own size or
    larger, a multiple of 2 ** NETWORK_DEPTH. Where that would pass FIT_RANGE's top (and the model's own size), the
    pixels grow instead, so no part of a scan is cut off. A stretched grid (no pixel size) covers every scan."""
    if prep.pixel_mm is None:
        return prep
    oriented, step = orient(image), 2 ** NETWORK_DEPTH
    in_plane = [a for a in range(3) if a != prep.axis]
    needed = max(oriented.GetSize()[a] * oriented.GetSpacing()[a] / p for a, p in zip(in_plane, prep.pixel_mm))
    size = max(prep.slice_size, -(-int(np.ceil(needed - 1e-6)) // step) * step)
    top = max(prep.slice_size, FIT_RANGE[1])
    if size <= top:
        return replace(prep, slice_size=int(size))
    return replace(prep, slice_size=int(top), pixel_mm=[p * needed / top for p in prep.pixel_mm])


def _to_slices(volume: sitk.Image, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(sitk.GetArrayFromImage(volume), 2 - axis, 0))


def scan_to_slices(scan: sitk.Image, prep: Preprocessing) -> Tuple[np.ndarray, sitk.Image]:
    """Return normalised slices [n, size, size] (float32) and the slice grid they live on."""
    oriented = orient(scan)
    grid = slice_grid(oriented, prep.axis, prep.slice_size, prep.pixel_mm)
    own = None if prep.pixel_mm is None else sitk.GetArrayViewFromImage(oriented)   # the window may pad it
    outside = 0.0 if own is None else float(own.min())
    resampled = sitk.Resample(oriented, grid, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)
    volume = _normalised(sitk.GetArrayViewFromImage(resampled), prep, own)
    return np.ascontiguousarray(np.moveaxis(volume, 2 - prep.axis, 0)), grid


def mask_to_slices(mask: sitk.Image, grid: sitk.Image, axis: int) -> np.ndarray:
    """Mask on the slice grid: linear resampling of the binary mask, then threshold at 0.5."""
    soft = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                         sitk.sitkFloat32)
    return (_to_slices(soft, axis) > 0.5).astype(np.float32)


def slices_to_scan(slices: np.ndarray, grid: sitk.Image, axis: int, scan: sitk.Image) -> sitk.Image:
    """Put per-slice values (probabilities) back on the scan's own grid (linear interpolation)."""
    volume = sitk.GetImageFromArray(np.moveaxis(slices.astype(np.float32), 0, 2 - axis).copy())
    volume.CopyInformation(grid)
    return sitk.Resample(volume, scan, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def context_index(n: int, context: int) -> np.ndarray:
    """For each of n slices, the indices of itself and its `context` neighbours on each side, [n, 2c + 1], repeating
    the first and last slice beyond the stack's ends (2.5D input channels)."""
    return np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1)[None], 0, n - 1)


def with_context(slices: np.ndarray, context: int) -> np.ndarray:
    """Slices [n, S, S] as network inputs [n, 2c + 1, S, S]: each slice with its neighbours as channels."""
    return slices[context_index(len(slices), context)]
