"""Overlap, surface distance and per-structure detection metrics, with SimpleITK filters."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Dict, Iterable, Optional

import numpy as np
import SimpleITK as sitk

from ..data.io import image_like, on_grid, read_binary, read_label_arrays, same_grid
from ..data.labels import select

DETECTION_MIN_COVERAGE = 0.1  # a reference structure counts as found when >= 10 % of it is predicted
NEAR_MM = 5.0                 # the prediction's neighbourhood an uncertainty map is scored in


def _surface_distances(a: sitk.Image, b: sitk.Image) -> np.ndarray:
    """Distances (mm) from each surface voxel of `a` to the nearest surface voxel of `b`."""
    contour_b = sitk.LabelContour(b)
    if not sitk.GetArrayViewFromImage(contour_b).any():   # b fills the image: it has no surface inside it
        return np.full(1, math.inf)
    signed = sitk.SignedMaurerDistanceMap(contour_b, squaredDistance=False, useImageSpacing=True,
                                          insideIsPositive=False)
    dist_to_b = sitk.Maximum(signed, 0.0)  # the one-voxel contour itself is "inside": distance 0
    surface_a = sitk.GetArrayFromImage(sitk.LabelContour(a)) > 0
    return sitk.GetArrayFromImage(dist_to_b)[surface_a].astype(np.float64)


def _components(mask: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(mask, True))


def detection(pred: sitk.Image, ref: sitk.Image) -> dict:
    ref_cc, pred_cc = _components(ref), _components(pred)
    p, r = sitk.GetArrayViewFromImage(pred) > 0, sitk.GetArrayViewFromImage(ref) > 0
    sizes = np.bincount(ref_cc.ravel())[1:]
    covered = np.bincount(ref_cc[p], minlength=len(sizes) + 1)[1:]
    found = int((covered >= DETECTION_MIN_COVERAGE * sizes).sum()) if len(sizes) else 0
    n_pred = int(pred_cc.max())
    touching = np.unique(pred_cc[r])
    extra = n_pred - int((touching > 0).sum())
    inside = np.isin(pred_cc, touching[touching > 0])   # predicted components that touch a reference structure
    n_ref, n_inside = int(r.sum()), int(inside.sum())
    return {"reference_structures": int(len(sizes)), "found": found, "missed": int(len(sizes)) - found,
            "extra": int(extra), "predicted_structures": n_pred, "extra_voxels": int(p.sum()) - n_inside,
            "dice_labeled_extent": 2 * int((p & r).sum()) / (n_inside + n_ref) if n_inside + n_ref else 1.0}


def evaluate(pred: sitk.Image, ref: sitk.Image) -> dict:
    """Dice, HD95 and ASSD (mm) and detection counts; `pred` is put on `ref`'s grid first.

    `dice_labeled_extent` is the Dice once the predicted components that touch no reference structure are removed:
    beside the plain Dice it tells boundary error from unlabeled look-alikes (a disc the reference does not label).
    """
    pred = on_grid(sitk.Cast(pred > 0, sitk.sitkUInt8), ref)
    ref = sitk.Cast(ref > 0, sitk.sitkUInt8)
    n_pred = int(sitk.GetArrayViewFromImage(pred).sum())
    n_ref = int(sitk.GetArrayViewFromImage(ref).sum())
    result = {"prediction_voxels": n_pred, "reference_voxels": n_ref}
    if n_pred == 0 and n_ref == 0:
        result.update(dice=1.0, hd95_mm=0.0, assd_mm=0.0)
    elif n_pred == 0 or n_ref == 0:
        result.update(dice=0.0, hd95_mm=math.inf, assd_mm=math.inf)
    else:
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(ref, pred)
        d = np.concatenate([_surface_distances(pred, ref), _surface_distances(ref, pred)])
        finite = bool(np.isfinite(d).all())   # a mask filling the image has no surface: distances undefined
        result.update(dice=float(overlap.GetDiceCoefficient()), hd95_mm=float(np.percentile(d, 95)) if finite
                      else math.inf, assd_mm=float(d.mean()) if finite else math.inf)
    result.update(detection(pred, ref))
    return result


def evaluate_files(prediction: str, reference: str, label_values: Optional[Iterable[int]] = None,
                   names: Optional[Dict[int, str]] = None) -> dict:
    """`evaluate` on two files, with `warnings` for what makes the numbers meaningless without failing:
    a label value that matches no voxel of the reference, a prediction that lies outside its grid."""
    ref, pred = read_binary(reference, label_values), read_binary(prediction)
    warnings = [f"label value {v} matches no voxel of the reference" for v in (label_values or [])
                if not sitk.GetArrayFromImage(read_binary(reference, [v])).any()]   # a view of a temporary dangles
    if sitk.GetArrayViewFromImage(pred).any() and not sitk.GetArrayFromImage(on_grid(pred, ref)).any():
        warnings.append("the prediction does not overlap the reference's grid (another scan?)")
    result = dict(evaluate(pred, ref), warnings=warnings)
    per_structure = evaluate_structures(prediction, reference, label_values, names)
    if per_structure:
        mismatch = per_structure.pop("mismatch", None)
        result.update(per_structure)
        result["warnings"] += [mismatch] if mismatch else []
    return result


def evaluate_structures(prediction: str, reference: str, label_values: Optional[Iterable[int]] = None,
                        names: Optional[Dict[int, str]] = None) -> Optional[dict]:
    """Per structure of a multi-label reference: `evaluate` on that structure alone, and what the prediction
    called its voxels (`predicted_as`: voxels per predicted structure, so a disc given the wrong level shows).
    Structures are matched by name when both files carry names (.seg.nrrd), else by label value. None when
    both files hold a single structure. `names` names the label values of a file that carries none."""
    p_arrays, p_labels, p_named, p_geometry = read_label_arrays(prediction)
    r_arrays, r_labels, r_named, r_geometry = read_label_arrays(reference)
    if names:
        p_labels = p_labels if p_named else [replace(lab, name=names.get(lab.value, lab.name)) for lab in p_labels]
        r_labels = r_labels if r_named else [replace(lab, name=names.get(lab.value, lab.name)) for lab in r_labels]
    r_arrays, r_labels = select(r_arrays, r_labels, label_values)
    if len(r_labels) < 2 and len(p_labels) < 2:
        return None
    by_name = p_named and r_named
    key = (lambda lab: lab.name.casefold()) if by_name else (lambda lab: lab.value)
    p_index = {key(lab): i for i, lab in enumerate(p_labels)}
    called = np.zeros(r_arrays[0].shape, np.int16)   # 1 + index of the predicted structure, on the ref grid
    for i, a in enumerate(p_arrays):
        called = np.maximum(called, sitk.GetArrayFromImage(on_grid(image_like(a, p_geometry), image_like(
            r_arrays[0], r_geometry))).astype(np.int16) * (i + 1))
    rows = []
    for a, lab in zip(r_arrays, r_labels):
        i = p_index.get(key(lab))
        pred = (called == i + 1) if i is not None else np.zeros_like(a)
        name = lab.name if r_named or not p_named or i is None else p_labels[i].name
        counts = np.bincount(called[a], minlength=len(p_labels) + 1)
        predicted_as = {p_labels[j - 1].name: int(counts[j]) for j in range(1, len(counts)) if counts[j]}
        metrics = evaluate(image_like(pred, r_geometry), image_like(a, r_geometry))
        rows.append(dict(value=lab.value, name=name, **metrics,
                         predicted_as=predicted_as, wrong_structure_voxels=int(counts[1:].sum() - (
                             counts[i + 1] if i is not None else 0))))
    matched = [r for r, lab in zip(rows, r_labels) if key(lab) in p_index]
    compared = (f"each reference structure against the prediction's structure of the same "
                f"{'name' if by_name else 'label value'}; the prediction has {len(p_labels)} structure(s), the "
                f"reference {len(r_labels)}, {len(matched)} matched")
    result = {"structures": rows, "mean_dice": float(np.mean([r["dice"] for r in rows])), "compared": compared}
    if len(p_labels) != len(r_labels) or len(matched) < len(rows):
        result["mismatch"] = (f"the prediction has {len(p_labels)} structure(s) and the reference {len(r_labels)}: "
                              f"mean_dice scores the {len(rows) - len(matched)} structure(s) the prediction lacks "
                              "as 0; the top-level Dice compares the union of all structures")
    return result


def uncertainty_scores(uncertainty: sitk.Image, pred: sitk.Image, ref: sitk.Image, radius_mm: float = NEAR_MM,
                       top: float = 0.05) -> dict:
    """How well a voxel-wise uncertainty map points at the prediction's errors (voxels where `pred` != `ref`).

    Scored in the prediction's neighbourhood (the predicted region dilated by `radius_mm`), where a clinician
    looks: `auroc` is the area under the ROC curve of uncertainty for telling wrong from right voxels there, and
    `captured` the share of ALL wrong voxels (outside the neighbourhood too) among its most uncertain `top`."""
    pred = on_grid(sitk.Cast(pred > 0, sitk.sitkUInt8), ref)
    u = sitk.GetArrayFromImage(uncertainty if same_grid(uncertainty, ref) else sitk.Resample(
        uncertainty, ref, sitk.Transform(), sitk.sitkLinear, 1.0, sitk.sitkFloat32))
    p, r = sitk.GetArrayFromImage(pred) > 0, sitk.GetArrayFromImage(ref) > 0
    radius = [max(1, int(round(radius_mm / s))) for s in ref.GetSpacing()]
    near = sitk.GetArrayFromImage(sitk.BinaryDilate(pred, radius)) > 0
    wrong = p != r
    scores, labels = u[near], wrong[near]
    n_top = max(1, int(round(top * len(scores)))) if len(scores) else 0
    chosen = np.argsort(scores, kind="stable")[::-1][:n_top]
    return {"auroc": _auroc(scores, labels), "captured": float(labels[chosen].sum() / wrong.sum()) if wrong.any()
            else 1.0, "neighbourhood_voxels": int(near.sum()), "wrong_voxels": int(wrong.sum()),
            "wrong_in_neighbourhood": int(labels.sum())}


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC with tied scores sharing their mean rank (NaN when one class is empty)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0   # 1-based mean rank of each distinct score
    ranks = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
