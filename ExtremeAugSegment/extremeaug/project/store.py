"""The project registry: one SQLite file (WAL, transactions) beside the files it lists.

Every path in the database is relative to the project folder, so a project can be moved or copied.
Files are written first (atomically: temporary file, fsync, rename) and the database commit that
references them comes last; a crash in between leaves an unreferenced file, never a half label.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import ExtremeAugError

DB_FILE = "project.db"
SCHEMA_VERSION = 1
LABEL_KINDS = ("manual", "corrected", "auto")
HUMAN_KINDS = ("manual", "corrected")

SCHEMA = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cases (
    id TEXT PRIMARY KEY,
    scan TEXT NOT NULL,            -- relative path of the stored scan
    source TEXT NOT NULL,          -- where it was added from (information only)
    added REAL NOT NULL,
    split TEXT CHECK (split IN ('train', 'validation')),   -- set once, with the first human label
    labeled_order INTEGER          -- 1 for the first case that got a human label, 2 for the next, ...
);
CREATE TABLE labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL REFERENCES cases(id),
    kind TEXT NOT NULL CHECK (kind IN ('manual', 'corrected', 'auto')),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    voxels INTEGER NOT NULL,
    created REAL NOT NULL,
    source TEXT,
    model_version INTEGER,         -- auto labels: the version that predicted it
    probabilities TEXT,            -- auto labels: relative path of the probability map
    uncertainty REAL               -- auto labels: mean binary entropy (bits) near the prediction
);
CREATE INDEX labels_case ON labels (case_id, id);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- starting, running, finished, cancelled, failed, died
    pid INTEGER,
    created REAL NOT NULL,
    ended REAL,
    config TEXT NOT NULL,          -- JSON: TrainConfig fields and run options
    train_labels TEXT NOT NULL,    -- JSON list of label ids the run trains on
    message TEXT,
    version INTEGER
);
CREATE TABLE versions (
    version INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    created REAL NOT NULL,
    path TEXT NOT NULL,            -- relative path of model.onnx
    train_labels TEXT NOT NULL,    -- JSON list of label ids
    val_labels TEXT NOT NULL,      -- JSON list of the validation label ids when it was trained
    summary TEXT NOT NULL          -- JSON: epochs, training Dice, seconds, device, status
);
CREATE TABLE scores (
    version INTEGER NOT NULL REFERENCES versions(version),
    label_id INTEGER NOT NULL REFERENCES labels(id),
    case_id TEXT NOT NULL,
    metrics TEXT NOT NULL,         -- JSON from extremeaug.evaluate
    created REAL NOT NULL,
    PRIMARY KEY (version, label_id)
);
"""

DEFAULT_SETTINGS = {"plane": "auto", "val_fraction": 0.25, "label_values": None, "active_version": None}


class Store:
    """An open project: `root` folder and its database connection."""

    def __init__(self, root: Path, conn: sqlite3.Connection):
        self.root, self.conn = root, conn

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, **settings) -> "Store":
        root = Path(root).resolve()
        if (root / DB_FILE).exists():
            raise ExtremeAugError(f"{root} is already a project")
        if root.exists() and not root.is_dir():
            raise ExtremeAugError(f"{root} exists and is not a folder")
        if root.exists() and any(root.iterdir()):
            raise ExtremeAugError(f"{root} is not empty; a project needs a new or empty folder")
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / (DB_FILE + ".new")
        tmp.unlink(missing_ok=True)
        conn = _connect(tmp)
        with conn:
            conn.executescript(SCHEMA)
            values = {**DEFAULT_SETTINGS, **settings, "schema_version": SCHEMA_VERSION, "created": time.time()}
            conn.executemany("INSERT INTO settings VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])
        conn.close()
        tmp.replace(root / DB_FILE)   # a half-created project never looks like a project
        return cls.open(root)

    @classmethod
    def open(cls, root: str | Path) -> "Store":
        root = Path(root).resolve()
        db = root / DB_FILE
        if not db.is_file():
            raise ExtremeAugError(f"{root} is not an extremeaug project (no {DB_FILE}); "
                                  f"create one with: extremeaug project init {root}")
        try:
            conn = _connect(db)
            version = conn.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise ExtremeAugError(f"{db} is damaged ({e}); the scans and labels under {root / 'cases'} are "
                                  "untouched: restore project.db from a backup") from None
        if version is None or json.loads(version[0]) != SCHEMA_VERSION:
            raise ExtremeAugError(f"{db}: unknown project format {version and version[0]}; this is "
                                  f"extremeaug project format {SCHEMA_VERSION}")
        return cls(root, conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transactions and settings -----------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock before any read, so
        check-then-insert sequences (one training at a time, version numbers) cannot race."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise ExtremeAugError(f"{self.root / DB_FILE} is busy ({e}); try again") from None
        try:
            yield self.conn
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def setting(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else DEFAULT_SETTINGS.get(key)

    def set_setting(self, conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value)))

    # -- paths -----------------------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        return self.root / relative

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    # -- queries ---------------------------------------------------------------------------------
    def case(self, case_id: str) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self.conn.execute("SELECT id FROM cases ORDER BY added LIMIT 6")]
            hint = f" (cases: {', '.join(known[:5])}{', ...' if len(known) > 5 else ''})" if known else \
                " (the project has no cases yet)"
            raise ExtremeAugError(f"no case {case_id!r} in {self.root}{hint}")
        return row

    def latest_label(self, case_id: str, kinds=LABEL_KINDS) -> Optional[sqlite3.Row]:
        marks = ",".join("?" * len(kinds))
        return self.conn.execute(f"SELECT * FROM labels WHERE case_id = ? AND kind IN ({marks}) "
                                 "ORDER BY id DESC LIMIT 1", (case_id, *kinds)).fetchone()

    def state(self, case_id: str) -> str:
        """unlabeled, auto, manual or corrected: the newest human label wins over any prediction."""
        human = self.latest_label(case_id, HUMAN_KINDS)
        if human is not None:
            return human["kind"]
        return "auto" if self.latest_label(case_id, ("auto",)) is not None else "unlabeled"

    def human_labels(self, split: str) -> list:
        """The newest human label of every case in `split`, in labeling order."""
        return self.conn.execute(
            "SELECT l.* FROM labels l JOIN cases c ON c.id = l.case_id WHERE c.split = ? AND l.id = "
            "(SELECT MAX(id) FROM labels WHERE case_id = c.id AND kind IN ('manual', 'corrected')) "
            "ORDER BY c.labeled_order", (split,)).fetchall()

    def label(self, label_id: int) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM labels WHERE id = ?", (label_id,)).fetchone()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None)  # explicit BEGIN/COMMIT only
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn
