"""Segment project cases with a model version, score how unsure the model is, suggest the next case.

Uncertainty is the mean binary entropy (bits, 0..1) of the probability map over the predicted region
and a band of BAND_MM around it: where the boundary of a correction would go. A case the model barely
sees (empty prediction) gets the band around any voxel with p >= 0.05, or 1.0 when there is none.
"""
from __future__ import annotations

import secrets
import sqlite3
import time
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import ExtremeAugError
from ..infer import Segmenter
from ..io import read_scan, write_image
from .cases import sha256
from .store import Store

BAND_MM = 3.0
FAINT = 0.05


def uncertainty(prob: sitk.Image, mask: sitk.Image) -> float:
    p = np.clip(sitk.GetArrayViewFromImage(prob).astype(np.float64), 1e-7, 1 - 1e-7)
    region = sitk.GetArrayViewFromImage(mask) > 0
    if not region.any():
        region = p >= FAINT
        if not region.any():
            return 1.0
    seed = sitk.GetImageFromArray(region.astype(np.uint8))
    seed.CopyInformation(prob)
    radius = [max(1, int(round(BAND_MM / s))) for s in prob.GetSpacing()]
    band = sitk.GetArrayViewFromImage(sitk.BinaryDilate(seed, radius)) > 0
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(h[band].mean())


def resolve_version(store: Store, version: Optional[int]) -> sqlite3.Row:
    if version is None:
        version = store.setting("active_version")
        if version is None:
            raise ExtremeAugError("the project has no model yet: train one with `extremeaug project train`")
    row = store.conn.execute("SELECT * FROM versions WHERE version = ?", (int(version),)).fetchone()
    if row is None:
        known = [str(r[0]) for r in store.conn.execute("SELECT version FROM versions ORDER BY version")]
        raise ExtremeAugError(f"no model version {version}; versions: {', '.join(known) or 'none yet'}")
    return row


def segment_cases(store: Store, case_ids: Sequence[str], version: Optional[int] = None, device: str = "auto",
                  progress=None) -> List[dict]:
    """Predict each case, store mask + probability map as an auto label (it never replaces a human one)."""
    model = resolve_version(store, version)
    for case_id in case_ids:
        store.case(case_id)   # unknown ids fail before any work
    segmenter = Segmenter(store.path(model["path"]), device)
    results = []
    for case_id in case_ids:
        case = store.case(case_id)
        scan = read_scan(store.path(case["scan"]))
        mask, prob = segmenter.segment(scan)
        score = uncertainty(prob, mask)
        stem = store.root / "cases" / case_id / "auto" / f"v{model['version']}-{secrets.token_hex(3)}"
        mask_file = write_image(mask, stem.with_name(stem.name + "-mask.nrrd"))
        prob_file = write_image(prob, stem.with_name(stem.name + "-probability.nrrd"))
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        with store.write() as conn:
            conn.execute("INSERT INTO labels (case_id, kind, path, sha256, voxels, created, model_version, "
                         "probabilities, uncertainty) VALUES (?, 'auto', ?, ?, ?, ?, ?, ?, ?)",
                         (case_id, store.relative(mask_file), sha256(mask_file), voxels, time.time(),
                          model["version"], store.relative(prob_file), score))
        results.append({"id": case_id, "version": model["version"], "mask": store.relative(mask_file),
                        "probabilities": store.relative(prob_file), "voxels": voxels, "uncertainty": score,
                        "state": store.state(case_id)})
        if progress:
            progress(results[-1])
    return results


def unlabeled_ids(store: Store) -> List[str]:
    """Cases without a human label (unlabeled or auto), in the order they were added."""
    return [r[0] for r in store.conn.execute(
        "SELECT id FROM cases c WHERE NOT EXISTS (SELECT 1 FROM labels WHERE case_id = c.id AND kind IN "
        "('manual', 'corrected')) ORDER BY added")]


def suggest(store: Store) -> dict:
    """The case whose correction should help most: the most uncertain prediction of the active model
    among cases without a human label. Scores from other versions are not comparable, so they are
    used only when nothing was segmented with the active one."""
    candidates = unlabeled_ids(store)
    if not candidates:
        return {"case": None, "reason": "every case has a human label; add scans to grow the dataset"}
    active = store.setting("active_version")
    scored = []
    for case_id in candidates:
        auto = store.latest_label(case_id, ("auto",))
        if auto is not None and auto["uncertainty"] is not None:
            scored.append((auto["model_version"] == active, auto["uncertainty"], case_id, auto["model_version"]))
    not_segmented = [c for c in candidates if c not in {s[2] for s in scored if s[0]}]
    if not scored:
        return {"case": candidates[0], "score": None, "version": None, "candidates": len(candidates),
                "reason": f"no case has been segmented yet; segment first (`extremeaug project segment "
                          f"{store.root} --unlabeled`); until then, the first unlabeled case"}
    current, score, case_id, version = max(scored)
    same = sum(1 for s in scored if s[0] == current)
    reason = (f"highest mean binary entropy ({score:.3f} bits) near the predicted structures among {same} "
              f"case(s) segmented by model v{version}")
    if not current:
        reason += f"; no case has been segmented by the active model v{active} yet"
    return {"case": case_id, "score": score, "version": version, "candidates": len(candidates),
            "not_segmented_by_active": len(not_segmented), "reason": reason}
