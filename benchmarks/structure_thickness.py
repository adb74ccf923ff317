"""How thick is each structure along each axis of the scan, and how thick does a model segment it? Per label of each
reference mask: the mean length (mm) of the label along every line of voxels parallel to an image axis that crosses
it; with --predictions, the share of those lines the predicted foreground (within NEAR_MM of the label) reaches,
and the mean length of both along the lines it reaches. Tells a model that segments a structure thinner than it is
(short lines reached) from one that misses parts of it (lines not reached).

    python benchmarks/structure_thickness.py --references ../shared/data/ivd-mr-t2-lumbar/case*_mask.nii.gz
    extremeaug segment --model MODEL.onnx --image case20_image.nii.gz --out pred20.nii.gz
    python benchmarks/structure_thickness.py --references case20_mask.nii.gz --predictions pred20.nii.gz
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

NEAR_MM = 3.0


def thickness(label: np.ndarray, axis: int, spacing: float) -> float:
    """The mean length (mm) of `label` along the lines parallel to `axis` that cross it."""
    return round(float(label.sum(axis=axis)[label.any(axis=axis)].mean() * spacing), 2)


def reached(label: np.ndarray, predicted: np.ndarray, axis: int, spacing: float) -> dict:
    """Along `axis`: the share of the label's lines the prediction reaches, and on those the label's and the
    prediction's mean length (mm)."""
    lines, hit = label.any(axis=axis), predicted.any(axis=axis)
    both = lines & hit
    return {"reached": round(float(both.sum() / lines.sum()), 3),
            "mm": round(float(label.sum(axis=axis)[both].mean() * spacing), 2) if both.any() else 0.0,
            "predicted_mm": round(float(predicted.sum(axis=axis)[both].mean() * spacing), 2) if both.any() else 0.0}


def rows(reference: Path, prediction: Path = None) -> list:
    image = sitk.ReadImage(str(reference))
    labels = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()[::-1]   # numpy's axis order (z, y, x)
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))) > 0 if prediction else None
    out = []
    for value in (int(v) for v in np.unique(labels) if v > 0):
        label = labels == value
        row = {"mask": reference.name, "label": value}
        if predicted is not None:
            radius = [max(1, round(NEAR_MM / s)) for s in image.GetSpacing()]
            near = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(label.astype(np.uint8)), radius)) > 0
        for axis, name in enumerate("zyx"):
            row[f"{name}_mm"] = thickness(label, axis, spacing[axis])
            if predicted is not None:
                row[f"{name}_where_reached"] = reached(label, predicted & near, axis, spacing[axis])
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--references", nargs="+", type=Path, required=True)
    p.add_argument("--predictions", nargs="+", type=Path, help="one per reference, in the same order")
    a = p.parse_args()
    predictions = a.predictions or [None] * len(a.references)
    if len(predictions) != len(a.references):
        p.error("give one prediction per reference")
    for reference, prediction in zip(a.references, predictions):
        labels = rows(reference, prediction)
        for row in labels:
            print(json.dumps(row))
        if prediction:   # over the labels: the share of lines reached, and predicted / reference length on them
            print(json.dumps({"mask": reference.name, "prediction": prediction.name, **{
                f"{axis}_reached": round(float(np.mean([r[f"{axis}_where_reached"]["reached"] for r in labels])), 3)
                for axis in "zyx"}, **{
                f"{axis}_length_ratio": round(float(np.mean([r[f"{axis}_where_reached"]["predicted_mm"]
                                                             / r[f"{axis}_where_reached"]["mm"] for r in labels])), 3)
                for axis in "zyx"}}))


if __name__ == "__main__":
    main()
