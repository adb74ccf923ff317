from __future__ import annotations


class ExtremeAugError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line and exits non-zero; nothing else is expected to catch it.
    """
