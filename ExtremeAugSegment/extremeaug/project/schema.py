"""The project database's schema as an ordered list of migration steps; `PRAGMA user_version` says how
many have run. A new project runs them all; an older one runs the rest, in one transaction, when it is
opened. Steps are never edited once released: a change is a new step.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable, List, Optional

# Step 1: the schema of the first release (its projects have user_version 0 and settings.schema_version 1).
SCHEMA_1 = """
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
    sha256 TEXT NOT NULL,          -- of the label file
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
    config TEXT NOT NULL,          -- JSON: the run spec
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
    metrics TEXT NOT NULL,         -- JSON from extremeaug.evaluation.metrics
    created REAL NOT NULL,
    PRIMARY KEY (version, label_id)
);
"""

# Step 2: scans known by content; what each correction changed.
SCHEMA_2 = """
ALTER TABLE cases ADD COLUMN scan_sha256 TEXT;   -- SHA-256 of the voxels and geometry (io.image_sha256)
CREATE INDEX cases_scan_sha256 ON cases (scan_sha256);
CREATE TABLE corrections (
    label_id INTEGER PRIMARY KEY REFERENCES labels(id),      -- the human label
    auto_label_id INTEGER NOT NULL REFERENCES labels(id),    -- the prediction it replaced
    model_version INTEGER,
    voxels_added INTEGER NOT NULL,
    voxels_removed INTEGER NOT NULL,
    dice REAL NOT NULL,
    seconds REAL                   -- from the prediction being shown to the accept, when the front end knows
);
"""


def _hash_stored_scans(conn: sqlite3.Connection, root: Path) -> None:
    for case_id, scan in conn.execute("SELECT id, scan FROM cases").fetchall():
        digest = _scan_digest(root / scan)
        conn.execute("UPDATE cases SET scan_sha256 = ? WHERE id = ?", (digest, case_id))


def _scan_digest(path: Path) -> Optional[str]:
    """None for a scan that is missing or unreadable: `verify` names it, nothing else is held up."""
    from ..data.io import image_sha256, read_scan  # SimpleITK: only an old project's migration needs it here
    try:
        return image_sha256(read_scan(path, keep_type=True))
    except Exception:
        return None


def _script(sql: str) -> Callable[[sqlite3.Connection, Path], None]:
    def run(conn: sqlite3.Connection, root: Path) -> None:
        for statement in sql.split(";"):   # executescript would COMMIT the migration's transaction
            if statement.strip():
                conn.execute(statement)
    return run


def _step_2(conn: sqlite3.Connection, root: Path) -> None:
    _script(SCHEMA_2)(conn, root)
    _hash_stored_scans(conn, root)


# Step 3: several structures. A human label records the structures it left out; a project labeled before
# this step learned one structure (masks were merged): its label table becomes that one structure.
SCHEMA_3 = """
ALTER TABLE labels ADD COLUMN missing TEXT;   -- JSON list of the structure names a human label left out
"""


def _step_3(conn: sqlite3.Connection, root: Path) -> None:
    _script(SCHEMA_3)(conn, root)
    labeled = conn.execute("SELECT 1 FROM labels WHERE kind != 'auto' LIMIT 1").fetchone()
    row = conn.execute("SELECT value FROM settings WHERE key = 'structure'").fetchone()
    if labeled or row:
        structure = dict(json.loads(row[0]) if row else {"name": "structure", "color": [0.9, 0.62, 0.25]}, value=1)
        conn.execute("INSERT OR REPLACE INTO settings VALUES ('labels', ?)", (json.dumps([structure]),))
        conn.execute("INSERT OR REPLACE INTO settings VALUES ('merge_labels', 'true')")
    conn.execute("DELETE FROM settings WHERE key = 'structure'")


# Step 4: an auto label keeps its voxel-wise uncertainty map beside the probability map (older ones have none).
SCHEMA_4 = """
ALTER TABLE labels ADD COLUMN uncertainty_map TEXT;   -- auto labels: relative path of the uncertainty map
"""

# Step 5: a correction whose prediction file was gone (deleted, or empty after a full disk) is still stored;
# what it changed is then unknown (NULL). SQLite cannot drop a NOT NULL constraint: the table is rebuilt.
SCHEMA_5 = """
CREATE TABLE corrections_5 (
    label_id INTEGER PRIMARY KEY REFERENCES labels(id),      -- the human label
    auto_label_id INTEGER NOT NULL REFERENCES labels(id),    -- the prediction it replaced
    model_version INTEGER,
    voxels_added INTEGER,          -- NULL: unknown (the prediction file could not be read at the accept)
    voxels_removed INTEGER,
    dice REAL,
    seconds REAL                   -- from the prediction being shown to the accept, when the front end knows
);
INSERT INTO corrections_5 SELECT label_id, auto_label_id, model_version, voxels_added, voxels_removed, dice, seconds
    FROM corrections;
DROP TABLE corrections;
ALTER TABLE corrections_5 RENAME TO corrections;
"""

# Step 6: several clinicians on one project (the web front end): a human label records who stored it.
SCHEMA_6 = """
ALTER TABLE labels ADD COLUMN accepted_by TEXT;   -- human labels: the web user, or the login name, who stored it
"""

MIGRATIONS: List[Callable[[sqlite3.Connection, Path], None]] = [_script(SCHEMA_1), _step_2, _step_3,
                                                                _script(SCHEMA_4), _script(SCHEMA_5),
                                                                _script(SCHEMA_6)]
CURRENT = len(MIGRATIONS)


def stored_version(conn: sqlite3.Connection) -> int:
    """user_version; a first-release project (0, with settings.schema_version = 1) counts as 1."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'settings'").fetchone():
        row = conn.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
        version = json.loads(row[0]) if row else 0
    return version


def migrate(conn: sqlite3.Connection, root: Path, start: int) -> None:
    """Run the steps after `start` inside the caller's transaction."""
    for step in range(start, CURRENT):
        MIGRATIONS[step](conn, root)
    conn.execute(f"PRAGMA user_version = {CURRENT}")
    # readers from before user_version look here, and refuse a format they do not know
    conn.execute("INSERT OR REPLACE INTO settings VALUES ('schema_version', ?)", (json.dumps(CURRENT),))
