"""Ctrl-C / SIGTERM: stop training cleanly after the current step, and never lose an early Ctrl-C.

Before training starts, SIGINT raises KeyboardInterrupt as usual, so nothing is written. But a Ctrl-C that
lands inside a library call which swallows KeyboardInterrupt (an import guarded by a bare `except:`)
would be lost and a 100-epoch run would go on; the command line therefore installs `watch()` first, which
also remembers the interrupt, and training refuses to start once one was seen (`raise_if_interrupted`).
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

_seen = threading.Event()


def watch() -> None:
    """Install the remembering SIGINT handler (main thread only, as signal handlers must be)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _remember_and_raise)
        sys.unraisablehook = _quiet_interrupts


def _remember_and_raise(signum, frame):
    _seen.set()
    raise KeyboardInterrupt


def _quiet_interrupts(unraisable) -> None:
    """A Ctrl-C that lands in code Python cannot raise from (an import lock's weakref callback) is remembered and
    raised again at the next check, so it needs no "Exception ignored ... Traceback" on the clinician's screen."""
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def raise_if_interrupted() -> None:
    if _seen.is_set():
        raise KeyboardInterrupt


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step (installed from the main thread only)."""

    def __init__(self):
        self.reason: Optional[str] = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
