"""Segmentation with onnxruntime: the ONNX file alone (graph + metadata) is enough."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..common.errors import ExtremeAugError
from ..common.structures import Structure, check_table, default_structure
from ..data.io import check_outputs, image_like, read_scan, write_image
from ..data.decision import across_slices, clean_structures, label_array, uncertainty_map
from ..data.labels import with_segment_fields
from ..data.poses import averaged_over_poses
from ..data.preprocess import (Preprocessing, check_slice_size, covering, scan_to_slices, slices_to_scan,
                               with_context)
from ..networks.metadata import METADATA_KEY

BATCH_SLICES = 8


CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}   # EXHAUSTIVE (the default) re-tunes on every run: seconds


def providers_for(device: str) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        if hasattr(ort, "preload_dlls"):   # onnxruntime >= 1.21: CUDA and cuDNN from torch's or nvidia's wheels
            ort.preload_dlls()
        return [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    if device == "cuda":
        raise ExtremeAugError("--device cuda: onnxruntime has no CUDA provider here "
                              f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    if device != "auto":
        raise ExtremeAugError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return ["CPUExecutionProvider"]


def provider_warning(requested: list, running: list) -> Optional[str]:
    """One line when onnxruntime did not start the first provider asked for (a CUDA provider whose CUDA or cuDNN
    libraries are missing falls back to the CPU without an error), else None."""
    first = requested[0][0] if isinstance(requested[0], tuple) else requested[0]
    if running and running[0] == first:
        return None
    return f"onnxruntime could not start {first} (running on {running[0] if running else 'nothing'}): check the " \
           "CUDA and cuDNN libraries onnxruntime-gpu needs, or pass --device cpu"


def read_metadata(session) -> dict:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ExtremeAugError("the ONNX file was not written by extremeaug (no 'extremeaug' metadata)")
    try:
        return json.loads(raw)
    except ValueError:
        raise ExtremeAugError("the ONNX file's extremeaug metadata is damaged") from None


class Segmenter:
    def __init__(self, model_path: str | os.PathLike, device: str = "auto", slice_size: Optional[int] = None):
        """Args:
            slice_size: resample each slice to this many pixels a side for the model instead of the size it was
                trained on (`preprocess.segment_sizes`: 224 for 256 takes about 0.77 of the model's time).
        """
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
            for key in ("threshold", "min_component_mm3", "min_relative_size"):
                if not isinstance(self.metadata.get(key, 0.0), (int, float)):
                    raise ValueError(f"{key} is not a number")
            for key in ("tta", "smooth_slices"):
                if not isinstance(self.metadata.get(key, False), bool):
                    raise ValueError(f"{key} is not true or false")
            if not 0.0 <= self.metadata.get("min_relative_size", 0.0) <= 1.0:   # above 1 would drop every component
                raise ValueError("min_relative_size is not 0 to 1")
        except (TypeError, ValueError) as e:
            raise ExtremeAugError(f"{path}: the model's extremeaug metadata is damaged ({e})") from None
        if slice_size is not None:
            size = check_slice_size(slice_size, self.prep.slice_size, bool(self.metadata.get("augmentation", True)))
            pixel_mm = None if self.prep.pixel_mm is None else \
                [p * self.prep.slice_size / size for p in self.prep.pixel_mm]   # the same window, fewer pixels
            self.prep = replace(self.prep, slice_size=size, pixel_mm=pixel_mm)
        self.providers = self.session.get_providers()
        self.warning = provider_warning(providers, self.providers)
        if self.warning:
            print(f"extremeaug: warning: {self.warning}", file=sys.stderr)
        try:
            self.labels = [Structure.from_dict(d) for d in self.metadata["labels"]] if self.metadata.get("labels") \
                else [default_structure()]   # a model from before several structures: one, value 1
            check_table(self.labels)
        except (KeyError, TypeError, ValueError, ExtremeAugError) as e:
            raise ExtremeAugError(f"{path}: the model's label table is damaged ({e})") from None

    def class_probabilities(self, scan: sitk.Image, tta: Optional[bool] = None,
                            smooth: Optional[bool] = None) -> np.ndarray:
        """Probability of each structure on the scan's own grid, float32 [K, z, y, x].

        Args:
            tta: average over `data.poses.POSES` (rotations and scales of the training's family), each mapped
                back; None is the model's setting (off for a model that does not store one).
            smooth: tie each slice's probabilities to its neighbours' (`data.decision.across_slices`); None is the
                model's setting (`smooth_slices`, off for a model that does not store one).
        """
        slices, grid = scan_to_slices(scan, covering(self.prep, scan))
        out = averaged_over_poses(slices, self._slice_probabilities) if self.tta(tta) \
            else self._slice_probabilities(slices)
        if self.smooth(smooth):
            out = across_slices(out, grid.GetSpacing()[self.prep.axis])
        return np.stack([sitk.GetArrayFromImage(slices_to_scan(out[:, k], grid, self.prep.axis, scan))
                         for k in range(len(self.labels))])

    def tta(self, asked: Optional[bool] = None) -> bool:
        """Whether segmentation averages over poses: as asked, else as the model was trained to segment."""
        return bool(self.metadata.get("tta", False)) if asked is None else asked

    def smooth(self, asked: Optional[bool] = None) -> bool:
        """Whether segmentation ties each slice's probabilities to its neighbours': as asked, else the model's."""
        return bool(self.metadata.get("smooth_slices", False)) if asked is None else asked

    def _slice_probabilities(self, slices: np.ndarray) -> np.ndarray:
        """The model on normalised slices [n, S, S]: probabilities [n, K, S, S]."""
        out = np.empty((len(slices), len(self.labels)) + slices.shape[1:], np.float32)
        name = self.session.get_inputs()[0].name
        inputs = with_context(slices, int(self.metadata.get("context", 0)))
        for s in range(0, len(slices), BATCH_SLICES):
            batch = np.ascontiguousarray(inputs[s:s + BATCH_SLICES])
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
        return out

    def probabilities(self, scan: sitk.Image) -> sitk.Image:
        """Per voxel, the highest structure probability (with one structure, its probability), float32."""
        return image_like(self.class_probabilities(scan).max(axis=0), scan)

    def segment(self, scan: sitk.Image, threshold: Optional[float] = None, min_component_mm3: Optional[float] = None,
                keep_largest: Optional[bool] = None, tta: Optional[bool] = None, smooth: Optional[bool] = None
                ) -> Tuple[sitk.Image, sitk.Image]:
        """The label map (each voxel the value of its most probable structure where that probability passes the
        threshold, else 0) after per-structure clean-up, and the highest-probability map beside it."""
        mask, top, _ = self.analyse(scan, threshold, min_component_mm3, keep_largest, tta, uncertainty=False,
                                    smooth=smooth)
        return mask, top

    def analyse(self, scan: sitk.Image, threshold: Optional[float] = None, min_component_mm3: Optional[float] = None,
                keep_largest: Optional[bool] = None, tta: Optional[bool] = None,
                min_relative: Optional[float] = None, uncertainty: bool = True, smooth: Optional[bool] = None
                ) -> Tuple[sitk.Image, sitk.Image, Optional[sitk.Image]]:
        """`segment`'s label map and highest-probability map, and the voxel-wise uncertainty map
        (`uncertainty_map`; None when `uncertainty` is off) beside them, all on the scan's grid."""
        probs = self.class_probabilities(scan, tta, smooth)
        return self.decide(probs, scan, threshold, min_component_mm3, keep_largest, min_relative, uncertainty)

    def decide(self, probs: np.ndarray, scan: sitk.Image, threshold: Optional[float] = None,
               min_component_mm3: Optional[float] = None, keep_largest: Optional[bool] = None,
               min_relative: Optional[float] = None, uncertainty: bool = True, union: Optional[bool] = None
               ) -> Tuple[sitk.Image, sitk.Image, Optional[sitk.Image]]:
        """From `class_probabilities`: the cleaned label map, the highest-probability map and the uncertainty map
        (settings left None are the model's; the map is None when `uncertainty` is off, which saves a sort and a
        copy of the probabilities, about 0.07 s of a 67-slice scan on two cores; `union`: `label_array`'s)."""
        top = probs.max(axis=0)
        t = self.metadata.get("threshold", 0.5) if threshold is None else threshold
        array = label_array(probs, self.labels, t, bool(self.metadata.get("union", False)) if union is None else union)
        mm3 = self.metadata.get("min_component_mm3", 0.0) if min_component_mm3 is None else min_component_mm3
        largest = bool(self.metadata.get("keep_largest", False)) if keep_largest is None else keep_largest
        relative = self.metadata.get("min_relative_size", 0.0) if min_relative is None else min_relative
        mask = clean_structures(image_like(array, scan), self.labels, mm3, largest, relative)
        return mask, image_like(top, scan), image_like(uncertainty_map(probs), scan) if uncertainty else None


def structure_volumes(mask: sitk.Image, labels) -> list:
    array = sitk.GetArrayViewFromImage(mask)
    voxel_mm3 = float(np.prod(mask.GetSpacing()))
    return [{"value": lab.value, "name": lab.name, "voxels": int((array == lab.value).sum()),
             "mm3": round(int((array == lab.value).sum()) * voxel_mm3, 1)} for lab in labels]


def segment_file(model: str, image: str, out: str, probabilities: Optional[str] = None, device: str = "auto",
                 threshold: Optional[float] = None, min_component_mm3: Optional[float] = None,
                 keep_largest: Optional[bool] = None, seg_nrrd: Optional[str] = None,
                 uncertainty: Optional[str] = None, tta: Optional[bool] = None, min_relative: Optional[float] = None,
                 slice_size: Optional[int] = None, smooth: Optional[bool] = None) -> dict:
    """Segment one scan: the label map to `out`, optionally the highest-probability map, the uncertainty map and
    a 3D Slicer segmentation (`.seg.nrrd`, one named, coloured segment per structure)."""
    if seg_nrrd and not str(seg_nrrd).lower().endswith(".seg.nrrd"):
        raise ExtremeAugError(f"--seg-nrrd {seg_nrrd}: name a file ending in .seg.nrrd")
    if min_relative is not None and not 0.0 <= min_relative <= 1.0:
        raise ExtremeAugError(f"--min-relative-size {min_relative}: expected 0 to 1 (a share of the largest component)")
    check_outputs([model, image], [out, probabilities, seg_nrrd, uncertainty])
    segmenter = Segmenter(model, device, slice_size)
    scan = read_scan(image)
    mask, prob, unsure = segmenter.analyse(scan, threshold, min_component_mm3, keep_largest, tta, min_relative,
                                           uncertainty=bool(uncertainty), smooth=smooth)
    write_image(mask, out)
    if probabilities:
        write_image(prob, probabilities)
    if uncertainty:
        write_image(unsure, uncertainty)
    if seg_nrrd:
        write_image(with_segment_fields(mask, segmenter.labels), seg_nrrd)
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return {"mask": str(out), "foreground_voxels": voxels,
            "foreground_mm3": round(voxels * float(np.prod(scan.GetSpacing())), 1),
            "structures": structure_volumes(mask, segmenter.labels), "providers": segmenter.providers,
            "slice_size": segmenter.prep.slice_size, "tta": segmenter.tta(tta),
            "smooth_slices": segmenter.smooth(smooth)}
