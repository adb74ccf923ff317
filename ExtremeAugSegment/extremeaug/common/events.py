"""JSON-lines events: the one writer and reader of progress files, and the one ETA format.

Each line is one JSON object with `event` (start, progress, validation, epoch, end, and retry: out of
memory, a new start follows at half the batch; the project adds `phase`) and `time` (Unix seconds).
Training writes them, `project train --wait`, `project status` and the Slicer module read them while the
file grows, so a reader takes complete lines only and skips a line that a killed writer cut short.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List, Optional


def _line(name: str, fields: dict) -> bytes:
    return (json.dumps({"event": name, "time": round(time.time(), 3), **fields}) + "\n").encode("utf-8")


class EventWriter:
    """Appends events to a file; a line left unfinished by a killed writer is ended first, so the next
    one stays readable. Each line is flushed as it is written (readers poll the file)."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+b", buffering=0)
        if self.file.seek(0, os.SEEK_END) > 0:
            self.file.seek(-1, os.SEEK_END)
            if self.file.read(1) != b"\n":
                self.file.write(b"\n")

    def write(self, name: str, **fields) -> None:
        self.file.write(_line(name, fields))

    def close(self) -> None:
        self.file.close()


def append_event(path: str | os.PathLike, name: str, **fields) -> None:
    """One event appended (opens and closes the file: for rare events such as a run's phases)."""
    writer = EventWriter(path)
    try:
        writer.write(name, **fields)
    finally:
        writer.close()


class EventReader:
    """Reads the complete lines appended since the last call (what a GUI timer or `train --wait` polls);
    a line still being written waits for the next call."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.offset = Path(path), 0

    def read(self) -> List[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return parse_events(complete.decode("utf-8", "replace").splitlines())


def tail_events(path: str | os.PathLike, max_bytes: int = 16384) -> List[dict]:
    """The events at the end of a file (cheap on long runs: only the last `max_bytes` are read)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()[1 if size > max_bytes else 0:]
    except OSError:
        return []
    return parse_events(lines)


def parse_events(lines) -> List[dict]:
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue   # a line still being written, or cut short by a killed writer
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


def format_eta(seconds: Optional[float]) -> str:
    """Seconds left as tqdm shows them (`4:05`, `1:02:03`); `?` when unknown."""
    if seconds is None:
        return "?"
    from tqdm import tqdm
    return tqdm.format_interval(max(0.0, float(seconds)))
