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
from .io import check_outputs, read_scan, write_image
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

    def probabilities(self, scan: sitk.Image) -> sitk.Image:
        """Foreground probability on the scan's own grid (float32)."""
        slices, grid = scan_to_slices(scan, self.prep)
        out = np.empty_like(slices)
        name = self.session.get_inputs()[0].name
        for s in range(0, len(slices), BATCH_SLICES):
            batch = slices[s:s + BATCH_SLICES, None]
            try:
                out[s:s + BATCH_SLICES] = self.session.run(None, {name: batch})[0][:, 0]
            except Exception as e:  # onnxruntime's own exception types (GPU out of memory among them)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                raise ExtremeAugError(f"onnxruntime failed on {self.providers[0]} ({first}); "
                                      "try --device cpu") from None
        return slices_to_scan(out, grid, self.prep.axis, scan)

    def segment(self, scan: sitk.Image, threshold: Optional[float] = None,
                min_component_mm3: Optional[float] = None) -> Tuple[sitk.Image, sitk.Image]:
        prob = self.probabilities(scan)
        t = self.metadata.get("threshold", 0.5) if threshold is None else threshold
        mask = sitk.Cast(prob > t, sitk.sitkUInt8)
        mm3 = self.metadata.get("min_component_mm3", 0.0) if min_component_mm3 is None else min_component_mm3
        mask = remove_small_components(mask, mm3)
        mask.CopyInformation(scan)
        return mask, prob


def remove_small_components(mask: sitk.Image, min_mm3: float) -> sitk.Image:
    """Drop connected components smaller than `min_mm3` (the paper's false-positive specks)."""
    if not min_mm3 or min_mm3 <= 0:
        return mask
    voxel_mm3 = float(np.prod(mask.GetSpacing()))
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), minimumObjectSize=int(np.ceil(min_mm3 / voxel_mm3)))
    return sitk.Cast(labels > 0, sitk.sitkUInt8)


def segment_file(model: str, image: str, out: str, probabilities: Optional[str] = None, device: str = "auto",
                 threshold: Optional[float] = None, min_component_mm3: Optional[float] = None) -> dict:
    check_outputs([model, image], [out, probabilities])
    segmenter = Segmenter(model, device)
    scan = read_scan(image)
    mask, prob = segmenter.segment(scan, threshold, min_component_mm3)
    write_image(mask, out)
    if probabilities:
        write_image(prob, probabilities)
    voxels = int(sitk.GetArrayViewFromImage(mask).sum())
    return {"mask": str(out), "foreground_voxels": voxels,
            "foreground_mm3": round(voxels * float(np.prod(scan.GetSpacing())), 1),
            "providers": segmenter.providers}
