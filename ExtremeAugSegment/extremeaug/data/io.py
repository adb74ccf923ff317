"""Reading scans and masks (NIfTI, NRRD, MHA, Slicer .seg.nrrd, DICOM series) and atomic writing."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..common.errors import ExtremeAugError
from ..common.files import publish, temporary_beside, write_failure
from ..common.structures import Structure
from .guard import check_image_file
from .labels import match_table, select, split_structures

GEOMETRY_TOLERANCE = 1e-3  # mm, and direction cosine units


ImageSource = Union[str, os.PathLike, sitk.Image]


def _read_any(path: ImageSource) -> sitk.Image:
    """A file, a DICOM folder, or an image already in memory (a 3D Slicer node's voxels) as it is."""
    if isinstance(path, sitk.Image):
        return path
    p = Path(path)
    if not p.exists():
        raise ExtremeAugError(f"{p}: no such file or folder")
    if p.is_dir():
        return _read_dicom_series(p)
    check_image_file(p)
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError:
        raise ExtremeAugError(f"{p}: not an image SimpleITK can read (NIfTI, NRRD, MHA, DICOM)") from None


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ExtremeAugError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise ExtremeAugError(f"{folder}: folder holds {len(series)} DICOM series; pass a folder with one")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    _check_slice_spacing(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError:
        raise ExtremeAugError(f"{folder}: DICOM series could not be read") from None


def _check_slice_spacing(folder: Path, files: Sequence[str]) -> None:
    """Refuse a series with a missing (or doubled) slice: ITK would only warn and stack what is there,
    giving a volume whose geometry is wrong between the slices around the gap."""
    positions, normal = [], None
    for name in files:
        header = sitk.ImageFileReader()
        header.SetFileName(name)
        try:
            header.ReadImageInformation()
            position = [float(v) for v in header.GetMetaData("0020|0032").split("\\")]
            if normal is None:
                cosines = [float(v) for v in header.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(cosines[:3], cosines[3:])
        except (RuntimeError, ValueError):
            return   # no usable position tags: nothing to check against (ITK decides)
        positions.append(float(np.dot(position, normal)))
    steps = np.diff(np.sort(positions))
    if len(steps) < 2:
        return
    typical = float(np.median(steps))
    odd = [i for i, step in enumerate(steps) if abs(step - typical) > 0.25 * typical]
    if odd:
        i = odd[0]
        raise ExtremeAugError(f"{folder}: the DICOM series is not evenly spaced: {steps[i]:.2f} mm between two "
                              f"slices where the others are {typical:.2f} mm apart (a missing or duplicated slice?)")


def _name(path: ImageSource) -> str:
    return "an image in memory" if isinstance(path, sitk.Image) else str(path)


def _as_3d(image: sitk.Image, path: ImageSource, what: str) -> sitk.Image:
    path = _name(path)
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise ExtremeAugError(f"{path}: {what} is {dim}D {tuple(image.GetSize())}; a 3D volume is needed")
    if min(image.GetSize()) < 2:
        raise ExtremeAugError(f"{path}: {what} is a single 2D slice {tuple(image.GetSize())}; a 3D volume is needed")
    return image


def read_scan(path: ImageSource, keep_type: bool = False) -> sitk.Image:
    """Read a 3D scan as float32 (or in its own pixel type with keep_type, for storing it);
    refuse 2D/4D, vector, NaN/inf and constant images. An image in memory gets the same checks."""
    raw = _as_3d(_read_any(path), path, "the image")
    path = _name(path)
    if raw.GetNumberOfComponentsPerPixel() != 1:
        raise ExtremeAugError(f"{path}: image has {raw.GetNumberOfComponentsPerPixel()} components per voxel;"
                              " a scalar (grey-level) scan is needed")
    image = sitk.Cast(raw, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        raise ExtremeAugError(f"{path}: image contains NaN or infinite values")
    if float(array.max()) == float(array.min()):
        raise ExtremeAugError(f"{path}: image is constant ({float(array.min()):g}); nothing to segment")
    return raw if keep_type else image


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = GEOMETRY_TOLERANCE) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * max(1.0, max(a.GetSpacing())))
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def image_sha256(image: sitk.Image) -> str:
    """SHA-256 of an image's content: its voxel values and its grid, not its file. The same scan read from
    NIfTI, NRRD or a 3D Slicer node (whatever its name or pixel type) gives the same digest; geometry is
    rounded to 1e-4 mm (1e-6 for direction cosines) so that float32 headers and double nodes agree."""
    def rounded(values, digits):
        return [round(float(v), digits) + 0.0 for v in values]   # + 0.0 turns -0.0 into 0.0
    grid = {"size": list(image.GetSize()), "spacing": rounded(image.GetSpacing(), 4),
            "origin": rounded(image.GetOrigin(), 4), "direction": rounded(image.GetDirection(), 6),
            "components": image.GetNumberOfComponentsPerPixel()}
    digest = hashlib.sha256(b"extremeaug image v1\n" + json.dumps(grid, sort_keys=True).encode())
    array = sitk.GetArrayViewFromImage(image)
    for plane in array:   # one slice at a time: no float64 copy of the whole volume
        digest.update(np.ascontiguousarray(plane, dtype="<f8").tobytes())
    return digest.hexdigest()


def _foreground(image: sitk.Image, label_values: Sequence[int] | None) -> np.ndarray:
    """Binary foreground from a label map; several components (4D .seg.nrrd layers) are united."""
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    if label_values:
        fg = np.isin(array, list(label_values)).any(axis=-1)
    else:
        fg = (array > 0).any(axis=-1)
    return fg.astype(np.uint8)


def read_binary(path: ImageSource, label_values: Iterable[int] | None = None) -> sitk.Image:
    """Read a label map (3D, or a layered .seg.nrrd) as a binary uint8 image on its own grid; may be empty."""
    raw = _read_any(path)
    if raw.GetDimension() == 4 and raw.GetNumberOfComponentsPerPixel() == 1 and raw.GetSize()[3] > 1:
        raw = sitk.Compose([raw[:, :, :, i] for i in range(raw.GetSize()[3])])  # layers as components
    raw = _as_3d(raw, path, "the mask")
    values = sorted(set(int(v) for v in label_values)) if label_values else None
    mask = sitk.GetImageFromArray(_foreground(raw, values))
    _copy_geometry(raw, mask)
    return mask


def on_grid(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """The mask on the reference's grid: as is when the grids agree, else nearest-neighbour resampled."""
    if same_grid(mask, reference):
        mask = sitk.Image(mask)
        mask.CopyInformation(reference)
        return mask
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _mask_geometry(raw: sitk.Image, path: ImageSource) -> sitk.Image:
    """A 3D image on the mask's grid (a layered .seg.nrrd is 4D: its first three axes)."""
    if raw.GetDimension() == 4 and raw.GetSize()[3] > 1:
        size = list(raw.GetSize()[:3]) + [0]
        raw = sitk.Extract(raw, size, [0, 0, 0, 0])
    return _as_3d(raw, path, "the mask")


def read_label_arrays(path: ImageSource) -> Tuple[List[np.ndarray], List[Structure], bool, sitk.Image]:
    """Every structure of a mask file as a boolean array, its labels, whether they carry names (a .seg.nrrd),
    and an image on the mask's grid."""
    raw = _read_any(path)
    geometry = _mask_geometry(raw, path)
    try:
        arrays, labels, named = split_structures(raw)
    except ExtremeAugError as e:
        raise ExtremeAugError(f"{_name(path)}: {e}") from None
    return arrays, labels, named, geometry


def image_like(array: np.ndarray, geometry: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8) if array.dtype == bool else array)
    _copy_geometry(geometry, image)
    return image


def read_structures(path: ImageSource, scan: sitk.Image, table: Optional[Sequence[Structure]] = None,
                    label_values: Iterable[int] | None = None, merge: bool = False
                    ) -> Tuple[List[sitk.Image], List[Structure]]:
    """A training mask as one binary uint8 image per structure on the scan's grid, and their labels.

    Args:
        table: the structures expected, in order (a model's or a project's); the mask's structures are matched
            to it (segments by name, label values by value), a missing one is empty, an unknown one an error.
        label_values: keep only these values of a label map.
        merge: unite the structures into one (binary training).
    """
    arrays, labels, named, geometry = read_label_arrays(path)
    name = _name(path)
    arrays, labels = select(arrays, labels, label_values, merge)
    if table is not None:
        arrays, labels = match_table(arrays, labels, named and not merge, table, name), list(table)
    if not any(a.any() for a in arrays):
        picked = f" with label values {sorted(label_values)}" if label_values else ""
        raise ExtremeAugError(f"{name}: mask is empty (no voxel{picked}); nothing to learn from")
    images = [on_grid(image_like(a, geometry), scan) for a in arrays]
    if not any(sitk.GetArrayViewFromImage(i).any() for i in images):
        raise ExtremeAugError(f"{name}: mask does not overlap the scan (different grid, no common foreground)")
    return images, labels


def read_mask(path: ImageSource, scan: sitk.Image, label_values: Iterable[int] | None = None) -> sitk.Image:
    """A training mask as binary uint8 on the scan's grid (all its structures as one, or those picked)."""
    return read_structures(path, scan, label_values=label_values, merge=True)[0][0]


def _copy_geometry(source: sitk.Image, target: sitk.Image) -> None:
    target.SetOrigin(source.GetOrigin())
    target.SetSpacing(source.GetSpacing())
    target.SetDirection(source.GetDirection())


WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")


def check_outputs(inputs: Sequence[str | os.PathLike], outputs: Sequence[str | os.PathLike | None]) -> None:
    """Before any work: each output is an image file name SimpleITK writes, in a writable folder, and none is
    an input (segmenting into the scan's own path would replace the scan) or another output."""
    taken = {Path(i).resolve(): "input" for i in inputs}
    for out in (o for o in outputs if o):
        path = Path(out)
        if path.is_dir():
            raise ExtremeAugError(f"{out}: is a folder; name the image file to write")
        if not path.name.lower().endswith(WRITABLE_SUFFIXES):
            raise ExtremeAugError(f"{out}: unknown image extension; use one of {', '.join(WRITABLE_SUFFIXES)}")
        resolved = path.resolve()
        clash = taken.get(resolved) or next((what for other, what in taken.items() if path.exists() and
                                             other.exists() and os.path.samefile(other, path)), None)
        if clash:
            raise ExtremeAugError(f"{out}: is also the {clash}; writing it would replace that file")
        folder = next((p for p in (resolved.parent, *resolved.parent.parents) if p.exists()), None)
        if folder is None or not os.access(folder, os.W_OK):
            raise ExtremeAugError(f"{out}: cannot write in {folder or resolved.parent}")
        taken[resolved] = "output"


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write atomically (common.files): a temporary file in the same folder (same extension), flushed and
    read back, which must give the same voxels and grid (ITK's writers do not report every failed write),
    then renamed into place."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    tmp = temporary_beside(path, suffix)
    needed = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    try:
        sitk.WriteImage(image, str(tmp), compress)
    except RuntimeError as e:   # ITK reports some failed writes (full disk, I/O error) as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise write_failure(path, None, needed if not compress else 0, "could not be written (" + next(
            (line.strip() for line in str(e).splitlines() if "rror" in line), "ITK error") + ")") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return publish(tmp, path, lambda written: _differs(written, image), needed if not compress else 0)


def _differs(path: Path, image: sitk.Image) -> Optional[str]:
    """What is wrong with an image file read back against the image meant to be in it, or None."""
    try:
        back = sitk.ReadImage(str(path))
    except RuntimeError:
        return f"the file read back is not a readable image ({path.stat().st_size} bytes on the disk)"
    if not (same_grid(back, image) and back.GetPixelID() == image.GetPixelID() and
            np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))):
        return "the file read back differs from the image written"
    return None
