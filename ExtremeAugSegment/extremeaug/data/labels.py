"""Masks as one binary array per structure: a plain label map gives one structure per label value; a 3D
Slicer `.seg.nrrd` one per segment, with the segment's name, colour and terminology.

Segments may overlap (Slicer keeps them in separate layers): each structure is its own binary array, so an
overlap is kept for training (one sigmoid channel per structure) and only a written label map, which holds
one value per voxel, gives each voxel one structure.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..common.errors import ExtremeAugError
from ..common.structures import DEFAULT_NAME, PALETTE, Structure, default_structure, describe

TERMINOLOGY_TAG = "TerminologyEntry"


def _segment_fields(image: sitk.Image) -> List[Dict[str, str]]:
    """Slicer's per-segment header fields (Segment0_Name, ...) in segment order; empty for a plain label map."""
    fields, i = [], 0
    while image.HasMetaDataKey(f"Segment{i}_ID"):
        fields.append({k[len(f"Segment{i}_"):]: image.GetMetaData(k) for k in image.GetMetaDataKeys()
                       if k.startswith(f"Segment{i}_")})
        i += 1
    return fields


def _terminology(tags: str) -> Optional[str]:
    for tag in tags.split("|"):
        key, _, value = tag.partition(":")
        if key == TERMINOLOGY_TAG and value:
            return value
    return None


def _color(text: Optional[str], index: int) -> Tuple[float, float, float]:
    try:
        rgb = tuple(float(c) for c in (text or "").split())
    except ValueError:
        rgb = ()
    return rgb if len(rgb) == 3 and all(0.0 <= c <= 1.0 for c in rgb) else PALETTE[index % len(PALETTE)]


def _layers(raw: sitk.Image) -> np.ndarray:
    """Voxels as [layers, z, y, x] (a layered .seg.nrrd has several; a label map one)."""
    array = sitk.GetArrayFromImage(raw)
    if raw.GetDimension() == 4:
        return array   # [t, z, y, x]: Slicer's layers as a fourth axis
    if raw.GetNumberOfComponentsPerPixel() > 1:
        return np.moveaxis(array, -1, 0)
    return array[None]


def split_structures(raw: sitk.Image) -> Tuple[List[np.ndarray], List[Structure], bool]:
    """Every structure of a mask as a boolean array [z, y, x], its label, and whether the labels carry names
    (a .seg.nrrd) or only values (a label map). A one-layer .seg.nrrd keeps its segments' label values; in a
    layered one values repeat across layers, so segments are numbered 1, 2, ... in their order."""
    layers = _layers(raw)
    fields = _segment_fields(raw)
    if fields:
        arrays, labels = [], []
        one_layer = all(int(f.get("Layer", 0) or 0) == 0 for f in fields)
        for i, f in enumerate(fields):
            layer = int(f.get("Layer", 0) or 0)
            value = int(f.get("LabelValue", 1) or 1)
            if layer >= len(layers):
                raise ExtremeAugError(f"segment {f.get('Name', i)!r} is on layer {layer}, but the file has "
                                      f"{len(layers)}")
            arrays.append(layers[layer] == value)
            labels.append(Structure(f.get("Name") or f.get("ID") or f"segment {i + 1}", _color(f.get("Color"), i),
                                    _terminology(f.get("Tags", "")), value if one_layer else i + 1))
        return arrays, labels, True
    values = sorted(int(v) for v in np.unique(layers) if v > 0)
    if (layers < 0).any() or (layers.dtype.kind == "f" and not np.all(np.mod(layers, 1) == 0)):
        raise ExtremeAugError("the mask holds negative or fractional values; a label map holds whole numbers "
                              "0 (background), 1, 2, ...")
    name = None if len(values) > 1 else DEFAULT_NAME
    labels = [default_structure(v, i, name or f"label {v}") for i, v in enumerate(values)]
    return [(layers == v).any(axis=0) for v in values], labels, False


def match_table(arrays: List[np.ndarray], labels: List[Structure], named: bool, table: Sequence[Structure],
                source: str) -> List[np.ndarray]:
    """The mask's structures in the table's order: a .seg.nrrd segment by name, a label map value by value.
    A structure the mask lacks is empty (a partial delineation); one the table lacks is an error."""
    key = (lambda lab: lab.name.casefold()) if named else (lambda lab: lab.value)
    found = {key(lab): a for lab, a in zip(labels, arrays) if a.any()}
    unknown = [lab for lab in labels if key(lab) in found and key(lab) not in {key(t) for t in table}]
    if unknown:
        what = "segment" if named else "label value"
        raise ExtremeAugError(f"{source}: {what} {', '.join(str(lab.name if named else lab.value) for lab in unknown)}"
                              f" is not one of the structures trained or fixed ({describe(table)})")
    shape = arrays[0].shape if arrays else None
    return [found.get(key(t), np.zeros(shape, bool)) for t in table]


def select(arrays: List[np.ndarray], labels: List[Structure], label_values: Optional[Iterable[int]] = None,
           merge: bool = False) -> Tuple[List[np.ndarray], List[Structure]]:
    """Pick structures by value (`label_values`) and/or unite them into one (`merge`)."""
    if label_values:
        wanted = {int(v) for v in label_values}
        kept = [(a, lab) for a, lab in zip(arrays, labels) if lab.value in wanted]
        arrays, labels = [a for a, _ in kept], [lab for _, lab in kept]
    if merge and arrays:
        name = labels[0].name if len(labels) == 1 else DEFAULT_NAME
        color = labels[0].color if len(labels) == 1 else PALETTE[0]
        terminology = labels[0].terminology if len(labels) == 1 else None
        return [np.logical_or.reduce(arrays)], [Structure(name, color, terminology)]
    return arrays, labels


def label_dtype(labels: Sequence[Structure]) -> type:
    """uint8, or uint16 when a value needs it."""
    return np.uint8 if max((lab.value for lab in labels), default=0) <= 255 else np.uint16


def label_map(arrays: Sequence[np.ndarray], labels: Sequence[Structure]) -> np.ndarray:
    """One value per voxel (later structures win where they overlap)."""
    out = np.zeros(arrays[0].shape, label_dtype(labels))
    for a, lab in zip(arrays, labels):
        out[a] = lab.value
    return out


def with_segment_fields(labelmap: sitk.Image, labels: Sequence[Structure]) -> sitk.Image:
    """A label map with 3D Slicer's segmentation header fields: written as `.seg.nrrd` it loads in Slicer as a
    segmentation with one named, coloured segment per structure (terminology included)."""
    image = sitk.Cast(labelmap, sitk.sitkUInt8 if label_dtype(labels) == np.uint8 else sitk.sitkUInt16)
    array = sitk.GetArrayViewFromImage(image)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for i, lab in enumerate(labels):
        where = np.nonzero(array == lab.value)
        extent = " ".join(f"{int(w.min())} {int(w.max())}" for w in reversed(where)) if where[0].size else \
            "0 -1 0 -1 0 -1"
        tags = f"{TERMINOLOGY_TAG}:{lab.terminology}|" if lab.terminology else ""
        for key, value in (("ID", f"Segment_{lab.value}"), ("Name", lab.name), ("NameAutoGenerated", "0"),
                           ("Color", " ".join(f"{c:.4f}" for c in lab.color)), ("ColorAutoGenerated", "0"),
                           ("LabelValue", str(lab.value)), ("Layer", "0"), ("Extent", extent), ("Tags", tags)):
            image.SetMetaData(f"Segment{i}_{key}", value)
    return image
