"""Background training runs: start a worker process, watch its heartbeat, cancel it, resume it.

A run's files live in runs/<id>/: progress.jsonl (the engine's JSON lines plus `phase` lines),
heartbeat.json (rewritten every HEARTBEAT_S by the worker), worker.log, cancel (the stop request) and
train/ (the engine's checkpoint). A run is dead when its process is gone (POSIX) or its heartbeat is
older than STALE_S; `status` then records it as `died`, and `train --resume` continues it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ..errors import ExtremeAugError
from .store import Store

ACTIVE = ("starting", "running")
RESUMABLE = ("died", "cancelled", "failed")
HEARTBEAT_S = 2.0
STALE_S = 30.0
START_GRACE_S = 60.0   # a worker has this long to write its first heartbeat (imports, reading scans)


def run_dir(store: Store, run_id: str) -> Path:
    return store.root / "runs" / run_id


def process_alive(pid: Optional[int]) -> Optional[bool]:
    """True/False on POSIX (a zombie counts as dead); None where it cannot be told without side effects."""
    if not pid or os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def heartbeat(store: Store, run_id: str) -> Optional[dict]:
    try:
        return json.loads((run_dir(store, run_id) / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return None


def liveness(store: Store, run) -> Optional[str]:
    """None while an active run looks alive, else why it is dead."""
    beat = heartbeat(store, run["id"])
    alive = process_alive(run["pid"])
    if alive is False:
        return f"its worker process {run['pid']} is gone"
    last = beat["time"] if beat else run["created"]
    age = time.time() - last
    if age > (STALE_S if beat else START_GRACE_S):
        return f"no heartbeat for {age:.0f} s"
    return None


def reap(store: Store) -> None:
    """Mark active runs whose worker died as `died` (what `status` and `train` notice)."""
    for run in store.conn.execute("SELECT * FROM runs WHERE status IN ('starting', 'running')").fetchall():
        why = liveness(store, run)
        if why:
            with store.write() as conn:
                conn.execute("UPDATE runs SET status = 'died', ended = ?, message = ? WHERE id = ? AND status IN "
                             "('starting', 'running')", (time.time(), f"worker died: {why}; "
                                                         "`extremeaug project train --resume` continues it", run["id"]))


def start(store: Store, config: dict, resume: bool = False) -> str:
    """Register a run (refused while another one is alive) and start its worker process.

    With `resume`, `config` holds only what may change (device, time budget); the rest is the run's own."""
    from .worker import training_labels

    reap(store)
    with store.write() as conn:
        active = conn.execute("SELECT id, pid FROM runs WHERE status IN ('starting', 'running')").fetchone()
        if active:
            raise ExtremeAugError(f"run {active['id']} is already training in this project (pid {active['pid']}); "
                                  "wait for it, or stop it with `extremeaug project cancel`")
        if resume:
            run = conn.execute("SELECT * FROM runs ORDER BY created DESC LIMIT 1").fetchone()
            if run is None or run["status"] not in RESUMABLE or not (
                    run_dir(store, run["id"]) / "train" / "checkpoint.pt").is_file():
                what = f"the last run ({run['id']}) is {run['status']}" if run else "there is no run yet"
                raise ExtremeAugError(f"--resume: nothing to resume ({what}, or it left no checkpoint)")
            run_id = run["id"]
            merged = {**json.loads(run["config"]), **{k: v for k, v in config.items() if v is not None}}
            conn.execute("UPDATE runs SET status = 'starting', pid = NULL, ended = NULL, message = NULL, "
                         "created = ?, config = ? WHERE id = ?", (time.time(), json.dumps(merged), run_id))
        else:
            labels = training_labels(store)
            n = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] + 1
            run_id = f"r{n:04d}-{time.strftime('%Y%m%d-%H%M%S')}"
            conn.execute("INSERT INTO runs (id, status, created, config, train_labels) VALUES (?, 'starting', ?, ?, ?)",
                         (run_id, time.time(), json.dumps(config), json.dumps([lab["id"] for lab in labels])))
    folder = run_dir(store, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cancel").unlink(missing_ok=True)
    append_event(folder / "progress.jsonl", "phase", phase="queued")
    try:
        process = spawn_worker(store.root, run_id, resume, folder / "worker.log")
    except OSError as e:
        with store.write() as conn:
            conn.execute("UPDATE runs SET status = 'failed', message = ? WHERE id = ?",
                         (f"could not start the worker: {e}", run_id))
        raise ExtremeAugError(f"could not start the training worker: {e}") from None
    with store.write() as conn:
        conn.execute("UPDATE runs SET pid = COALESCE(pid, ?) WHERE id = ?", (process.pid, run_id))
    return run_id


def spawn_worker(root: Path, run_id: str, resume: bool, log: Path) -> subprocess.Popen:
    """The worker outlives the command that started it: its own session, no terminal signals.

    Inside 3D Slicer `sys.executable` is PythonSlicer, and the engine is not installed but shipped in the
    module's folder, which PythonSlicer does not put on its path: the folder holding this package is
    prepended to PYTHONPATH so `-m extremeaug.project.worker` imports this very copy."""
    args = [sys.executable, "-m", "extremeaug.project.worker", str(root), run_id] + (["--resume"] if resume else [])
    kwargs = {"start_new_session": True} if os.name == "posix" else {
        "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p))
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(root), env=env, **kwargs)


def cancel(store: Store, wait_s: float = 120.0) -> dict:
    """Ask the running worker to stop (cancel file + SIGTERM); it checkpoints, so `--resume` can go on."""
    reap(store)
    run = store.conn.execute("SELECT * FROM runs WHERE status IN ('starting', 'running')").fetchone()
    if run is None:
        raise ExtremeAugError("no training is running in this project")
    (run_dir(store, run["id"]) / "cancel").write_text(str(time.time()))
    # a 'starting' worker may still be importing, before its SIGTERM handler exists: the file reaches it
    if run["status"] == "running" and run["pid"] and os.name == "posix":
        try:
            os.kill(run["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        reap(store)
        state = store.conn.execute("SELECT status FROM runs WHERE id = ?", (run["id"],)).fetchone()[0]
        if state not in ACTIVE:
            return {"run": run["id"], "status": state}
        time.sleep(0.5)
    return {"run": run["id"], "status": "stopping"}


def append_event(path: Path, name: str, **fields) -> None:
    """One JSON line; a line cut short by a killed worker is ended first so this one stays readable."""
    with open(path, "a+b") as f:
        cut = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        line = json.dumps({"event": name, "time": round(time.time(), 3), **fields}) + "\n"
        f.write((b"\n" if cut else b"") + line.encode())


class EventReader:
    """Reads the complete JSON lines appended to a progress file since the last call (what a GUI timer or
    `train --wait` polls); a line still being written waits for the next call."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def read(self) -> list:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return _parse_events(complete.decode("utf-8", "replace").splitlines())


def tail_events(path: Path, max_bytes: int = 16384) -> list:
    """The JSON-lines events at the end of a progress file (cheap on long runs)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()[1 if size > max_bytes else 0:]
    except OSError:
        return []
    return _parse_events(lines)


def _parse_events(lines) -> list:
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass   # a line still being written, or cut short by a killed worker
    return events


def latest_run_status(store: Store) -> Optional[dict]:
    """The newest run's status (dead workers reaped first); None before the first run. What a front end
    polls every second: the database row and the run's small files only."""
    reap(store)
    run = store.conn.execute("SELECT * FROM runs ORDER BY created DESC LIMIT 1").fetchone()
    return run_status(store, run) if run is not None else None


def run_status(store: Store, run) -> dict:
    folder = run_dir(store, run["id"])
    last: dict = {}
    for e in tail_events(folder / "progress.jsonl"):
        if e["event"] == "phase" and e["phase"] == "queued":
            last = {}   # a resumed run appends to the same file: report only the current attempt
        last[e["event"]] = e
    beat = heartbeat(store, run["id"])
    info = {"id": run["id"], "status": run["status"], "pid": run["pid"], "message": run["message"],
            "version": run["version"], "phase": beat.get("phase") if beat else None,
            "heartbeat_age_s": round(time.time() - beat["time"], 1) if beat else None,
            "resumable": run["status"] in RESUMABLE and (folder / "train" / "checkpoint.pt").is_file()}
    if "progress" in last:
        p = last["progress"]
        info["progress"] = {k: p.get(k) for k in ("step", "steps_total", "epoch", "loss", "dice", "patches_per_s",
                                                   "eta_s", "time")}
    if "epoch" in last:
        info["last_epoch"] = {k: last["epoch"].get(k) for k in ("epoch", "loss", "train_dice", "elapsed_s")}
    return info


def new_config(store: Store, device: str = "auto", time_budget_min: Optional[float] = None,
               checkpoint_minutes: float = 2.0, **train) -> dict:
    """A run's configuration: the engine's TrainConfig (checked; the project's plane) plus how to run it."""
    from ..train import RunOptions, TrainConfig

    cfg = TrainConfig(plane=store.setting("plane"), **train)
    cfg.check()
    RunOptions(device, time_budget_min, checkpoint_minutes=checkpoint_minutes).check()   # before a worker starts
    return {"train": asdict(cfg), "device": device, "time_budget_min": time_budget_min,
            "checkpoint_minutes": checkpoint_minutes}
