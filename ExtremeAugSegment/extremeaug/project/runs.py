"""Background training runs: start a worker process, watch its heartbeat, cancel it, resume it.

A run's files live in runs/<id>/: progress.jsonl (the engine's JSON lines plus `phase` lines),
heartbeat.json (rewritten every few seconds by the worker), worker.log, cancel (the stop request) and
train/ (the engine's checkpoint). A run is dead when its process is gone (POSIX) or its heartbeat is
older than STALE_S (portable.process_alive; on Windows too); it is then recorded as `died`, and a resume
continues it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from ..common.errors import ExtremeAugError
from ..common.events import append_event, tail_events
from ..common.portable import process_alive, read_bytes, spawn
from .records import EpochSummary, Phase, Progress, RunSpec, RunState, RunStatus, Split
from .store import RunRow, Store

STALE_S = 30.0
START_GRACE_S = 60.0   # a worker has this long to write its first heartbeat (imports, reading scans)
PROGRESS_FIELDS = ("step", "steps_total", "epoch", "loss", "dice", "patches_per_s", "eta_s", "time")
EPOCH_FIELDS = ("epoch", "loss", "train_dice", "elapsed_s")


def run_dir(store: Store, run_id: str) -> Path:
    return store.root / "runs" / run_id


def heartbeat(store: Store, run_id: str) -> Optional[dict]:
    """The worker's last heartbeat; None when there is none yet. A file the worker is replacing right now
    (a Windows sharing violation that outlasts the retries) counts as a fresh beat: it is being written."""
    path = run_dir(store, run_id) / "heartbeat.json"
    try:
        return json.loads(read_bytes(path))
    except PermissionError:
        return {"time": time.time(), "unreadable": True}
    except (OSError, ValueError):
        return None


def liveness(store: Store, run: RunRow) -> Optional[str]:
    """None while an active run looks alive, else why it is dead."""
    beat = heartbeat(store, run.id)
    if process_alive(run.pid) is False:
        return f"its worker process {run.pid} is gone"
    age = time.time() - (beat["time"] if beat else run.created)
    if age > (STALE_S if beat else START_GRACE_S):
        return f"no heartbeat for {age:.0f} s"
    return None


def reap(store: Store) -> None:
    """Record an active run whose worker died as `died` (what `status` and `train` notice)."""
    run = store.active_run()
    why = liveness(store, run) if run is not None else None
    if why:
        with store.write():
            store.end_run(run.id, RunStatus.DIED, f"worker died: {why}; `extremeaug project train --resume` "
                          "continues it", only_if_active=True)


def start(store: Store, spec: Optional[RunSpec], resume: bool = False, device: Optional[str] = None,
          time_budget_min: Optional[float] = None, batch_size: Optional[int] = None) -> str:
    """Register a run (refused while another one is alive) and start its worker process. A resume takes
    the last run's own spec; only the device, the time budget and the batch size (the way on after out of
    memory: the engine continues the same epoch at the new size) may change."""
    if spec is not None:
        spec.check()   # refused here, before a worker starts
    reap(store)
    with store.write():
        active = store.active_run()
        if active:
            raise ExtremeAugError(f"run {active.id} is already training in this project (pid {active.pid}); "
                                  "wait for it, or stop it with `extremeaug project cancel`")
        if resume:
            run = store.latest_run()
            if run is None or not run.status.resumable or not (run_dir(store, run.id) / "train" /
                                                                "checkpoint.pt").is_file():
                what = f"the last run ({run.id}) is {run.status.value}" if run else "there is no run yet"
                raise ExtremeAugError(f"--resume: nothing to resume ({what}, or it left no checkpoint)")
            run_id, merged = run.id, dict(run.spec)
            changes = {"device": device, "time_budget_min": time_budget_min}
            merged.update({k: v for k, v in changes.items() if v is not None})
            if batch_size is not None:
                merged["train"] = dict(merged["train"], batch_size=batch_size)
            RunSpec.from_dict(merged).check()
            store.restart_run(run_id, merged)
        else:
            labels = store.human_labels(Split.TRAIN)
            if not labels:
                raise ExtremeAugError("no labeled training case: add a scan with --label (or accept a correction) "
                                      "first")
            run_id = f"r{store.run_count() + 1:04d}-{time.strftime('%Y%m%d-%H%M%S')}"
            store.insert_run(run_id, spec.to_dict(), [lab.id for lab in labels])
    folder = run_dir(store, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cancel").unlink(missing_ok=True)
    append_event(folder / "progress.jsonl", "phase", phase=Phase.QUEUED.value)
    try:
        process = spawn_worker(store.root, run_id, resume, folder / "worker.log")
    except OSError as e:
        with store.write():
            store.end_run(run_id, RunStatus.FAILED, f"could not start the worker: {e}")
        raise ExtremeAugError(f"could not start the training worker: {e}") from None
    with store.write():
        store.set_run_pid(run_id, process.pid)
    return run_id


def spawn_worker(root: Path, run_id: str, resume: bool, log: Path) -> subprocess.Popen:
    """The worker outlives the command that started it (its own session, no terminal signals)."""
    with open(log, "ab") as out:
        return spawn(["extremeaug.project.worker", str(root.resolve()), run_id] + (["--resume"] if resume else []), out)


def cancel(store: Store, wait_s: float = 120.0) -> RunState:
    """Ask the running worker to stop (cancel file + SIGTERM); it checkpoints, so a resume can go on.
    Returns the run's state once it has stopped, or after `wait_s` (still active: stopping)."""
    reap(store)
    run = store.active_run()
    if run is None:
        raise ExtremeAugError("no training is running in this project")
    (run_dir(store, run.id) / "cancel").write_text(str(time.time()))
    # a 'starting' worker may still be importing, before its SIGTERM handler exists: the file reaches it
    if run.status == RunStatus.RUNNING and run.pid and os.name == "posix":
        try:
            os.kill(run.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while True:
        reap(store)
        row = store.run(run.id)
        if not row.status.active or time.monotonic() >= deadline:
            return run_state(store, row)
        time.sleep(0.5)


def latest_run_state(store: Store) -> Optional[RunState]:
    """The newest run's state (dead workers reaped first); None before the first run. What a front end
    polls every second: the database row and the run's small files only."""
    reap(store)
    run = store.latest_run()
    return run_state(store, run) if run is not None else None


def run_state(store: Store, run: RunRow) -> RunState:
    folder = run_dir(store, run.id)
    last: dict = {}
    for e in tail_events(folder / "progress.jsonl"):
        if e["event"] == "phase" and e.get("phase") == Phase.QUEUED.value:
            last = {}   # a resumed run appends to the same file: report only the current attempt
        last[e["event"]] = e
    beat = heartbeat(store, run.id)
    progress = last.get("progress")
    epoch = last.get("epoch")
    retry = last.get("retry") if run.status.active else None
    message = f"out of memory: training again at batch size {retry['batch_size']}" if retry else run.message
    return RunState(run.id, run.status, Phase(beat["phase"]) if beat and beat.get("phase") else None, run.pid,
                    message, run.version, round(time.time() - beat["time"], 1) if beat else None,
                    run.status.resumable and (folder / "train" / "checkpoint.pt").is_file(),
                    Progress(**{k: progress.get(k) for k in PROGRESS_FIELDS}) if progress else None,
                    EpochSummary(**{k: epoch.get(k) for k in EPOCH_FIELDS}) if epoch else None)
