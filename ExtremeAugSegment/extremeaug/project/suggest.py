"""Segment project cases with a model version, score how unsure the model is, suggest the next case.

Each prediction is stored with its voxel-wise uncertainty map (`data.decision.uncertainty_map`: 1 - the margin between
the two most likely classes, so two competing structures count as well as a faint boundary). A case's score is
the mean of that map over the predicted region and a band of BAND_MM around it: where the boundary of a
correction would go. A case the model barely sees (empty prediction) gets the band around any voxel with an
uncertainty of at least FAINT, or 1.0 when there is none.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..data.io import read_scan, write_image
from ..inference.segmenter import Segmenter
from .cases import removed_on_failure, sha256
from .records import LabelKind, SegmentResult, Suggestion
from .store import Store
from .versions import resolve

BAND_MM = 3.0
FAINT = 0.1   # the uncertainty of p = 0.05 for one structure


def uncertainty(unsure: sitk.Image, mask: sitk.Image) -> float:
    u = sitk.GetArrayViewFromImage(unsure).astype(np.float64)
    region = sitk.GetArrayViewFromImage(mask) > 0
    if not region.any():
        region = u >= FAINT
        if not region.any():
            return 1.0
    seed = sitk.GetImageFromArray(region.astype(np.uint8))
    seed.CopyInformation(unsure)
    radius = [max(1, int(round(BAND_MM / s))) for s in unsure.GetSpacing()]
    band = sitk.GetArrayFromImage(sitk.BinaryDilate(seed, radius)) > 0   # a view of a temporary would dangle
    return float(u[band].mean())


def segment_cases(store: Store, case_ids: Sequence[str], version: Optional[int], device: str,
                  progress: Optional[Callable[[SegmentResult], None]] = None) -> List[SegmentResult]:
    """Predict each case, store mask + probability map as an auto label (it never replaces a human one)."""
    store.check_writable()
    model = resolve(store, version)
    for case_id in case_ids:
        store.case_row(case_id)   # unknown ids fail before any work
    segmenter = Segmenter(store.path(model.path), device)
    results = []
    for case_id in case_ids:
        scan = read_scan(store.path(store.case_row(case_id)["scan"]))
        mask, prob, unsure = segmenter.analyse(scan)
        score = uncertainty(unsure, mask)
        stem = store.root / "cases" / case_id / "auto" / f"v{model.version}-{secrets.token_hex(3)}"
        written: List[Path] = []
        with removed_on_failure(written):   # a prediction that is not committed leaves no files behind
            for image, kind in ((mask, "mask"), (prob, "probability"), (unsure, "uncertainty")):
                written.append(write_image(image, stem.with_name(f"{stem.name}-{kind}.nrrd")))
        mask_file, prob_file, unsure_file = written
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        with removed_on_failure(written), store.write():
            label_id = store.insert_label(case_id, LabelKind.AUTO, store.relative(mask_file), sha256(mask_file), voxels,
                                          model_version=model.version, probabilities=store.relative(prob_file),
                                          uncertainty=score, uncertainty_map=store.relative(unsure_file))
        results.append(SegmentResult(case_id, label_id, model.version, store.relative(mask_file),
                                     store.relative(prob_file), voxels, score, store.state(case_id),
                                     segmenter.providers[0], store.relative(unsure_file)))
        if progress:
            progress(results[-1])
    return results


def suggest(store: Store) -> Suggestion:
    """The case whose correction should help most: the most uncertain prediction of the active model
    among cases without a human label. Scores from other versions are not comparable, so they are
    used only when nothing was segmented with the active one."""
    candidates = store.unlabeled_ids()
    if not candidates:
        return Suggestion(None, "every case has a human label; add scans to grow the dataset")
    active = store.setting("active_version")
    scored = []
    for case_id in candidates:
        auto = store.latest_label(case_id, [LabelKind.AUTO])
        if auto is not None and auto.uncertainty is not None:
            scored.append((auto.model_version == active, auto.uncertainty, case_id, auto.model_version))
    if not scored:
        return Suggestion(candidates[0], f"no case has been segmented yet; segment first (`extremeaug project "
                          f"segment {store.root} --unlabeled`); until then, the first unlabeled case",
                          candidates=len(candidates), not_segmented_by_active=len(candidates))
    current, score, case_id, version = max(scored)
    same = sum(1 for s in scored if s[0] == current)
    reason = (f"highest mean uncertainty ({score:.3f} of 1) near the predicted structures among {same} "
              f"case(s) segmented by model v{version}")
    if not current:
        reason += f"; no case has been segmented by the active model v{active} yet"
    by_active = {s[2] for s in scored if s[0]}
    return Suggestion(case_id, reason, score, version, len(candidates),
                      sum(1 for c in candidates if c not in by_active))
