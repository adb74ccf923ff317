"""Model versions: atomic publish, validation scores that stay comparable, the active model, the plot.

Each version is scored on the validation labels that existed when it was trained (`val_then`) and on
the project's current validation labels (`val_now`); a score is kept per (version, label file), so a
version is scored once per label and old versions are rescored when validation cases are added or
corrected.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ExtremeAugError
from ..evaluate import evaluate
from ..infer import Segmenter
from ..io import read_binary, read_scan, write_bytes
from .store import Store
from .suggest import resolve_version

MODEL_FILES = ("model.onnx", "model.pt", "history.json")
METRICS = ("dice", "hd95_mm", "assd_mm")


def score_model(store: Store, onnx: Path, labels, device: str = "auto") -> Dict[int, dict]:
    """Segment each labeled case with the model and evaluate against its label file."""
    if not labels:
        return {}
    segmenter = Segmenter(onnx, device)
    scores = {}
    for label in labels:
        scan = read_scan(store.path(store.case(label["case_id"])["scan"]))
        pred, _ = segmenter.segment(scan)
        scores[label["id"]] = evaluate(pred, read_binary(store.path(label["path"])))
    return scores


def publish(store: Store, run_id: str, train_dir: Path, device: str = "auto") -> int:
    """Copy the finished run's model into models/v<N> and register it in one transaction: a version
    exists only once its files are complete (a crash leaves an unregistered folder, set aside later)."""
    models = store.root / "models"
    stage = models / f".staging-{run_id}"
    shutil.rmtree(stage, ignore_errors=True)
    for name in MODEL_FILES:
        write_bytes((train_dir / name).read_bytes(), stage / name)
    val_labels = store.human_labels("validation")
    scores = score_model(store, stage / "model.onnx", val_labels, device)
    history = json.loads((stage / "history.json").read_text())
    meta, last = history["metadata"], (history["history"] or [{}])[-1]
    summary = {"status": meta["status"], "epochs_done": meta["epochs_done"], "augment": meta["augment"],
               "train_dice": last.get("train_dice"), "loss": last.get("loss"), "seconds": meta["training_seconds"],
               "device": meta["device"], "width": meta["width"], "training_cases": meta["training_cases"]}
    run = store.conn.execute("SELECT train_labels FROM runs WHERE id = ?", (run_id,)).fetchone()
    with store.write() as conn:
        version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions").fetchone()[0]
        final = models / f"v{version}"
        if final.exists():   # left by a crash after the rename, before the commit
            os.replace(final, models / f".unregistered-v{version}-{secrets.token_hex(3)}")
        os.replace(stage, final)
        conn.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (version, run_id, time.time(), store.relative(final / "model.onnx"), run["train_labels"],
                      json.dumps([lab["id"] for lab in val_labels]), json.dumps(summary)))
        _insert_scores(conn, version, val_labels, scores)
        conn.execute("UPDATE runs SET status = 'finished', ended = ?, version = ?, message = NULL WHERE id = ?",
                     (time.time(), version, run_id))
        store.set_setting(conn, "active_version", version)
    return version


def _insert_scores(conn, version: int, labels, scores: Dict[int, dict]) -> None:
    by_id = {lab["id"]: lab for lab in labels}
    conn.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                     [(version, lid, by_id[lid]["case_id"], json.dumps(m), time.time()) for lid, m in scores.items()])


def _mean(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def list_versions(store: Store, rescore: bool = True, device: str = "auto") -> List[dict]:
    """Every version with its validation scores then and now (missing current scores computed when
    `rescore`, which runs onnxruntime; front ends that must not block pass rescore=False)."""
    current = store.human_labels("validation")
    out = []
    for v in store.conn.execute("SELECT * FROM versions ORDER BY version").fetchall():
        have = {r["label_id"]: json.loads(r["metrics"]) for r in
                store.conn.execute("SELECT label_id, metrics FROM scores WHERE version = ?", (v["version"],))}
        missing = [lab for lab in current if lab["id"] not in have]
        if missing and rescore:
            new = score_model(store, store.path(v["path"]), missing, device)
            with store.write() as conn:
                _insert_scores(conn, v["version"], missing, new)
            have.update(new)
        then_ids, summary = json.loads(v["val_labels"]), json.loads(v["summary"])
        row = {"version": v["version"], "run": v["run_id"], "created": v["created"], "path": v["path"],
               "training_scans": len(json.loads(v["train_labels"])), "active": v["version"] == store.setting(
                   "active_version"), "val_then_cases": len(then_ids), "val_now_cases": len(current), **summary}
        for name in METRICS:
            row[f"val_then_{name}"] = _mean([have[i][name] for i in then_ids if i in have])
            now = [have[lab["id"]][name] if lab["id"] in have else None for lab in current]
            row[f"val_now_{name}"] = _mean(now) if None not in now else None
        row["val_now_per_case"] = {lab["case_id"]: have[lab["id"]]["dice"] for lab in current if lab["id"] in have}
        out.append(row)
    return out


def use(store: Store, version: int) -> int:
    row = resolve_version(store, version)
    if not store.path(row["path"]).is_file():
        raise ExtremeAugError(f"model version {version}: {row['path']} is missing")
    with store.write() as conn:
        store.set_setting(conn, "active_version", row["version"])
    return row["version"]


def plot_versions(rows: List[dict], path: str | Path) -> Path:
    """Validation Dice against version and against the number of training scans (dataset growth)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ExtremeAugError("no model versions to plot yet")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    versions = [r["version"] for r in rows]
    for key, style, label in (("val_now_dice", "o-", "current validation split"),
                              ("val_then_dice", "s--", "validation split when trained")):
        points = [(r["version"], r["training_scans"], r[key]) for r in rows if r[key] is not None]
        if points:
            axes[0].plot([p[0] for p in points], [p[2] for p in points], style, label=label)
            axes[1].plot([p[1] for p in points], [p[2] for p in points], style, label=label)
    axes[0].set(xlabel="model version", ylabel="validation Dice", xticks=versions)
    axes[1].set(xlabel="training scans", ylabel="validation Dice",
                xticks=sorted({r["training_scans"] for r in rows}))
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("model versions: validation Dice as the dataset grows")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
