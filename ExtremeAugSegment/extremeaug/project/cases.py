"""Cases and their labels: add a scan, add or accept a human label, keep every earlier label file.

Split policy (fixed validation split): a case gets its split once, when it receives its first human
label, and keeps it. The first labeled case always trains. After that a case goes to validation when
that keeps the validation share at or under the project's `val_fraction` (default 0.25: the 4th, 8th,
12th ... labeled cases validate); `--split train|validation` overrides the policy for that case.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import ExtremeAugError
from ..io import read_mask, read_scan, write_image
from .store import HUMAN_KINDS, Store

SPLITS = ("auto", "train", "validation")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_id(source: str) -> str:
    name = Path(source.rstrip("/\\")).name
    for ext in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "case"


def add_case(store: Store, scan_path: str, label_path: Optional[str] = None, case_id: Optional[str] = None,
             split: str = "auto", source: Optional[str] = None) -> dict:
    """Copy a scan (its own pixel type, NRRD) into the project, with its manual label when given.

    Everything is checked before anything is written. `source` says where the data came from when the
    files are temporary (a 3D Slicer node); by default it is the files' own paths."""
    case_id = case_id or default_id(scan_path)
    if not _ID.match(case_id):
        raise ExtremeAugError(f"case id {case_id!r}: use 1-64 letters, digits, '_', '-' or '.'")
    if store.conn.execute("SELECT 1 FROM cases WHERE id = ?", (case_id,)).fetchone():
        raise ExtremeAugError(f"case {case_id!r} is already in the project; pass --id to name this one")
    _check_split(split)
    if split != "auto" and not label_path:
        raise ExtremeAugError("--split is given with a label: a case joins a split with its first human label")
    scan = read_scan(scan_path, keep_type=True)
    mask = _read_label(store, label_path, scan) if label_path else None
    folder = store.root / "cases" / case_id
    scan_file = write_image(scan, folder / "scan.nrrd")
    label_file = write_image(mask, _new_label_path(folder, "manual")) if mask is not None else None
    with _removed_on_failure(scan_file, label_file), store.write() as conn:
        conn.execute("INSERT INTO cases (id, scan, source, added) VALUES (?, ?, ?, ?)",
                     (case_id, store.relative(scan_file), source or str(Path(scan_path).resolve()), time.time()))
        if label_file is not None:
            _insert_human_label(store, conn, case_id, "manual", label_file, source or label_path, mask, split)
    return case_summary(store, case_id)


def accept(store: Store, case_id: str, label_path: str, split: str = "auto", kind: str = "corrected",
           source: Optional[str] = None) -> dict:
    """Store a human-checked label for a case; the previous labels stay on disk and in the history."""
    case = store.case(case_id)
    _check_split(split)
    if split != "auto" and case["split"] not in (None, split):
        raise ExtremeAugError(f"case {case_id!r} is already in the {case['split']} split; the split is fixed "
                              "once a case is labeled (so validation scores stay comparable)")
    if kind not in HUMAN_KINDS:
        raise ExtremeAugError(f"label kind {kind!r}: choose manual or corrected")
    scan_path = store.path(case["scan"])
    if not scan_path.is_file():
        raise ExtremeAugError(f"case {case_id!r} has no scan ({case['scan']} is missing); nothing accepted")
    scan = read_scan(scan_path, keep_type=True)
    mask = _read_label(store, label_path, scan)
    label_file = write_image(mask, _new_label_path(store.root / "cases" / case_id, kind))
    with _removed_on_failure(label_file), store.write() as conn:
        _insert_human_label(store, conn, case_id, kind, label_file, source or label_path, mask, split)
    return case_summary(store, case_id)


@contextmanager
def _removed_on_failure(*paths: Optional[Path]):
    """Files written for a database change that did not commit are removed again."""
    try:
        yield
    except BaseException:
        for p in paths:
            if p is not None:
                p.unlink(missing_ok=True)
        raise


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ExtremeAugError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")


def _read_label(store: Store, label_path: str, scan: sitk.Image) -> sitk.Image:
    """The label as binary uint8 on the scan's exact grid (project label values applied)."""
    reference = sitk.Cast(scan, sitk.sitkFloat32)
    mask = read_mask(label_path, reference, store.setting("label_values"))
    mask.CopyInformation(scan)
    return mask


