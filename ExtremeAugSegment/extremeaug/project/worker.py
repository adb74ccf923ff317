"""The background training worker: `python -m extremeaug.project.worker PROJECT RUN_ID [--resume]`.

It trains on the run's labels with the engine, scores the result on the validation split, and publishes
it as a new model version; all along it rewrites runs/<id>/heartbeat.json so front ends can tell a live
worker from a dead one. The validation split is NOT used to pick the weights (no best-epoch selection),
so a version's validation Dice is an honest held-out score.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import List, Optional

from ..errors import ExtremeAugError
from ..io import write_bytes
from .runs import HEARTBEAT_S, append_event, run_dir
from .store import Store


def training_labels(store: Store) -> list:
    labels = store.human_labels("train")
    if not labels:
        raise ExtremeAugError("no labeled training case: add a scan with --label (or accept a correction) first")
    return labels


class Heartbeat(threading.Thread):
    def __init__(self, path, phase: str):
        super().__init__(daemon=True)
        self.path, self.phase, self.done = path, phase, threading.Event()

    def beat(self) -> None:
        write_bytes(json.dumps({"pid": os.getpid(), "time": time.time(), "phase": self.phase}).encode(), self.path)

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            self.beat()

    def set_phase(self, phase: str, events_path) -> None:
        self.phase = phase
        self.beat()
        append_event(events_path, "phase", phase=phase)


def _finish(store: Store, run_id: str, status: str, message: Optional[str] = None) -> None:
    with store.write() as conn:
        conn.execute("UPDATE runs SET status = ?, ended = ?, message = ? WHERE id = ?",
                     (status, time.time(), message, run_id))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="extremeaug.project.worker")
    p.add_argument("project")
    p.add_argument("run_id")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    store = Store.open(a.project)
    folder = run_dir(store, a.run_id)
    events = folder / "progress.jsonl"
    cancelled = threading.Event()
    # before the claim: `cancel` signals only a claimed ('running') run, so the handler is always in place
    signal.signal(signal.SIGTERM, lambda *_: cancelled.set())   # the engine installs its own while training
    with store.write() as conn:
        claimed = conn.execute("UPDATE runs SET status = 'running', pid = ? WHERE id = ? AND status = 'starting'",
                               (os.getpid(), a.run_id)).rowcount
    if not claimed:
        print(f"run {a.run_id} is not waiting for a worker", file=sys.stderr)
        return 2
    heart = Heartbeat(folder / "heartbeat.json", "preparing")
    heart.beat()
    heart.start()
    try:
        heart.set_phase("preparing", events)
        version = _train_and_publish(store, a.run_id, a.resume, heart, events, cancelled)
        if version is None:
            _finish(store, a.run_id, "cancelled", "cancelled; `extremeaug project train --resume` continues it")
        heart.set_phase("done", events)
        return 0
    except ExtremeAugError as e:
        _finish(store, a.run_id, "failed", str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:   # keep the run's record truthful whatever happened
        traceback.print_exc()
        _finish(store, a.run_id, "failed", f"internal error: {type(e).__name__}: {e} (see {folder / 'worker.log'})")
        return 1
    finally:
        heart.done.set()


def _train_and_publish(store: Store, run_id: str, resume: bool, heart: Heartbeat, events, cancelled) -> Optional[int]:
    from ..dataset import Case
    from ..train import RunOptions, TrainConfig, train
    from .versions import publish

    run = store.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    cfg = json.loads(run["config"])
    cases = []
    for label_id in json.loads(run["train_labels"]):
        label = store.label(label_id)
        cases.append(Case(str(store.path(store.case(label["case_id"])["scan"])), str(store.path(label["path"])),
                          id=label["case_id"]))
    folder = run_dir(store, run_id)
    if cancelled.is_set() or (folder / "cancel").exists():
        return None
    heart.set_phase("training", events)
    result = train(TrainConfig(**cfg["train"]), cases, [], folder / "train",
                   RunOptions(device=cfg["device"], time_budget_min=cfg["time_budget_min"], resume=resume,
                              progress_file=str(events), show_progress=False,
                              checkpoint_minutes=cfg["checkpoint_minutes"], stop_file=str(folder / "cancel")))
    if result.status == "stopped":
        return None
    heart.set_phase("scoring", events)
    return publish(store, run_id, folder / "train", cfg["device"])


if __name__ == "__main__":
    sys.exit(main())
