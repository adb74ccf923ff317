"""Cases and their labels: add a scan (known by its content), add or accept a human label, record what a
correction changed, keep every earlier label file, check the stored files.

Scans and labels come as file paths or as SimpleITK images (a 3D Slicer node's voxels, with no temporary
file). Everything is checked before anything is written.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..common.errors import ExtremeAugError
from ..common.portable import login_name
from ..common.structures import Structure, describe
from ..data.io import image_sha256, read_scan, read_structures, write_image
from ..data.labels import label_map, with_segment_fields
from .records import DEFAULT_STRUCTURE, Case, Correction, ImageInput, Label, LabelKind, Split
from .store import Store

LEFTOVER_AGE_S = 3600.0   # a temporary file this old belongs to a writer that died
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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


def free_id(store: Store, name: str) -> str:
    base, n = default_id(name), 1
    case_id = base
    while store.has_case(case_id):
        n += 1
        case_id = f"{base[:60]}_{n}"
    return case_id


def _describe(item: ImageInput, source: Optional[str]) -> str:
    if source:
        return source
    return str(Path(item).resolve()) if not isinstance(item, sitk.Image) else "an image in memory"


def add_case(store: Store, scan: ImageInput, label: Optional[ImageInput] = None, case_id: Optional[str] = None,
             split: Split = Split.AUTO, source: Optional[str] = None, new_case: bool = False,
             by: Optional[str] = None) -> Case:
    """Copy a scan (its own pixel type, NRRD) into the project, with its manual label when given.

    A scan already in the project (same voxels and grid) is not added twice: its case is returned (with
    `label` stored on it as a manual label), unless `new_case` or another `case_id` asks for a new case,
    which is refused with the existing case's id."""
    store.check_writable()
    split = Split.parse(split)
    if case_id is not None and not _ID.fullmatch(case_id):
        raise ExtremeAugError(f"case id {case_id!r}: use 1-64 letters, digits, '_', '-' or '.'")
    if split != Split.AUTO and label is None:
        raise ExtremeAugError("--split is given with a label: a case joins a split with its first human label")
    image = read_scan(scan, keep_type=True)   # its own pixel type, with every scan's checks
    digest = image_sha256(image)
    existing = store.case_with_scan(digest)
    if existing is not None:
        if new_case or (case_id is not None and case_id != existing):
            raise ExtremeAugError(f"this scan is already in the project as case {existing!r}; nothing added")
        case = accept(store, existing, label, split, LabelKind.MANUAL, source, by=by) if label is not None else \
            case_view(store, existing)
        return replace(case, existing=True)
    case_id = case_id or (default_id(str(scan)) if not isinstance(scan, sitk.Image) else "scan")
    _check_new_id(store, case_id)
    mask = _read_label(store, label, image) if label is not None else None
    folder = store.root / "cases" / case_id
    sweep_leftovers(folder)
    fresh = not folder.exists()
    written: List[Path] = []
    with removed_on_failure(written, folder if fresh else None):   # a full disk leaves no half case behind
        written.append(write_image(image, folder / f"scan-{secrets.token_hex(3)}.nrrd"))
        if mask is not None:
            written.append(write_image(mask.mask, _new_label_path(folder, LabelKind.MANUAL)))
    scan_file, label_file = written[0], (written[1] if mask is not None else None)
    with removed_on_failure(written, folder if fresh else None), store.write():
        _check_new_id(store, case_id)   # again under the write lock: two adds cannot both take an id
        other = store.case_with_scan(digest)
        if other is not None:
            raise ExtremeAugError(f"this scan was just added as case {other!r}; nothing added")
        store.insert_case(case_id, store.relative(scan_file), digest, _describe(scan, source))
        if label_file is not None:
            _insert_human_label(store, case_id, LabelKind.MANUAL, label_file, _describe(label, source), mask, split,
                                by)
    return case_view(store, case_id)


