"""Segmentation jobs a GUI polls, in background processes (`portable.spawn`).

A GUI must not run inference, the uncertainty's dilation or compressed writes on its own thread: a
`SegmentJob` runs `extremeaug project segment ... --json` in a child process that stores each prediction
as it goes (one JSON line per case on its stdout), and `poll()` reads what is there without waiting.
Cancel stops the process and what it started (inside 3D Slicer the launcher's `python-real`): every prediction already stored stays (each is written atomically and
registered in one transaction), the rest is simply not done.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import List, Optional, Sequence

from ..common.portable import spawn, stop_tree
from .records import CaseState, JobState, JobStatus, SegmentResult


class SegmentJob:
    """Segment cases with a model version in a child process; `poll()` never blocks."""

    def __init__(self, root: Path, case_ids: Sequence[str], version: Optional[int], device: str,
                 add: Optional[Path] = None, add_id: Optional[str] = None, source: Optional[str] = None,
                 handover: Optional[Path] = None):
        self.case_ids = list(dict.fromkeys(case_ids))
        self.total = len(self.case_ids) + (add is not None)
        self.handover = handover   # a temporary scan file of the caller's, removed when the job ends
        folder = root / "jobs"
        folder.mkdir(exist_ok=True)
        stem = folder / f"segment-{secrets.token_hex(4)}"
        self.output, self.log = stem.with_suffix(".jsonl"), stem.with_suffix(".log")
        args = ["extremeaug", "project", "segment", str(root.resolve()), *self.case_ids, "--json", "--device", device]
        if version is not None:
            args += ["--version", str(version)]
        if add is not None:
            args += ["--add", str(add)] + (["--id", add_id] if add_id else [])
            args += ["--source", source] if source else []
        with open(self.output, "wb") as out, open(self.log, "wb") as err:
            self._process = spawn(args, out, err)
        self._cancelled = False
        self._final: Optional[JobState] = None

    def poll(self) -> JobState:
        if self._final is not None:
            return self._final
        code = self._process.poll()
        results = self._results()
        if code is None:
            return JobState(JobStatus.RUNNING, len(results), self.total, results)
        if self._cancelled:
            state = JobState(JobStatus.CANCELLED, len(results), self.total, results,
                             f"cancelled after {len(results)} of {self.total} case(s)")
        elif code == 0:
            state = JobState(JobStatus.FINISHED, len(results), self.total, results)
        else:
            state = JobState(JobStatus.FAILED, len(results), self.total, results, self._error(code))
        self._final = state
        self._process.wait()
        self.output.unlink(missing_ok=True)
        if self.handover is not None:
            self.handover.unlink(missing_ok=True)
        if state.status != JobStatus.FAILED:
            self.log.unlink(missing_ok=True)
        return state

    def cancel(self) -> None:
        """Stop the process tree (stored predictions stay); `poll()` then reports `cancelled`."""
        if self._process.poll() is None:
            self._cancelled = True
            stop_tree(self._process)

    def _results(self) -> List[SegmentResult]:
        try:
            text = self.output.read_text(encoding="utf-8")
        except OSError:
            return []
        results = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):   # a line still being written is read at the next poll
                d = json.loads(line)
                results.append(SegmentResult(**dict(d, state=CaseState(d["state"]))))
        return results

    def _error(self, code: int) -> str:
        try:
            lines = [x for x in self.log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
        except OSError:
            lines = []
        return (lines[-1] if lines else f"the segmentation process exited with code {code}") + f" (log: {self.log})"
