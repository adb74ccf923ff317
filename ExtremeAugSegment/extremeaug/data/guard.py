"""Checks on an image file before (and instead of trusting) the reader: what ITK would accept silently.

- A header may announce more voxels than any scan has (a 4 KB file claiming 800^3 voxels made the reader
  allocate 9 GB): the voxel count is read from the header first and refused above MAX_VOXELS.
- ITK's NIfTI reader zero-fills a truncated file and turns NaN/inf into 0: a NIfTI file must hold the bytes
  its header announces (a .nii.gz stream must decompress to them), and float data is checked for
  non-finite values in the file itself.
- A detached header (.nhdr, .mhd) names its data file: one outside the header's own folder is refused, so a
  crafted header cannot pull an arbitrary readable file (e.g. /etc/passwd) into a project.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..common.errors import ExtremeAugError

MAX_VOXELS = int(float(os.environ.get("EXTREMEAUG_MAX_VOXELS", 1e9)))   # 1 G voxels: beyond any CT or MR volume
NIFTI_FLOATS = {16: "f4", 64: "f8"}   # NIfTI datatype codes of float voxels ITK reads (float128 it refuses)
CHUNK = 1 << 24


def check_image_file(path: Path) -> None:
    """Refuse a file whose header lies, whose data are missing or non-finite, or whose data live elsewhere."""
    name = path.name.lower()
    if name.endswith((".nhdr", ".mhd")):
        _check_detached_data(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return   # not readable at all: the reader itself says so, with the usual message
    voxels = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
    if voxels > MAX_VOXELS:
        raise ExtremeAugError(f"{path}: its header announces {voxels:,} voxels {tuple(reader.GetSize())}, more than "
                              f"the limit of {MAX_VOXELS:,} (set EXTREMEAUG_MAX_VOXELS to allow more)")
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti_data(path)


def _check_nifti_data(path: Path) -> None:
    compressed = path.name.lower().endswith(".gz")
    with (gzip.open if compressed else open)(path, "rb") as f:
        try:
            header = f.read(540)
        except (OSError, EOFError, zlib.error) as e:
            raise ExtremeAugError(f"{path}: damaged compressed file ({e})") from None
    offset, datatype, voxel_bytes, shape, order = _nifti_layout(path, header)
    need = offset + int(np.prod(shape, dtype=np.int64)) * voxel_bytes
    dtype = np.dtype(order + NIFTI_FLOATS[datatype]) if datatype in NIFTI_FLOATS else None
    if not compressed:
        have = path.stat().st_size
        if have < need:
            raise _truncated(path, have, need)
        if dtype is not None:
            data = np.memmap(path, dtype, "r", offset, (need - offset) // dtype.itemsize)
            _check_finite(path, data)
        return
    seen, carry = 0, b""
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                low, high = max(offset - seen, 0), min(need - seen, len(chunk))
                if dtype is not None and high > low:   # the voxel bytes of this chunk, checked as numbers
                    data = carry + chunk[low:high]
                    usable = len(data) // dtype.itemsize * dtype.itemsize
                    _check_finite(path, np.frombuffer(data[:usable], dtype))
                    carry = data[usable:]
                seen += len(chunk)
    except (OSError, EOFError, zlib.error):
        raise _truncated(path, seen, need) from None
    if seen < need:
        raise _truncated(path, seen, need)


def _nifti_layout(path: Path, header: bytes):
    """(data offset, datatype, bytes per voxel, shape, byte order) from a NIfTI-1 or NIfTI-2 header."""
    for order in ("<", ">"):
        sizeof = struct.unpack(order + "i", header[:4])[0] if len(header) >= 4 else 0
        if sizeof == 348 and len(header) >= 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if sizeof == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        raise ExtremeAugError(f"{path}: not a NIfTI file (its header is missing or cut short)")
    rank = max(1, min(int(dims[0]), 7))
    shape = [max(1, int(d)) for d in dims[1:1 + rank]]
    return max(offset, len(header) if sizeof == 540 else 352), datatype, max(1, bitpix // 8), shape, order


def _check_finite(path: Path, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ExtremeAugError(f"{path}: image contains NaN or infinite values")


def _truncated(path: Path, have: int, need: int) -> ExtremeAugError:
    return ExtremeAugError(f"{path}: the file is truncated: its header announces {need:,} bytes of header and "
                           f"voxels, it holds {have:,}")


def _check_detached_data(path: Path) -> None:
    """Every data file a .nhdr / .mhd names must be inside the header's folder."""
    try:
        text = path.read_bytes()[:65536].decode("latin-1")
    except OSError as e:
        raise ExtremeAugError(f"{path}: cannot be read ({e.strerror})") from None
    folder = path.parent.resolve()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s*(data ?file|ElementDataFile)\s*[:=]\s*(.+?)\s*$", line, re.I)
        if not match:
            continue
        value = match.group(2)
        if value.upper().startswith("LIST"):
            names = [x.strip() for x in lines[i + 1:] if x.strip()]
        elif value.upper() == "LOCAL":
            names = []
        else:
            names = [value.split()[0] if re.search(r"%\d*d", value) else value]
        for name in names:
            target = (folder / name).resolve()
            if target != folder and folder not in target.parents:
                raise ExtremeAugError(f"{path}: its data file {name!r} is outside the header's folder; a detached "
                                      "header may only name data files beside it")
        break
