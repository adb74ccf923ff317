"""The one way the engine and the project write a file: a temporary file beside the target, its bytes
proved on the disk (flushed, then checked against what was meant to be written), then renamed into place.
A writer that reports success without having written (ITK's image writers on a full disk leave a short or
empty file and raise nothing) is caught by the check, before the rename: nothing half-written ever takes
the target's name, and no record is committed for it.

What the disk or file system said is named in words: a full disk is not a damaged file, a read-only file
system is not a permission problem, and the advice follows the cause.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

from .errors import ExtremeAugError
from .portable import WINDOWS, fsync_file, replace

FULL_BELOW_BYTES = 1 << 20   # a disk with less free space than this (or than the file needs) counts as full
WRITTEN: List[Path] = []     # every file this process published, oldest first: an interrupted command says what


def _free_bytes(folder: Path) -> Optional[int]:
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _read_only_file_system(folder: Path) -> bool:
    statvfs = getattr(os, "statvfs", None)   # not on Windows, where a read-only medium gives EROFS/EACCES itself
    for p in (folder, *folder.parents):
        if statvfs is None or not p.exists():
            continue
        try:
            return bool(statvfs(p).f_flag & getattr(os, "ST_RDONLY", 1))
        except OSError:
            return False
    return False


def disk_problem(folder: str | os.PathLike, error: Optional[BaseException] = None, needed: int = 0) -> Optional[str]:
    """The file system's reason a write in `folder` failed, in words, or None when it gives none: the error's
    own code first (ENOSPC, EDQUOT, EROFS, EACCES), else what the folder's file system shows now."""
    folder = Path(folder)
    code = getattr(error, "errno", None)
    free = _free_bytes(folder)
    if code == errno.ENOSPC or (code in (None, errno.EIO) and free is not None and free < max(FULL_BELOW_BYTES,
                                                                                               needed)):
        return f"the disk is full ({_size(free)} free)" if free is not None else "the disk is full"
    if code == getattr(errno, "EDQUOT", -1):
        return "the disk quota is used up"
    if code == errno.EROFS or (code in (None, errno.EACCES, errno.EPERM, errno.EIO) and
                               _read_only_file_system(folder)):
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return None


def write_failure(path: str | os.PathLike, error: Optional[BaseException] = None, needed: int = 0,
                  detail: str = "") -> ExtremeAugError:
    """The one-line error for a file that could not be written; `detail` when the file system gives no reason."""
    path = Path(path)
    reason = disk_problem(path.parent, error, needed)
    if reason is None:
        reason = detail or (getattr(error, "strerror", None) or str(error) if error else "it could not be written")
    return ExtremeAugError(f"{path}: {reason}; nothing was written there")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def temporary_beside(path: Path, suffix: str = "") -> Path:
    """An empty temporary file in the target's folder (a rename within one file system is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path, check: Callable[[Path], Optional[str]], needed: int = 0) -> Path:
    """Flush `tmp` to the disk, let `check` read it back (it returns what is wrong, or None), give it the
    permissions a plain open() would (mkstemp makes it 0600) and rename it to `path`. On any failure the
    temporary file is removed and the target is untouched."""
    try:
        try:
            fsync_file(tmp)
        except OSError as e:
            raise write_failure(path, e, needed) from None
        problem = check(tmp)
        if problem is not None:
            raise write_failure(path, None, needed, problem)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            replace(tmp, path)
        except PermissionError as e:
            if WINDOWS:   # a sharing violation that outlasted the retries
                raise ExtremeAugError(f"{path}: another program holds it open; nothing was written there") from None
            raise write_failure(path, e, needed) from None
        except OSError as e:
            raise write_failure(path, e, needed) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    WRITTEN.append(path)
    return path


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write bytes atomically; the file read back from the disk must hold exactly `data`."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, e, len(data)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

    def same(written: Path) -> Optional[str]:
        if written.stat().st_size != len(data) or written.read_bytes() != data:
            return f"the file read back holds {written.stat().st_size} of the {len(data)} bytes written"
        return None

    return publish(tmp, path, same, len(data))


def database_error_text(e: Exception, folder: Optional[str | os.PathLike] = None) -> str:
    """SQLite names its failures in words: tell a damaged project database from one that cannot be written,
    is on a full disk or is locked (all of them are `sqlite3.DatabaseError`). A full disk often shows only as
    "disk I/O error" (SQLite cannot grow its -shm or -wal file), so the free space of `folder` decides too;
    only a file SQLite reads as not a database, or as malformed, is called damaged."""
    text = str(e).lower()
    problem = disk_problem(folder) if folder is not None else None
    if "full" in text or (problem or "").startswith("the disk is full"):
        return (f"{problem or 'the disk holding the project is full'} ({e}); project.db is not damaged: free "
                "some space and try again; nothing was changed")
    if "readonly" in text or "read-only" in text or problem == "the file system is read-only":
        return f"the project cannot be written (read-only folder or file system: {e}); reading commands still work"
    if "locked" in text or "busy" in text:
        return f"the project is busy ({e}); try again"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return f"the project database is damaged ({e}); the scans and labels under cases/ are untouched: " \
               "restore project.db from a backup"
    return f"project.db could not be read or written ({e}); check the disk and try again " \
           "(`extremeaug project verify` says whether anything is damaged)"


def os_error_text(e: Exception) -> str:
    """One line for what the operating system refused (an OSError, or ITK's symbolic-link-loop RuntimeError)."""
    if not isinstance(e, OSError):
        return f"{e} (a symbolic link that points at itself)"
    where = Path(e.filename) if e.filename else Path.cwd()
    what = disk_problem(where if where.is_dir() else where.parent, e) or e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename else what