def _new_label_path(folder: Path, kind: str) -> Path:
    """A file name no earlier label has used (numbered, plus a random tag so that two concurrent writers
    cannot pick the same one): labels are added, never overwritten."""
    labels = folder / "labels"
    n = 1 + max([int(p.name.split("-")[0]) for p in labels.glob("*-*.nrrd") if p.name.split("-")[0].isdigit()]
                + [0])
    return labels / f"{n:04d}-{kind}-{secrets.token_hex(3)}.nrrd"


def _insert_human_label(store: Store, conn, case_id: str, kind: str, path: Path, source: Optional[str],
                        mask: sitk.Image, split: str) -> None:
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    conn.execute("INSERT INTO labels (case_id, kind, path, sha256, voxels, created, source) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (case_id, kind, store.relative(path), sha256(path), voxels, time.time(),
                  _source(source)))
    row = conn.execute("SELECT split FROM cases WHERE id = ?", (case_id,)).fetchone()
    if row["split"] is None:
        order = conn.execute("SELECT COALESCE(MAX(labeled_order), 0) + 1 FROM cases").fetchone()[0]
        conn.execute("UPDATE cases SET split = ?, labeled_order = ? WHERE id = ?",
                     (split if split != "auto" else _policy_split(store, conn, order), order, case_id))


def _source(source: Optional[str]) -> Optional[str]:
    """A file's absolute path; a description that names no existing file is kept as it is."""
    if source and Path(source).exists():
        return str(Path(source).resolve())
    return source


def _policy_split(store: Store, conn, order: int) -> str:
    if order == 1:
        return "train"
    fraction = float(store.setting("val_fraction"))
    n_val = conn.execute("SELECT COUNT(*) FROM cases WHERE split = 'validation'").fetchone()[0]
    return "validation" if n_val + 1 <= fraction * order + 1e-9 else "train"


def case_summary(store: Store, case_id: str) -> dict:
    row = store.case(case_id)
    labels = store.conn.execute("SELECT * FROM labels WHERE case_id = ? ORDER BY id", (case_id,)).fetchall()
    auto = [lab for lab in labels if lab["kind"] == "auto"]
    return {"id": case_id, "state": store.state(case_id), "split": row["split"], "scan": row["scan"],
            "label": _current_label(labels),
            "uncertainty": auto[-1]["uncertainty"] if auto else None,
            "auto_version": auto[-1]["model_version"] if auto else None,
            "history": [{"id": lab["id"], "kind": lab["kind"], "path": lab["path"], "sha256": lab["sha256"],
                         "voxels": lab["voxels"], "created": lab["created"], "model_version": lab["model_version"]}
                        for lab in labels]}


def _current_label(labels) -> Optional[str]:
    human = [lab for lab in labels if lab["kind"] in HUMAN_KINDS]
    chosen = human[-1] if human else (labels[-1] if labels else None)
    return chosen["path"] if chosen is not None else None


def list_cases(store: Store) -> List[dict]:
    """One row per case (a single query, so it stays fast on large projects)."""
    rows = store.conn.execute(
        "SELECT c.id, c.split, c.scan, "
        " (SELECT kind FROM labels WHERE case_id = c.id AND kind IN ('manual', 'corrected') "
        "  ORDER BY id DESC LIMIT 1) AS human, "
        " (SELECT id FROM labels WHERE case_id = c.id AND kind = 'auto' ORDER BY id DESC LIMIT 1) AS auto_id, "
        " (SELECT COUNT(*) FROM labels WHERE case_id = c.id) AS n_labels "
        "FROM cases c ORDER BY c.added").fetchall()
    out = []
    for r in rows:
        auto = store.label(r["auto_id"]) if r["auto_id"] is not None else None
        out.append({"id": r["id"], "state": r["human"] or ("auto" if auto is not None else "unlabeled"),
                    "split": r["split"], "labels": r["n_labels"],
                    "auto_version": auto["model_version"] if auto is not None else None,
                    "uncertainty": auto["uncertainty"] if auto is not None else None})
    return out


def verify(store: Store) -> List[str]:
    """Problems with the stored files: missing scans or labels, label files whose checksum changed."""
    problems = []
    for case in store.conn.execute("SELECT id, scan FROM cases"):
        if not store.path(case["scan"]).is_file():
            problems.append(f"case {case['id']}: scan {case['scan']} is missing")
    for lab in store.conn.execute("SELECT * FROM labels ORDER BY id"):
        p = store.path(lab["path"])
        if not p.is_file():
            problems.append(f"case {lab['case_id']}: {lab['kind']} label {lab['path']} is missing")
        elif sha256(p) != lab["sha256"]:
            problems.append(f"case {lab['case_id']}: {lab['kind']} label {lab['path']} changed on disk (checksum)")
    return problems
