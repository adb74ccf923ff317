"""Model versions: atomic publish, validation scores that stay comparable, the active model, the plot.

Each version is scored on the validation labels that existed when it was trained (`val_then`) and on
the project's current validation labels (`val_now`); a score is kept per (version, label file), so a
version is scored once per label and old versions are rescored when validation cases are added or
corrected. Beside the scores, each version shows how much its predictions had to be corrected.
"""
from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..common.errors import ExtremeAugError
from ..common.files import write_bytes
from ..common.portable import replace
from ..data.io import read_scan
from ..evaluation.metrics import evaluate_files
from ..evaluation.stats import mean
from ..inference.segmenter import Segmenter
from .cases import sha256
from .records import CorrectionSummary, Label, RunStatus, Scores, Split, Version
from .store import Store, VersionRow

MODEL_FILES = ("model.onnx", "model.pt", "history.json")


def resolve(store: Store, version: Optional[int]) -> VersionRow:
    """A version by number; None is the active one."""
    if version is None:
        version = store.setting("active_version")
        if version is None:
            raise ExtremeAugError("the project has no model yet: train one with `extremeaug project train`")
    return store.version(version)


def score_model(store: Store, onnx: Path, labels: Sequence[Label], device: str) -> Dict[int, dict]:
    """Segment each labeled case with the model and evaluate against its label file."""
    if not labels:
        return {}
    segmenter = Segmenter(onnx, device)
    names = {s.value: s.name for s in store.settings().structures or []}
    scores = {}
    for label in labels:
        scan = read_scan(store.path(store.case_row(label.case_id)["scan"]))
        pred, _ = segmenter.segment(scan)
        scores[label.id] = evaluate_files(pred, store.path(label.path), names=names)   # several: each too
    return scores


def verify_models(store: Store) -> List[str]:
    """Every version's model: present, unchanged since it was published (checksum, for versions published
    with one) and readable as an extremeaug ONNX model."""
    problems = []
    for row in store.versions():
        path, what = store.path(row.path), f"model v{row.version}: {row.path}"
        if not path.is_file():
            problems.append(f"{what} is missing")
        elif row.summary.get("model_sha256") and sha256(path) != row.summary["model_sha256"]:
            problems.append(f"{what} changed on disk (checksum)")
        else:
            try:
                Segmenter(path, "cpu")
            except ExtremeAugError as e:
                problems.append(f"{what} is unreadable ({e})")
    return problems


def publish(store: Store, run_id: str, train_dir: Path, device: str) -> int:
    """Copy the finished run's model into models/v<N> and register it in one transaction: a version
    exists only once its files are complete (a crash leaves an unregistered folder, set aside later)."""
    models = store.root / "models"
    stage = models / f".staging-{run_id}"
    for leftover in models.glob(".staging-*"):   # this run's, or one whose worker died while publishing:
        shutil.rmtree(leftover, ignore_errors=True)   # one run at a time, so no other publishes now
    for name in MODEL_FILES:
        write_bytes((train_dir / name).read_bytes(), stage / name)
    val_labels = store.human_labels(Split.VALIDATION)
    scores = score_model(store, stage / "model.onnx", val_labels, device)
    history = json.loads((stage / "history.json").read_text())
    meta, last = history["metadata"], (history["history"] or [{}])[-1]
    summary = {"status": meta["status"], "epochs_done": meta["epochs_done"], "augment": meta["augment"],
               "train_dice": last.get("train_dice"), "loss": last.get("loss"), "seconds": meta["training_seconds"],
               "device": meta["device"], "width": meta["width"], "training_cases": meta["training_cases"],
               "unlabeled_cases": [row["name"] for row in (meta.get("pseudo_labels") or [{"scans": []}])[-1]["scans"]
                                   if row["used"]],
               "model_sha256": sha256(stage / "model.onnx")}
    run = store.run(run_id)
    with store.write():
        version = store.next_version()
        final = models / f"v{version}"
        if final.exists():   # left by a crash after the rename, before the commit
            replace(final, models / f".unregistered-v{version}-{secrets.token_hex(3)}")
        replace(stage, final)
        store.insert_version(version, run_id, store.relative(final / "model.onnx"), run.train_labels,
                             [lab.id for lab in val_labels], summary)
        store.insert_scores(version, val_labels, scores)
        store.end_run(run_id, RunStatus.FINISHED, None, version=version)
        store.set_setting("active_version", version)
    return version


