from __future__ import annotations


class ExtremeAugError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line and exits non-zero; nothing else is expected to catch it.
    """


class ProjectBusy(ExtremeAugError):
    """The project database is locked by another process for longer than the caller's busy timeout: try
    again in a moment (a GUI timer skips a tick)."""


def database_error_text(e: Exception) -> str:
    """SQLite names its failures in words: tell a damaged project database from one that cannot be written,
    is on a full disk or is locked (all of them are `sqlite3.DatabaseError`)."""
    text = str(e).lower()
    if "readonly" in text or "read-only" in text:
        return f"the project cannot be written (read-only folder or file system: {e}); reading commands still work"
    if "full" in text:
        return f"the disk holding the project is full ({e}); nothing was changed"
    if "locked" in text or "busy" in text:
        return f"the project is busy ({e}); try again"
    return f"the project database is damaged ({e}); the scans and labels under cases/ are untouched: restore " \
           "project.db from a backup"
