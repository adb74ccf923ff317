"""The labeling project's one public API: what the command line, the training worker and the 3D Slicer
module call, and nothing else under `extremeaug.project`.

It takes typed requests (a `RunSpec`, enums, file paths or SimpleITK images) and returns typed records
(`records.py`); SQL stays in the store, and front ends never see a row or a JSON key. The modules that
need numpy, SimpleITK or onnxruntime (cases, versions, suggest) are imported by the methods that use
them, so `status` and `run` (what a command line or a GUI timer polls) start in milliseconds.
"""
from __future__ import annotations

import os
import secrets
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..common.config import Device, Plane
from ..common.errors import ExtremeAugError, ProjectBusy
from ..common.events import EventReader, append_event
from ..common.structures import DEFAULT_NAME, check_table, describe
from . import runs
from .jobs import SegmentJob
from .records import (Case, CaseInfo, ImageInput, Label, LabelKind, Phase, ProjectStatus, RunSpec, RunState, RunStatus,
                      SegmentResult, Split, Structure, Suggestion, Version)
from .store import Store


class Project:
    """An open project folder. Use as a context manager, or call `close()`."""
    UNLABELED_PER_RUN = 20   # unlabeled cases a run pseudo-labels: every round segments them all, within its budget

    def __init__(self, store: Store):
        self._store = store

    @classmethod
    def create(cls, folder: str | os.PathLike, plane: Plane = Plane.AUTO, val_fraction: float = 0.25,
               label_values: Optional[Sequence[int]] = None, structures: Optional[Sequence[Structure]] = None,
               merge_labels: bool = False) -> "Project":
        """A new project in a new or empty folder.

        Args:
            plane: the slicing plane every model of the project uses.
            val_fraction: the share of labeled cases kept for validation (the fixed split).
            label_values: mask label values to learn (default: every value > 0).
            structures: the label table (names, colours, values); default: the first human label's structures.
            merge_labels: learn every mask's structures as one (their union).
        """
        if not 0 <= val_fraction < 1:
            raise ExtremeAugError("--val-fraction must be in [0, 1)")
        if structures is not None:
            check_table(structures)
            if merge_labels and len(structures) > 1:
                raise ExtremeAugError("--merge-labels learns one structure; --labels names "
                                      f"{len(structures)}")
        return cls(Store.create(folder, plane=Plane.parse(plane).value, val_fraction=val_fraction,
                                label_values=list(label_values) if label_values else None,
                                labels=[s.to_dict() for s in structures] if structures else None,
                                merge_labels=bool(merge_labels)))

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "Project":
        """An existing project; a project of an older format is migrated in place."""
        return cls(Store.open(folder))

    def close(self) -> None:
        self._store.close()

    def busy_timeout(self, seconds: float) -> None:
        """How long a call waits for another process's write lock before raising ProjectBusy (default 10 s;
        a GUI sets less, so a busy database skips a timer tick instead of freezing the application)."""
        self._store.conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def root(self) -> Path:
        return self._store.root

    def path(self, relative: str) -> Path:
        """The file a record's relative path names."""
        return self._store.path(relative)

    # -- cases -----------------------------------------------------------------------------------
    def add(self, scan: ImageInput, label: Optional[ImageInput] = None, case_id: Optional[str] = None,
            split: Split = Split.AUTO, source: Optional[str] = None, new_case: bool = False,
            by: Optional[str] = None) -> Case:
        """Register a scan (a file or an image), with its manual label when given.

        Args:
            case_id: default: the file name.
            split: with a label: the split it joins (auto: the project's policy).
            source: where the data came from, when it is not a file (e.g. a 3D Slicer node).
            new_case: refuse (naming the existing case) rather than return a scan the project holds.
            by: who stores the label (a web user); default: the login name.
        Returns the case; `existing` is True when the scan was in the project already.
        """
        from . import cases
        return cases.add_case(self._store, scan, label, case_id, split, source, new_case, by)

    def accept(self, case_id: str, label: ImageInput, split: Split = Split.AUTO, kind: Optional[LabelKind] = None,
               source: Optional[str] = None, corrects: Optional[int] = None,
               seconds: Optional[float] = None, by: Optional[str] = None) -> Case:
        """Store a human label for a case; earlier labels stay in its history.

        Args:
            kind: None: `corrected` over a prediction, else `manual`; or say which.
            corrects: the prediction's label id that was corrected (default: the case's newest).
            seconds: from that prediction being shown to this accept, when the front end knows.
            by: who accepts it (a web user); default: the login name.
        """
        from . import cases
        return cases.accept(self._store, case_id, label, split, kind, source, corrects, seconds, by)

    def structures(self) -> Optional[List[Structure]]:
        """The label table: each structure's name, colour, terminology and label value (None until `init
        --labels` or the first human label fixed it)."""
        return self._store.settings().structures

    @staticmethod
    def segmentation_image(masks: Sequence[ImageInput], structures: Sequence[Structure]) -> ImageInput:
        """A front end's binary masks (one per structure, one grid) as one image that `add` and `accept` match to
        the project's structures by name."""
        from .cases import segmentation_image
        return segmentation_image(masks, structures)

    def structure(self) -> Optional[Structure]:
        """A one-structure project's structure (None before it is fixed, and with several)."""
        return self._store.settings().structure

    def name_structure(self, structure: Structure, rename: bool = False) -> Structure:
        """Name a one-structure project's structure (a segment's name, colour, terminology). The first name
        stays (a later label with another segment name is the same structure drawn by someone else) unless
        `rename`; returns the project's structure. A project of several structures is named by its table."""
        with self._store.write():
            table = self._store.settings().structures
            if table is not None and len(table) > 1:
                raise ExtremeAugError(f"the project has {len(table)} structures ({describe(table)}); their names "
                                      "are fixed")
            if table is None or rename or table[0].name == DEFAULT_NAME:
                table = [replace(structure, value=table[0].value if table else 1)]
                self._store.set_setting("labels", [s.to_dict() for s in table])
        return table[0]

    def cases(self) -> List[CaseInfo]:
        return self._store.case_infos()

    def case(self, case_id: str) -> Case:
        """A case with its whole label history (and what each correction changed)."""
        from . import cases
        return cases.case_view(self._store, case_id)

    def find_scan(self, scan: ImageInput) -> Optional[str]:
        """The id of the case holding this scan (same voxels and grid, whatever its name), or None."""
        from . import cases
        return cases.find_scan(self._store, scan)

    def case_with_scan(self, scan_sha256: str) -> Optional[str]:
        """`find_scan` for a front end that keeps the scan's `extremeaug.data.io.image_sha256` already."""
        return self._store.case_with_scan(scan_sha256)

    def new_case_id(self, name: str) -> str:
        """A valid case id from a name (a node's, a file's) that no case has yet: name, name_2, ..."""
        from . import cases
        return cases.free_id(self._store, name)

    def export_label(self, case_id: str, out: str | os.PathLike) -> Path:
        """Write the case's current label to `out`: a label map, or a Slicer segmentation for `.seg.nrrd`."""
        from . import cases
        return cases.export_label(self._store, case_id, Path(out))

    def latest_prediction(self, case_id: str) -> Optional[Label]:
        self._store.case_row(case_id)
        return self._store.latest_label(case_id, [LabelKind.AUTO])

    def unlabeled(self) -> List[str]:
        """Cases without a human label, in the order they were added."""
        return self._store.unlabeled_ids()

    def verify(self) -> List[str]:
        """Every problem with the project (none: the database passes SQLite's integrity check, every scan and
        label matches its checksum, every model is present, unchanged and readable)."""
        from . import cases, versions
        return self._store.integrity_problems() + cases.verify(self._store) + versions.verify_models(self._store)

    # -- training --------------------------------------------------------------------------------
    def train(self, spec: RunSpec) -> str:
        """Start a background training run on the training split's human labels (and, with `spec.unlabeled`, the
        unlabeled cases' pseudo-labels); returns its id."""
        if spec.unlabeled and not self._store.unlabeled_ids():
            raise ExtremeAugError("no unlabeled case to learn from: add scans without a label first, or train "
                                  "without the unlabeled cases")
        project_plane = Plane.parse(self._store.setting("plane"))
        return runs.start(self._store, replace(spec, train=replace(spec.train, plane=project_plane)))

    def resume(self, device: Optional[Device] = None, time_budget_min: Optional[float] = None,
               batch_size: Optional[int] = None) -> str:
        """Continue the last cancelled, failed or dead run from its checkpoint (a new device, budget or batch size
        may be given; everything else is the run's own)."""
        return runs.start(self._store, None, resume=True, device=None if device is None else Device.parse(device).value,
                          time_budget_min=time_budget_min, batch_size=batch_size)

    def cancel(self, wait_s: float = 120.0) -> RunState:
        """Ask the running worker to stop (it checkpoints); waits up to `wait_s` for it."""
        return runs.cancel(self._store, wait_s)

    def run(self, run_id: Optional[str] = None) -> Optional[RunState]:
        """A run's state (default: the newest run; None before the first); dead workers are noticed.
        Raises ProjectBusy when another process holds the database longer than `busy_timeout`."""
        try:
            if run_id is None:
                return runs.latest_run_state(self._store)
            runs.reap(self._store)
            return runs.run_state(self._store, self._store.run(run_id))
        except sqlite3.OperationalError as e:   # a reader blocked by a writer (rollback-journal mode)
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            raise ProjectBusy(f"{self.root} is busy ({e}); try again") from None

    def events(self, run_id: str) -> EventReader:
        """A reader of the run's progress events, from the start of its file."""
        return EventReader(runs.run_dir(self._store, run_id) / "progress.jsonl")

    def run_folder(self, run_id: str) -> Path:
        return runs.run_dir(self._store, run_id)

    # -- models ----------------------------------------------------------------------------------
    def segment(self, case_ids: Sequence[str], version: Optional[int] = None, device: Device = Device.AUTO,
                progress: Optional[Callable[[SegmentResult], None]] = None) -> List[SegmentResult]:
        """Predict cases with a model version (default: the active one); each prediction is stored as an
        auto label with its probability map and uncertainty, and never replaces a human label."""
        from . import suggest
        return suggest.segment_cases(self._store, list(dict.fromkeys(case_ids)), version, Device.parse(device).value,
                                     progress)

    def start_segment(self, case_ids: Sequence[str], version: Optional[int] = None, device: Device = Device.AUTO,
                      add: Optional[ImageInput] = None, add_id: Optional[str] = None,
                      source: Optional[str] = None) -> SegmentJob:
        """`segment` in a child process, for a GUI: returns at once; the job's `poll()` reports progress and
        the results stored so far, `cancel()` stops it. Unknown cases and versions fail here, at once.

        Args:
            add: a scan to add as case `add_id` and segment, in the child too: hashing, checking and storing
                a large scan takes seconds a GUI must not freeze for. An image is handed over as an
                uncompressed file (fast to write), removed when the job ends.
            source: where `add` came from (e.g. a 3D Slicer node), for the case's record.
        """
        from . import cases, versions
        ids = list(dict.fromkeys(case_ids))
        for case_id in ids:
            self._store.case_row(case_id)
        model = versions.resolve(self._store, version)
        handover, jobs = None, self._store.root / "jobs"
        cases.sweep_leftovers(jobs)   # scans handed to jobs of a GUI that died
        if add is not None and not isinstance(add, (str, os.PathLike)):
            from ..data.io import write_image
            handover = write_image(add, jobs / f".scan-{secrets.token_hex(4)}.nrrd", compress=False)
        return SegmentJob(self._store.root, ids, model.version, Device.parse(device).value,
                          handover or add, add_id, source, handover)

    def suggest(self) -> Suggestion:
        from . import suggest
        return suggest.suggest(self._store)

    def versions(self, rescore: bool = True, device: Device = Device.AUTO) -> List[Version]:
        """Every model version with validation scores then and now and its correction summary. `rescore`
        scores old versions on new validation labels (runs onnxruntime: a GUI thread passes False)."""
        from . import versions
        return versions.list_versions(self._store, rescore, Device.parse(device).value)

    def use(self, version: int) -> int:
        """Make a version the active one (roll back or forward)."""
        from . import versions
        return versions.use(self._store, version)

    @staticmethod
    def plot(rows: List[Version], path: str | os.PathLike) -> Path:
        from . import versions
        return versions.plot_versions(rows, path)

    def status(self) -> ProjectStatus:
        """Cases by state and split, versions, settings and the current run: database and small files only,
        so it stays fast on large projects."""
        store = self._store
        counts, settings = store.state_counts(), store.settings()
        return ProjectStatus(str(store.root), sum(counts.values()), counts, store.split_counts(),
                             store.version_count(), settings.active_version, settings, runs.latest_run_state(store))

    # -- the training worker's side ------------------------------------------------------------------
    def claim(self, run_id: str, pid: int) -> bool:
        """The worker takes its run (False: the run does not wait for a worker any more)."""
        with self._store.write():
            return self._store.claim_run(run_id, pid)

    def job(self, run_id: str):
        """(spec, [(case id, scan path, label path)], [(case id, scan path)]) of a run: what the worker trains on,
        and the unlabeled cases it pseudo-labels when the spec asks for them (at most UNLABELED_PER_RUN, spread
        over the order they were added; a resumed run keeps the ones its checkpoint names)."""
        run = self._store.run(run_id)
        spec, inputs = RunSpec.from_dict(run.spec), []
        for label_id in run.train_labels:
            label = self._store.label(label_id)
            scan = self._store.case_row(label.case_id)["scan"]
            inputs.append((label.case_id, self.path(scan), self.path(label.path)))
        ids = self._store.unlabeled_ids() if spec.unlabeled else []
        cap = self.UNLABELED_PER_RUN
        ids = [ids[i * len(ids) // cap] for i in range(cap)] if len(ids) > cap else ids
        return spec, inputs, [(case_id, self.path(self._store.case_row(case_id)["scan"])) for case_id in ids]

    def set_phase(self, run_id: str, phase: Phase) -> None:
        append_event(runs.run_dir(self._store, run_id) / "progress.jsonl", "phase", phase=Phase(phase).value)

    def publish(self, run_id: str, train_dir: Path, device: Device) -> int:
        """Score the finished run's model and register it as the next version (atomically); it becomes active."""
        from . import versions
        return versions.publish(self._store, run_id, Path(train_dir), Device.parse(device).value)

    def end_run(self, run_id: str, status: RunStatus, message: Optional[str] = None) -> None:
        with self._store.write():
            self._store.end_run(run_id, status, message)