def accept(store: Store, case_id: str, label: ImageInput, split: Split = Split.AUTO,
           kind: Optional[LabelKind] = None, source: Optional[str] = None, corrects: Optional[int] = None,
           seconds: Optional[float] = None, by: Optional[str] = None) -> Case:
    """Store a human-checked label for a case; the previous labels stay on disk and in the history.

    `kind` None is the one policy for every front end: a label over a prediction is `corrected`, else
    `manual`. A corrected label records what changed against the prediction it replaces (`corrects`, the
    auto label's id; by default the case's newest) and `seconds` from that prediction being shown."""
    store.check_writable()
    case = store.case_row(case_id)
    split = Split.parse(split)
    if split != Split.AUTO and case["split"] not in (None, split.value):
        raise ExtremeAugError(f"case {case_id!r} is already in the {case['split']} split; the split is fixed "
                              "once a case is labeled (so validation scores stay comparable)")
    auto = store.label(corrects) if corrects is not None else store.latest_label(case_id, [LabelKind.AUTO])
    if auto is not None and (auto.case_id != case_id or auto.kind != LabelKind.AUTO):
        raise ExtremeAugError(f"label {auto.id} is not a prediction of case {case_id!r}")
    kind = LabelKind.parse(kind) if kind is not None else (LabelKind.CORRECTED if auto else LabelKind.MANUAL)
    if not kind.human:
        raise ExtremeAugError(f"label kind {kind.value!r}: choose manual or corrected")
    scan_path = store.path(case["scan"])
    if not scan_path.is_file():
        raise ExtremeAugError(f"case {case_id!r} has no scan ({case['scan']} is missing); nothing accepted")
    scan = read_scan(scan_path, keep_type=True)
    mask = _read_label(store, label, scan)
    correction = _correction(store, auto, mask.mask, seconds) if kind == LabelKind.CORRECTED and auto else None
    sweep_leftovers(store.root / "cases" / case_id)
    label_file = write_image(mask.mask, _new_label_path(store.root / "cases" / case_id, kind))
    with removed_on_failure([label_file]), store.write():
        label_id = _insert_human_label(store, case_id, kind, label_file, _describe(label, source), mask, split, by)
        if correction is not None:
            store.insert_correction(label_id, correction)
    return case_view(store, case_id)


def _correction(store: Store, auto: Label, mask: sitk.Image, seconds: Optional[float]) -> Correction:
    """What the person changed: voxels that became (or changed to) a structure, voxels taken out of every
    structure, and the Dice of the two label maps (a voxel agrees when both give it the same structure)."""
    seconds = None if seconds is None else round(float(seconds), 1)
    after = sitk.GetArrayFromImage(mask)
    try:
        before = sitk.GetArrayFromImage(sitk.ReadImage(str(store.path(auto.path))))
    except RuntimeError:
        before = None
    if before is None or before.shape != after.shape:
        # the prediction's file is gone, empty or damaged (`verify` names it): the person's label is stored
        # all the same, and what it changed is unknown rather than a guess
        return Correction(auto.id, auto.model_version, None, None, None, seconds)
    same, total = int(np.count_nonzero((before == after) & (after > 0))), int((before > 0).sum() + (after > 0).sum())
    return Correction(auto.id, auto.model_version, int(np.count_nonzero((after > 0) & (after != before))),
                      int(np.count_nonzero((before > 0) & (after == 0))), 2 * same / total if total else 1.0, seconds)


def _check_new_id(store: Store, case_id: str) -> None:
    if store.has_case(case_id):
        raise ExtremeAugError(f"case {case_id!r} is already in the project; pass --id to name this one")


def sweep_leftovers(folder: Path, older_than_s: float = LEFTOVER_AGE_S) -> None:
    """Remove the temporary files (dot files) that writers killed mid-write left in a folder. A live
    writer's temporary file is seconds old; only ones older than `older_than_s` go."""
    if not folder.is_dir():
        return
    cutoff = time.time() - older_than_s
    for path in folder.glob(".*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass   # another process took it, or it is in use (Windows): the next writer tries again


@contextmanager
def removed_on_failure(paths: Sequence[Optional[Path]], folder: Optional[Path] = None):
    """Files written for a database change that did not commit are removed again, and the case folder
    this attempt created with the folders in it, once empty (another attempt's files in them stay)."""
    try:
        yield
    except BaseException:
        for p in paths:
            if p is not None:
                p.unlink(missing_ok=True)
        if folder is not None:
            for empty in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)) + [folder]:
                try:
                    empty.rmdir()
                except OSError:
                    pass   # not empty: another attempt's files, or a temporary file of a live writer
        raise


@dataclass(frozen=True)
class HumanLabel:
    """A human label as it is stored: a label map with the project's values on the scan's exact grid, the
    structures it holds (the label table) and the ones it left out."""
    mask: sitk.Image
    structures: List[Structure]
    missing: List[str]


def _read_label(store: Store, label: ImageInput, scan: sitk.Image) -> HumanLabel:
    """Match a label to the project's label table (segments by name, label values by value): a structure it
    lacks is recorded as missing, one the table does not list is refused. Before the table is fixed (by
    `init --labels` or the first human label), the label's own structures will fix it."""
    settings = store.settings()
    images, structures = read_structures(label, sitk.Cast(scan, sitk.sitkFloat32), settings.structures,
                                         settings.label_values, settings.merge_labels)
    arrays = [sitk.GetArrayFromImage(i) > 0 for i in images]
    mask = sitk.GetImageFromArray(label_map(arrays, structures))
    mask.CopyInformation(scan)
    return HumanLabel(mask, structures, [s.name for s, a in zip(structures, arrays) if not a.any()])


