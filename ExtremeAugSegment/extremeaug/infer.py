"""Segmentation with onnxruntime: the ONNX file alone (graph + metadata) is enough."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import ExtremeAugError
from .metadata import METADATA_KEY
from .io import check_outputs, image_like, read_scan, write_image
from .labels import label_dtype, with_segment_fields
from .structures import Structure, check_table, default_structure
from .preprocess import Preprocessing, scan_to_slices, slices_to_scan

BATCH_SLICES = 8


def providers_for(device: str) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ExtremeAugError("--device cuda: onnxruntime has no CUDA provider here "
                              f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    if device != "auto":
        raise ExtremeAugError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return ["CPUExecutionProvider"]


def read_metadata(session) -> dict:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ExtremeAugError("the ONNX file was not written by extremeaug (no 'extremeaug' metadata)")
    try:
        return json.loads(raw)
    except ValueError:
        raise ExtremeAugError("the ONNX file's extremeaug metadata is damaged") from None


class Segmenter:
    def __init__(self, model_path: str | os.PathLike, device: str = "auto"):
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise ExtremeAugError(f"{path}: no such model file")
        providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ExtremeAugError(f"{path}: not a readable ONNX model ({first})") from None
        try:
            self.metadata = read_metadata(self.session)
        except ExtremeAugError as e:
            raise ExtremeAugError(f"{path}: {e}") from None
        try:
            self.prep = Preprocessing.from_dict(self.metadata.get("preprocessing"))
            for key in ("threshold", "min_component_mm3"):
                if not isinstance(self.metadata.get(key, 0.0), (int, float)):
                    raise ValueError(f"{key} is not a number")
        except (TypeError, ValueError) as e:
            raise ExtremeAugError(f"{path}: the model's extremeaug metadata is damaged ({e})") from None
        self.providers = self.session.get_providers()
        try:
            self.labels = [Structure.from_dict(d) for d in self.metadata["labels"]] if self.metadata.get("labels") \
                else [default_structure()]   # a model from before several structures: one, value 1
            check_table(self.labels)
        except (KeyError, TypeError, ValueError, ExtremeAugError) as e:
            raise ExtremeAugError(f"{path}: the model's label table is damaged ({e})") from None

    def class_probabilities(self, scan: sitk.Image) -> np.ndarray:
        """Probability of each structure on the scan's own grid, float32 [K, z, y, x]."""
        slices, grid = scan_to_slices(scan, self.prep)
        out = np.empty((len(slices), len(self.labels)) + slices.shape[1:], np.float32)
        name = self.session.get_inputs()[0].name
        for s in range(0, len(slices), BATCH_SLICES):
            batch = slices[s:s + BATCH_SLICES, None]
            try:
                got = self.session.run(None, {name: batch})[0]
            except Exception as e:  # onnxruntime's own exception types (GPU out of memory among them)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                raise ExtremeAugError(f"onnxruntime failed on {self.providers[0]} ({first}); "
                                      "try --device cpu") from None
            if got.shape[1] != len(self.labels):
                raise ExtremeAugError(f"the model gives {got.shape[1]} channel(s) but its metadata lists "
                                      f"{len(self.labels)} structure(s); the file is damaged")
            out[s:s + BATCH_SLICES] = got
        return np.stack([sitk.GetArrayFromImage(slices_to_scan(out[:, k], grid, self.prep.axis, scan))
                         for k in range(len(self.labels))])

    def probabilities(self, scan: sitk.Image) -> sitk.Image:
        """Per voxel, the highest structure probability (with one structure, its probability), float32."""
        return image_like(self.class_probabilities(scan).max(axis=0), scan)

    def segment(self, scan: sitk.Image, threshold: Optional[float] = None, min_component_mm3: Optional[float] = None,
                keep_largest: Optional[bool] = None) -> Tuple[sitk.Image, sitk.Image]:
        """The label map (each voxel the value of its most probable structure where that probability passes the
        threshold, else 0) after per-structure clean-up, and the highest-probability map beside it."""
        probs = self.class_probabilities(scan)
        top = probs.max(axis=0)
        t = self.metadata.get("threshold", 0.5) if threshold is None else threshold
        values = np.array([lab.value for lab in self.labels])
        array = np.where(top > t, values[probs.argmax(axis=0)], 0).astype(label_dtype(self.labels))
        mm3 = self.metadata.get("min_component_mm3", 0.0) if min_component_mm3 is None else min_component_mm3
        largest = bool(self.metadata.get("keep_largest", False)) if keep_largest is None else keep_largest
        mask = clean_structures(image_like(array, scan), self.labels, mm3, largest)
        return mask, image_like(top, scan)


def clean_structures(labelmap: sitk.Image, labels, min_mm3: float = 0.0, keep_largest: bool = False) -> sitk.Image:
    """Per structure, drop connected components smaller than `min_mm3` (the paper's false-positive specks)
    and, with `keep_largest`, all but its largest component."""
    if not (min_mm3 and min_mm3 > 0) and not keep_largest:
        return labelmap
    voxel_mm3 = float(np.prod(labelmap.GetSpacing()))
    min_size = int(np.ceil(min_mm3 / voxel_mm3)) if min_mm3 and min_mm3 > 0 else 0
    out = sitk.GetArrayFromImage(labelmap)
    for lab in labels:
        ranked = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(labelmap == lab.value),
                                                              minimumObjectSize=min_size))
        drop = (out == lab.value) & ((ranked == 0) | (ranked > 1 if keep_largest else False))
        out[drop] = 0
    cleaned = sitk.GetImageFromArray(out)
    cleaned.CopyInformation(labelmap)
    return cleaned


def structure_volumes(mask: sitk.Image, labels) -> list:
    array = sitk.GetArrayViewFromImage(mask)
    voxel_mm3 = float(np.prod(mask.GetSpacing()))
    return [{"value": lab.value, "name": lab.name, "voxels": int((array == lab.value).sum()),
             "mm3": round(int((array == lab.value).sum()) * voxel_mm3, 1)} for lab in labels]


def segment_file(model: str, image: str, out: str, probabilities: Optional[str] = None, device: str = "auto",
                 threshold: Optional[float] = None, min_component_mm3: Optional[float] = None,
                 keep_largest: Optional[bool] = None, seg_nrrd: Optional[str] = None) -> dict:
    """Segment one scan: the label map to `out`, optionally the highest-probability map and a 3D Slicer
    segmentation (`.seg.nrrd`, one named, coloured segment per structure)."""
    if seg_nrrd and not str(seg_nrrd).lower().endswith(".seg.nrrd"):
        raise ExtremeAugError(f"--seg-nrrd {seg_nrrd}: name a file ending in .seg.nrrd")
    check_outputs([model, image], [out, probabilities, seg_nrrd])
    segmenter = Segmenter(model, device)
    scan = read_scan(image)
    mask, prob = segmenter.segment(scan, threshold, min_component_mm3, keep_largest)
    write_image(mask, out)
    if probabilities:
        write_image(prob, probabilities)
    if seg_nrrd:
        write_image(with_segment_fields(mask, segmenter.labels), seg_nrrd)
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return {"mask": str(out), "foreground_voxels": voxels,
            "foreground_mm3": round(voxels * float(np.prod(scan.GetSpacing())), 1),
            "structures": structure_volumes(mask, segmenter.labels), "providers": segmenter.providers}