def list_versions(store: Store, rescore: bool, device: str) -> List[Version]:
    """Every version with its validation scores then and now (missing current scores computed when
    `rescore`, which runs onnxruntime; front ends that must not block pass rescore=False)."""
    current = store.human_labels(Split.VALIDATION)
    active = store.setting("active_version")
    by_version: Dict[Optional[int], list] = {}
    for c in store.corrections():
        by_version.setdefault(c.model_version, []).append(c)
    out = []
    for v in store.versions():
        have = store.scores(v.version)
        missing = [lab for lab in current if lab.id not in have]
        if missing and rescore:
            new = score_model(store, store.path(v.path), missing, device)
            with store.write():
                store.insert_scores(v.version, missing, new)
            have.update({lab.id: (lab.case_id, new[lab.id]) for lab in missing})
        s = v.summary
        fixes = by_version.get(v.version, [])
        out.append(Version(
            v.version, v.run_id, v.created, v.path, v.version == active, len(v.train_labels), s["status"],
            s["epochs_done"], s["augment"], s["seconds"], s["device"], s["width"], s.get("train_dice"), s.get("loss"),
            _scores(have, v.val_labels), _scores(have, [lab.id for lab in current]),
            CorrectionSummary(len(fixes), mean([c.voxels_changed for c in fixes]), mean([c.dice for c in fixes]),
                              mean([c.seconds for c in fixes])), len(s.get("unlabeled_cases", []))))
    return out


def _scores(have: Dict[int, Tuple[str, dict]], label_ids: Sequence[int]) -> Scores:
    """Means over the labels that have a score; unscored ones are left out of `scored`, not averaged."""
    scored = [have[i] for i in label_ids if i in have]
    means = (mean([m[k] for _, m in scored]) for k in ("dice", "hd95_mm", "assd_mm"))
    rows = [r for _, m in scored for r in m.get("structures", []) if r["reference_voxels"]]   # drawn ones only
    return Scores(len(label_ids), len(scored), *means, {case: m["dice"] for case, m in scored},
                  {name: mean([r["dice"] for r in rows if r["name"] == name]) for name in dict.fromkeys(
                      r["name"] for r in rows)})


def use(store: Store, version: int) -> int:
    row = store.version(version)
    if not store.path(row.path).is_file():
        raise ExtremeAugError(f"model version {version}: {row.path} is missing")
    with store.write():
        store.set_setting("active_version", row.version)
    return row.version


def plot_versions(rows: List[Version], path: str | Path) -> Path:
    """Validation Dice against version and against training scans (dataset growth), and how much each
    version's predictions had to be corrected (what a retrain saves the clinician)."""
    from ..experiments.figures import pyplot, save_png   # matplotlib only when a plot is asked for
    plt = pyplot()
    if not rows:
        raise ExtremeAugError("no model versions to plot yet")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    versions = [r.version for r in rows]
    for scores, style, label in ((lambda r: r.val_now, "o-", "current validation split"),
                                 (lambda r: r.val_then, "s--", "validation split when trained")):
        points = [(r.version, r.training_scans, scores(r).dice.value) for r in rows if scores(r).dice.value is not None]
        if points:
            axes[0].plot([p[0] for p in points], [p[2] for p in points], style, label=label)
            axes[1].plot([p[1] for p in points], [p[2] for p in points], style, label=label)
    axes[0].set(xlabel="model version", ylabel="validation Dice", xticks=versions, ylim=(0, 1))
    axes[1].set(xlabel="training scans", ylabel="validation Dice", xticks=sorted({r.training_scans for r in rows}),
                ylim=(0, 1))
    fixed = [r for r in rows if r.corrections.corrections]
    if fixed:
        axes[2].bar([r.version for r in fixed], [r.corrections.voxels_changed.value for r in fixed], color="#c0504d",
                    label="voxels changed (added + removed)")
        for r in fixed:
            axes[2].annotate(f"n={r.corrections.corrections}\nDice {r.corrections.dice.value:.2f}",
                             (r.version, r.corrections.voxels_changed.value), ha="center", va="bottom", fontsize=7)
    else:
        axes[2].text(0.5, 0.5, "no corrections accepted yet", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set(xlabel="model version that predicted", ylabel="mean voxels changed per correction", xticks=versions)
    axes[2].margins(y=0.2)   # room for the labels above the bars
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("model versions: validation Dice as the dataset grows, and the correction each needed")
    return save_png(fig, path, dpi=100)