def segmentation_image(masks: Sequence[sitk.Image], structures: Sequence[Structure]) -> sitk.Image:
    """Binary masks on one grid (a front end's segments) as one labeled image carrying each structure's name,
    colour and terminology, as `add` and `accept` take it: matched to the project's table by name."""
    arrays = [sitk.GetArrayFromImage(m) > 0 for m in masks]
    image = sitk.GetImageFromArray(label_map(arrays, structures))
    image.CopyInformation(masks[0])
    return with_segment_fields(image, structures)


def _fix_table(store: Store, label: HumanLabel) -> None:
    """Inside the write: the first human label fixes the table (unless another writer fixed it first)."""
    current = store.settings().structures
    if current is None:
        store.set_setting("labels", [s.to_dict() for s in label.structures])
    elif current != label.structures:
        raise ExtremeAugError("another label fixed the project's structures meanwhile "
                              f"({describe(current)}); add this label again")


def _new_label_path(folder: Path, kind: LabelKind) -> Path:
    """A file name no earlier label has used (numbered, plus a random tag so that two concurrent writers
    cannot pick the same one): labels are added, never overwritten."""
    labels = folder / "labels"
    n = 1 + max([int(p.name.split("-")[0]) for p in labels.glob("*-*.nrrd") if p.name.split("-")[0].isdigit()]
                + [0])
    return labels / f"{n:04d}-{kind.value}-{secrets.token_hex(3)}.nrrd"


def _insert_human_label(store: Store, case_id: str, kind: LabelKind, path: Path, source: Optional[str],
                        label: HumanLabel, split: Split, by: Optional[str]) -> int:
    _fix_table(store, label)
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(label.mask)))
    label_id = store.insert_label(case_id, kind, store.relative(path), sha256(path), voxels, source,
                                  missing=label.missing, accepted_by=by or login_name())
    store.assign_split(case_id, split)
    return label_id


def export_label(store: Store, case_id: str, out: Path) -> Path:
    """The case's current label (its newest human label, else its newest prediction) as a file: a label map
    (NIfTI, NRRD, ...) or, for a name ending in .seg.nrrd, a Slicer segmentation named by the structures."""
    case = case_view(store, case_id)
    if case.label is None:
        raise ExtremeAugError(f"case {case_id!r} has no label yet: label it, or segment it with a model")
    image = sitk.ReadImage(str(store.path(case.label)))
    if str(out).lower().endswith(".seg.nrrd"):
        image = with_segment_fields(image, store.settings().structures or [DEFAULT_STRUCTURE])
    return write_image(image, out)


def case_view(store: Store, case_id: str) -> Case:
    row = store.case_row(case_id)
    labels = store.labels_of(case_id)
    human = [lab for lab in labels if lab.kind.human]
    auto = [lab for lab in labels if lab.kind == LabelKind.AUTO]
    current = human[-1] if human else (labels[-1] if labels else None)
    return Case(case_id, store.state(case_id), Split(row["split"]) if row["split"] else None, row["scan"],
                len(labels), auto[-1].model_version if auto else None, auto[-1].uncertainty if auto else None,
                row["scan_sha256"], row["source"], current.path if current else None, labels)


def find_scan(store: Store, scan: ImageInput) -> Optional[str]:
    """The case holding this scan (same voxels and grid), or None."""
    return store.case_with_scan(image_sha256(read_scan(scan, keep_type=True)))


def verify(store: Store) -> List[str]:
    """Every stored file against the database: missing scans and labels, a scan whose voxels or grid
    changed (content hash), a label file whose bytes changed (file hash)."""
    problems = []
    for case in store.scans():
        path = store.path(case["scan"])
        if not path.is_file():
            problems.append(f"case {case['id']}: scan {case['scan']} is missing")
            continue
        try:
            digest = image_sha256(read_scan(path, keep_type=True))
        except ExtremeAugError as e:
            problems.append(f"case {case['id']}: scan {case['scan']} is unreadable ({e})")
            continue
        if case["scan_sha256"] is None:
            problems.append(f"case {case['id']}: scan {case['scan']} has no recorded checksum")
        elif digest != case["scan_sha256"]:
            problems.append(f"case {case['id']}: scan {case['scan']} changed on disk (its voxels or grid differ "
                            "from those added)")
    for lab in store.all_labels():
        p = store.path(lab.path)
        if not p.is_file():
            problems.append(f"case {lab.case_id}: {lab.kind.value} label {lab.path} is missing")
        elif sha256(p) != lab.sha256:
            problems.append(f"case {lab.case_id}: {lab.kind.value} label {lab.path} changed on disk (checksum)")
        else:   # a checksum proves the bytes did not change, not that they are a label: read it back
            try:
                voxels = int(np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))))
            except RuntimeError:
                problems.append(f"case {lab.case_id}: {lab.kind.value} label {lab.path} is not a readable image "
                                f"({p.stat().st_size} bytes)")
                continue
            if voxels != lab.voxels:
                problems.append(f"case {lab.case_id}: {lab.kind.value} label {lab.path} holds {voxels} labeled "
                                f"voxels, {lab.voxels} were stored")
    return problems
