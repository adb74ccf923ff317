from __future__ import annotations


class ExtremeAugError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line and exits non-zero; nothing else is expected to catch it.
    """


class ProjectBusy(ExtremeAugError):
    """The project database is locked by another process for longer than the caller's busy timeout: try
    again in a moment (a GUI timer skips a tick)."""


class Interrupted(ExtremeAugError):
    """Ctrl-C (or SIGTERM) stopped a command part-way; the message says what it had stored by then."""
