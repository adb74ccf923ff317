"""Opening project.db: what the file must be before SQLite touches it, connections for the writer and for a
read-only view that still sees the newest changes, and the journal settings. No SQL of the project's tables
is here (store.py has it)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Optional, Tuple

from ..common.errors import ExtremeAugError
from ..common.files import database_error_text, disk_problem
from ..common.portable import fsync_file, on_network_share, replace
from . import schema

DB_FILE = "project.db"


def check_database_file(root: Path, db: Path) -> None:
    """Say what project.db is when it is not a database file: missing, a folder, empty. Nothing is written."""
    if db.is_dir():
        raise ExtremeAugError(f"{db} is a folder, not a project database; {root} is not a usable project "
                              f"(move that folder away, or open the project folder that holds a {DB_FILE} file)")
    if not db.is_file():
        raise ExtremeAugError(f"{root} is not an extremeaug project (no {DB_FILE}); "
                              f"create one with: extremeaug project init {root}")
    if db.stat().st_size == 0:
        raise ExtremeAugError(f"{db} is empty (0 bytes): not a project database (a copy that did not finish, or a "
                              "disk that filled up while it was created?); the files under cases/ are untouched: "
                              f"restore {DB_FILE} from the original or a backup")


def create_database(root: Path, settings: dict) -> None:
    """A new project.db in a new or empty folder, at the current schema, holding `settings`. It is built
    under a temporary name and renamed last, so a half-created project never looks like a project."""
    db = root / DB_FILE
    if db.is_dir():
        raise ExtremeAugError(f"{db} is a folder, not a project database; choose a new or empty folder for the "
                              "project")
    if db.exists():
        raise ExtremeAugError(f"{root} is already a project")
    if root.exists() and not root.is_dir():
        raise ExtremeAugError(f"{root} exists and is not a folder")
    if root.exists() and any(root.iterdir()):
        raise ExtremeAugError(f"{root} is not empty; a project needs a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (DB_FILE + ".new")
    tmp.unlink(missing_ok=True)
    try:
        conn = connect(tmp)
        try:
            conn.execute("BEGIN IMMEDIATE")
            schema.migrate(conn, root, 0)
            conn.executemany("INSERT INTO settings VALUES (?, ?)", [(k, json.dumps(v)) for k, v in settings.items()])
            conn.commit()
        finally:
            conn.close()
        fsync_file(tmp)
        replace(tmp, db)
    except (sqlite3.DatabaseError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise ExtremeAugError(f"{root}: {database_error_text(e, root)}") from None


def open_database(root: Path) -> Tuple[sqlite3.Connection, Optional[Path], Optional[str]]:
    """(connection, private copy or None, why changes are refused or None). A folder that cannot be
    written, or a disk too full for SQLite's -shm/-wal files, gives the read-only view; any other failure
    is named for what it is (a full disk is not a damaged database)."""
    db = root / DB_FILE
    check_database_file(root, db)
    if not (os.access(root, os.W_OK) and os.access(db, os.W_OK)):
        return (*read_only_view(db), "the project cannot be written (read-only folder or file system)")
    try:
        return connect(db), None, None
    except sqlite3.DatabaseError as e:
        problem = disk_problem(root)
        if problem is None or not problem.startswith("the disk is full"):
            raise ExtremeAugError(f"{db}: {database_error_text(e, root)}") from None
    return (*read_only_view(db), f"{problem}: changes are refused until space is freed")


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None)  # explicit BEGIN/COMMIT only
    conn.row_factory = sqlite3.Row
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()   # reads the header: fails here, not later
    return conn


def set_journal(conn: sqlite3.Connection, db: Path) -> None:
    """Once the format is known (a newer project's file is not changed): WAL, full syncs, foreign keys.
    WAL needs memory shared between the processes, which a network file system does not give."""
    conn.execute(f"PRAGMA journal_mode = {'DELETE' if on_network_share(db.parent) else 'WAL'}")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def read_only_view(db: Path, force_copy: bool = False) -> Tuple[sqlite3.Connection, Optional[Path]]:
    """A connection that reads the project as its writer last left it, writing nothing in the project.

    `immutable` needs no -wal/-shm files but ignores the write-ahead log, where the newest committed changes
    (the last accepted label) may still be. So when a -wal file holds anything (or the schema is older and
    must be migrated to be read), the database and its log are copied to a private folder and opened there:
    SQLite applies the log to the copy."""
    wal = db.with_name(db.name + "-wal")
    if not force_copy and not (wal.is_file() and wal.stat().st_size > 0):
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro&immutable=1", uri=True, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn, None
    folder = Path(tempfile.mkdtemp(prefix="extremeaug-view-"))
    try:
        shutil.copyfile(db, folder / db.name)
        if wal.is_file():
            shutil.copyfile(wal, folder / wal.name)
        return connect(folder / db.name), folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
