"""The project registry: one SQLite file (WAL, transactions) beside the files it lists. All of the
project's SQL is here; the layers above see typed records.

Every path in the database is relative to the project folder, so a project can be moved or copied.
Files are written first (atomically: temporary file, fsync, rename) and the database commit that
references them comes last; a crash in between leaves an unreferenced file, never a half label.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..common.errors import ExtremeAugError, ProjectBusy
from ..common.files import database_error_text
from . import schema
from .database import DB_FILE, create_database, open_database, read_only_view, set_journal
from .records import CaseInfo, CaseState, Correction, Label, LabelKind, RunStatus, Settings, Split, Structure

DEFAULT_SETTINGS = {"plane": "auto", "val_fraction": 0.25, "label_values": None, "active_version": None,
                    "labels": None, "merge_labels": False}
HUMAN = (LabelKind.MANUAL.value, LabelKind.CORRECTED.value)

# a case's state, defined once: the newest human label wins over any prediction
STATE_SQL = """COALESCE(
    (SELECT kind FROM labels WHERE case_id = c.id AND kind IN ('manual', 'corrected') ORDER BY id DESC LIMIT 1),
    CASE WHEN EXISTS (SELECT 1 FROM labels WHERE case_id = c.id AND kind = 'auto') THEN 'auto' ELSE 'unlabeled' END)"""


@dataclass(frozen=True)
class RunRow:
    id: str
    status: RunStatus
    pid: Optional[int]
    created: float
    spec: dict
    train_labels: List[int]
    message: Optional[str]
    version: Optional[int]


@dataclass(frozen=True)
class VersionRow:
    version: int
    run_id: str
    created: float
    path: str
    train_labels: List[int]
    val_labels: List[int]
    summary: dict


class Store:
    """An open project: `root` folder and its database connection."""

    def __init__(self, root: Path, conn: sqlite3.Connection, read_only: Optional[str] = None,
                 snapshot: Optional[Path] = None):
        self.root, self.conn = root, conn
        self.read_only = read_only   # why changes are refused (a read-only folder, a full disk), or None
        self._snapshot = snapshot    # the private copy a read-only view reads, removed on close

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, **settings) -> "Store":
        root = Path(root).resolve()
        create_database(root, {**DEFAULT_SETTINGS, **settings, "created": time.time()})
        return cls.open(root)

    @classmethod
    def open(cls, root: str | Path) -> "Store":
        """The project in `root`. A folder that cannot be written (a read-only share or mount), or a disk too full
        for SQLite's -shm/-wal files, opens as a read-only view that still sees the newest changes."""
        root = Path(root).resolve()
        conn, snapshot, read_only = open_database(root)
        return cls._opened(root, conn, snapshot, read_only)

    @classmethod
    def _opened(cls, root: Path, conn: sqlite3.Connection, snapshot: Optional[Path] = None,
                read_only: Optional[str] = None) -> "Store":
        db = root / DB_FILE
        try:
            version = schema.stored_version(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ExtremeAugError(f"{db}: {database_error_text(e, root)}") from None
        if not 1 <= version <= schema.CURRENT:
            conn.close()
            raise ExtremeAugError(f"{db}: unknown project format {version}; this extremeaug reads formats 1 to "
                                  f"{schema.CURRENT} (a newer extremeaug made it?)")
        store = cls(root, conn, read_only, snapshot)
        if read_only is None:
            set_journal(conn, db)
        if version < schema.CURRENT:
            if read_only is not None and snapshot is None:   # an older project seen read-only: migrate a copy
                conn.close()
                return cls._opened(root, *read_only_view(db, force_copy=True), read_only=read_only)
            store._migrate()
        return store

    def _migrate(self) -> None:
        if self._snapshot is not None:   # the private copy of a read-only view
            self.conn.execute("BEGIN IMMEDIATE")
            schema.migrate(self.conn, self.root, schema.stored_version(self.conn))
            self.conn.commit()
            return
        with self.write():
            schema.migrate(self.conn, self.root, schema.stored_version(self.conn))   # re-read under the lock

    def close(self) -> None:
        self.conn.close()
        if self._snapshot is not None:
            shutil.rmtree(self._snapshot, ignore_errors=True)
            self._snapshot = None

    def integrity_problems(self) -> List[str]:
        """SQLite's own check of every page and index (empty when the database is sound)."""
        try:
            rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as e:
            return [f"{DB_FILE} is damaged ({e})"]
        return [] if rows == ["ok"] else [f"{DB_FILE}: {r}" for r in rows]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transactions, settings, paths -------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock before any read, so
        check-then-insert sequences (one training at a time, case ids, version numbers) cannot race."""
        self.check_writable()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise ProjectBusy(f"{self.root / DB_FILE} is busy ({e}); try again") from None
            raise ExtremeAugError(f"{self.root / DB_FILE}: {database_error_text(e, self.root)}") from None
        try:
            yield
            self.conn.commit()
        except BaseException as e:
            if self.conn.in_transaction:
                self.conn.rollback()
            if isinstance(e, sqlite3.DatabaseError):   # a full disk at the commit is not a damaged database
                raise ExtremeAugError(f"{self.root / DB_FILE}: {database_error_text(e, self.root)}") from None
            raise

    def check_writable(self) -> None:
        """Refuse a change before any file is written for it, when the project cannot take changes."""
        if self.read_only is not None:
            raise ExtremeAugError(f"{self.root}: {self.read_only}; nothing was changed")

    def _writing(self) -> sqlite3.Connection:
        assert self.conn.in_transaction, "a change outside `with store.write()`"
        return self.conn

    def setting(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else DEFAULT_SETTINGS.get(key)

    def set_setting(self, key: str, value: Any) -> None:
        self._writing().execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value)))

    def settings(self) -> Settings:
        table = self.setting("labels")
        return Settings(**{k: self.setting(k) for k in ("plane", "val_fraction", "label_values", "active_version",
                                                        "merge_labels")},
                        structures=[Structure.from_dict(d) for d in table] if table else None)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    # -- cases -----------------------------------------------------------------------------------
    def case_row(self, case_id: str) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self.conn.execute("SELECT id FROM cases ORDER BY added LIMIT 6")]
            hint = f" (cases: {', '.join(known[:5])}{', ...' if len(known) > 5 else ''})" if known else \
                " (the project has no cases yet)"
            raise ExtremeAugError(f"no case {case_id!r} in {self.root}{hint}")
        return row

    def has_case(self, case_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM cases WHERE id = ?", (case_id,)).fetchone() is not None

    def case_with_scan(self, scan_sha256: str) -> Optional[str]:
        row = self.conn.execute("SELECT id FROM cases WHERE scan_sha256 = ? ORDER BY added LIMIT 1",
                                (scan_sha256,)).fetchone()
        return row[0] if row else None

    def insert_case(self, case_id: str, scan: str, scan_sha256: str, source: str) -> None:
        self._writing().execute("INSERT INTO cases (id, scan, source, added, scan_sha256) VALUES (?, ?, ?, ?, ?)",
                                (case_id, scan, source, time.time(), scan_sha256))

    def state(self, case_id: str) -> CaseState:
        return CaseState(self.conn.execute(f"SELECT {STATE_SQL} FROM cases c WHERE id = ?", (case_id,)).fetchone()[0])

    def case_infos(self) -> List[CaseInfo]:
        """One row per case (a single query, so it stays fast on large projects)."""
        rows = self.conn.execute(
            f"SELECT c.id, c.split, c.scan, {STATE_SQL} AS state, "
            " (SELECT COUNT(*) FROM labels WHERE case_id = c.id) AS n_labels, a.model_version, a.uncertainty "
            "FROM cases c LEFT JOIN labels a ON a.id = "
            " (SELECT MAX(id) FROM labels WHERE case_id = c.id AND kind = 'auto') ORDER BY c.added").fetchall()
        return [CaseInfo(r["id"], CaseState(r["state"]), Split(r["split"]) if r["split"] else None, r["scan"],
                         r["n_labels"], r["model_version"], r["uncertainty"]) for r in rows]

    def state_counts(self) -> Dict[str, int]:
        counts = {s.value: 0 for s in CaseState}
        counts.update(dict(self.conn.execute(f"SELECT {STATE_SQL} AS state, COUNT(*) FROM cases c GROUP BY state")))
        return counts

    def split_counts(self) -> Dict[str, int]:
        counts = {Split.TRAIN.value: 0, Split.VALIDATION.value: 0}
        counts.update(dict(self.conn.execute("SELECT split, COUNT(*) FROM cases WHERE split IS NOT NULL "
                                             "GROUP BY split")))
        return counts

    def unlabeled_ids(self) -> List[str]:
        """Cases without a human label (unlabeled or auto), in the order they were added."""
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM cases c WHERE NOT EXISTS (SELECT 1 FROM labels WHERE case_id = c.id AND kind IN "
            "('manual', 'corrected')) ORDER BY added")]

    def scans(self) -> List[sqlite3.Row]:
        return self.conn.execute("SELECT id, scan, scan_sha256 FROM cases ORDER BY added").fetchall()

    def assign_split(self, case_id: str, requested: Split) -> None:
        """Fixed split: a case gets one with its first human label and keeps it. The first labeled case
        trains; after that a case validates when that keeps the validation share at or under
        `val_fraction` (0.25: the 4th, 8th, 12th ... labeled cases)."""
        conn = self._writing()
        if conn.execute("SELECT split FROM cases WHERE id = ?", (case_id,)).fetchone()[0] is not None:
            return
        order = conn.execute("SELECT COALESCE(MAX(labeled_order), 0) + 1 FROM cases").fetchone()[0]
        split = requested
        if requested == Split.AUTO:
            n_val = conn.execute("SELECT COUNT(*) FROM cases WHERE split = 'validation'").fetchone()[0]
            fraction = float(self.setting("val_fraction"))
            split = Split.VALIDATION if order > 1 and n_val + 1 <= fraction * order + 1e-9 else Split.TRAIN
        conn.execute("UPDATE cases SET split = ?, labeled_order = ? WHERE id = ?", (split.value, order, case_id))

    # -- labels ----------------------------------------------------------------------------------
    def insert_label(self, case_id: str, kind: LabelKind, path: str, sha256: str, voxels: int,
                     source: Optional[str] = None, model_version: Optional[int] = None,
                     probabilities: Optional[str] = None, uncertainty: Optional[float] = None,
                     missing: Optional[List[str]] = None, uncertainty_map: Optional[str] = None,
                     accepted_by: Optional[str] = None) -> int:
        return self._writing().execute(
            "INSERT INTO labels (case_id, kind, path, sha256, voxels, created, source, model_version, probabilities, "
            "uncertainty, missing, uncertainty_map, accepted_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (case_id, LabelKind(kind).value, path, sha256, voxels, time.time(), source, model_version, probabilities,
             uncertainty, json.dumps(missing) if missing else None, uncertainty_map, accepted_by)).lastrowid

    def insert_correction(self, label_id: int, c: Correction) -> None:
        self._writing().execute("INSERT INTO corrections VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (label_id, c.auto_label, c.model_version, c.voxels_added, c.voxels_removed, c.dice,
                                 c.seconds))

    def corrections(self) -> List[Correction]:
        return [Correction(*r) for r in self.conn.execute(
            "SELECT auto_label_id, model_version, voxels_added, voxels_removed, dice, seconds FROM corrections "
            "ORDER BY label_id")]

    def label(self, label_id: int) -> Label:
        labels = self._labels("l.id = ?", (label_id,))
        if not labels:
            raise ExtremeAugError(f"no label {label_id} in {self.root}")
        return labels[0]

    def labels_of(self, case_id: str) -> List[Label]:
        return self._labels("l.case_id = ?", (case_id,))

    def all_labels(self) -> List[Label]:
        return self._labels("1", ())

    def latest_label(self, case_id: str, kinds: Sequence[LabelKind] = tuple(LabelKind)) -> Optional[Label]:
        marks = ",".join("?" * len(kinds))
        found = self._labels(f"l.id = (SELECT MAX(id) FROM labels WHERE case_id = ? AND kind IN ({marks}))",
                             (case_id, *[LabelKind(k).value for k in kinds]))
        return found[0] if found else None

    def human_labels(self, split: Split) -> List[Label]:
        """The newest human label of every case in `split`, in labeling order."""
        return self._labels("l.id = (SELECT MAX(id) FROM labels WHERE case_id = c.id AND kind IN ('manual', "
                            "'corrected')) AND c.split = ?", (Split(split).value,), order="c.labeled_order")

    def _labels(self, where: str, args: tuple, order: str = "l.id") -> List[Label]:
        rows = self.conn.execute(
            "SELECT l.*, k.auto_label_id, k.model_version AS k_version, k.voxels_added, k.voxels_removed, k.dice, "
            f"k.seconds FROM labels l JOIN cases c ON c.id = l.case_id LEFT JOIN corrections k ON k.label_id = l.id "
            f"WHERE {where} ORDER BY {order}", args).fetchall()
        return [Label(r["id"], r["case_id"], LabelKind(r["kind"]), r["path"], r["sha256"], r["voxels"], r["created"],
                      r["source"], r["model_version"], r["probabilities"], r["uncertainty"],
                      Correction(r["auto_label_id"], r["k_version"], r["voxels_added"], r["voxels_removed"], r["dice"],
                                 r["seconds"]) if r["auto_label_id"] is not None else None,
                      json.loads(r["missing"]) if r["missing"] else [], r["uncertainty_map"], r["accepted_by"])
                for r in rows]

    # -- runs ------------------------------------------------------------------------------------
    def active_run(self) -> Optional[RunRow]:
        return self._run("status IN ('starting', 'running')")

    def latest_run(self) -> Optional[RunRow]:
        return self._run("1")

    def run(self, run_id: str) -> RunRow:
        run = self._run("id = ?", (run_id,))
        if run is None:
            raise ExtremeAugError(f"no run {run_id!r} in {self.root}")
        return run

    def _run(self, where: str, args: tuple = ()) -> Optional[RunRow]:
        r = self.conn.execute(f"SELECT * FROM runs WHERE {where} ORDER BY created DESC LIMIT 1", args).fetchone()
        return None if r is None else RunRow(r["id"], RunStatus(r["status"]), r["pid"], r["created"],
                                             json.loads(r["config"]), json.loads(r["train_labels"]), r["message"],
                                             r["version"])

    def run_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def insert_run(self, run_id: str, spec: dict, train_labels: List[int]) -> None:
        self._writing().execute("INSERT INTO runs (id, status, created, config, train_labels) VALUES (?, ?, ?, ?, ?)",
                                (run_id, RunStatus.STARTING.value, time.time(), json.dumps(spec),
                                 json.dumps(train_labels)))

    def restart_run(self, run_id: str, spec: dict) -> None:
        self._writing().execute("UPDATE runs SET status = 'starting', pid = NULL, ended = NULL, message = NULL, "
                                "created = ?, config = ? WHERE id = ?", (time.time(), json.dumps(spec), run_id))

    def set_run_pid(self, run_id: str, pid: int) -> None:
        self._writing().execute("UPDATE runs SET pid = COALESCE(pid, ?) WHERE id = ?", (pid, run_id))

    def claim_run(self, run_id: str, pid: int) -> bool:
        """A worker takes a run that waits for one; False when it does not (any more)."""
        return self._writing().execute("UPDATE runs SET status = 'running', pid = ? WHERE id = ? AND status = "
                                       "'starting'", (pid, run_id)).rowcount == 1

    def end_run(self, run_id: str, status: RunStatus, message: Optional[str], only_if_active: bool = False,
                version: Optional[int] = None) -> None:
        self._writing().execute(
            "UPDATE runs SET status = ?, ended = ?, message = ?, version = COALESCE(?, version) WHERE id = ?"
            + (" AND status IN ('starting', 'running')" if only_if_active else ""),
            (RunStatus(status).value, time.time(), message, version, run_id))

    # -- versions and scores -----------------------------------------------------------------------
    def versions(self) -> List[VersionRow]:
        return [self._version_row(r) for r in self.conn.execute("SELECT * FROM versions ORDER BY version")]

    def version(self, version: int) -> VersionRow:
        row = self.conn.execute("SELECT * FROM versions WHERE version = ?", (int(version),)).fetchone()
        if row is None:
            known = [str(r[0]) for r in self.conn.execute("SELECT version FROM versions ORDER BY version")]
            raise ExtremeAugError(f"no model version {version}; versions: {', '.join(known) or 'none yet'}")
        return self._version_row(row)

    @staticmethod
    def _version_row(r) -> VersionRow:
        return VersionRow(r["version"], r["run_id"], r["created"], r["path"], json.loads(r["train_labels"]),
                          json.loads(r["val_labels"]), json.loads(r["summary"]))

    def version_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0]

    def next_version(self) -> int:
        return self._writing().execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions").fetchone()[0]

    def insert_version(self, version: int, run_id: str, path: str, train_labels: List[int], val_labels: List[int],
                       summary: dict) -> None:
        self._writing().execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (version, run_id, time.time(), path, json.dumps(train_labels), json.dumps(val_labels),
                                 json.dumps(summary)))

    def scores(self, version: int) -> Dict[int, Tuple[str, dict]]:
        """label id -> (case id, metrics) of every score a version has."""
        return {r[0]: (r[1], json.loads(r[2])) for r in
                self.conn.execute("SELECT label_id, case_id, metrics FROM scores WHERE version = ?", (version,))}

    def insert_scores(self, version: int, labels: Sequence[Label], metrics: Dict[int, dict]) -> None:
        by_id = {lab.id: lab for lab in labels}
        self._writing().executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                                    [(version, lid, by_id[lid].case_id, json.dumps(m), time.time())
                                     for lid, m in metrics.items()])
