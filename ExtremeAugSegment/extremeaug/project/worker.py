"""The background training worker: `python -m extremeaug.project.worker PROJECT RUN_ID [--resume]`.

It trains on the run's labels with the engine, scores the result on the validation split, and publishes
it as a new model version; all along it rewrites runs/<id>/heartbeat.json so front ends can tell a live
worker from a dead one. The validation split is NOT used to pick the weights (no best-epoch selection),
so a version's validation Dice is an honest held-out score. Like every front end, it uses the project
only through `Project`. A run asked for several GPUs trains in one process per GPU (this module with --rank),
while this process keeps the heartbeat and publishes.
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
from pathlib import Path
from typing import List, Optional

from ..common.config import Device
from ..common.errors import ExtremeAugError
from ..common.files import write_bytes
from ..common.portable import process_alive, spawn
from . import Phase, Project, RunStatus

HEARTBEAT_S = 2.0   # front ends call a run dead after 30 s without one (runs.STALE_S)


class Heartbeat(threading.Thread):
    def __init__(self, project: Project, run_id: str, phase: Phase):
        super().__init__(daemon=True)
        self.project, self.run_id, self.phase, self.done = project, run_id, phase, threading.Event()
        self.path = project.run_folder(run_id) / "heartbeat.json"
        self.identity = _identity(project.root)

    def moved(self) -> bool:
        """Whether the project folder was moved (or replaced) since the worker started: its database is no
        longer the same file at the same path."""
        return _identity(self.project.root) != self.identity

    def stop_if_moved(self, own: Project) -> None:
        """A moved project cannot be followed: every file would land at the old path (recreating it) and the
        new place would see a dead run. Record why, through this thread's own database connection (opened
        before the move, it follows the moved file), and exit at once: the last checkpoint moved with the
        project, so a resume from the new place continues. (On Windows a folder with open files cannot be
        moved at all.)"""
        if self.moved():
            own.end_run(self.run_id, RunStatus.FAILED, "the project folder was moved while this run trained; "
                        "resume it from the project's new place")
            print("the project folder was moved: stopping", file=sys.stderr, flush=True)
            os._exit(3)

    def beat(self) -> None:
        write_bytes(json.dumps({"pid": os.getpid(), "time": time.time(), "phase": self.phase.value}).encode(),
                    self.path)

    def run(self) -> None:
        """Beat until done. A failed write (disk full for a moment, the file held open by a reader beyond the
        retries) is reported and the next beat tries again: a dead heartbeat thread would get a training
        worker marked dead."""
        own = Project.open(self.project.root)   # SQLite connections belong to the thread that opened them
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.stop_if_moved(own)
                self.beat()
            except Exception as e:
                print(f"heartbeat not written ({type(e).__name__}: {e}); retrying", file=sys.stderr, flush=True)

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.beat()
        self.project.set_phase(self.run_id, phase)


def _identity(root: Path) -> Optional[tuple]:
    try:
        st = os.stat(root / "project.db")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _stop_when_gone(worker: int, project: Project, run_id: str) -> None:
    """Have this rank stop, as a cancel would, once the worker that started it is gone (killed, or ended in the
    Task Manager): nobody would publish what the ranks train, and a resume would start a second set of ranks
    beside them, writing the same checkpoints. All ranks agree on the stop file, so all stop. A project folder
    moved under the ranks ends them at once, as it ends their worker (`Heartbeat.stop_if_moved`): their stop,
    checkpoint and model would otherwise recreate the old place, after training unwatched to the end."""
    root, identity, stop_file = project.root, _identity(project.root), project.run_folder(run_id) / "cancel"

    def watch() -> None:
        while True:   # the move first: a moved project's worker is gone too
            if _identity(root) != identity:
                print("the project folder was moved: stopping", file=sys.stderr, flush=True)
                os._exit(3)
            if process_alive(worker) is False:
                break
            time.sleep(HEARTBEAT_S)
        stop_file.write_text(str(time.time()))
    threading.Thread(target=watch, daemon=True).start()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="extremeaug.project.worker")
    p.add_argument("project")
    p.add_argument("run_id")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)   # one of the ranks
    a = p.parse_args(argv)
    project = Project.open(a.project)
    if a.rank:
        _stop_when_gone(os.getppid(), project, a.run_id)
        try:
            train_run(project, a.run_id, a.resume, project.job(a.run_id))
        except ExtremeAugError as e:   # out of memory with its advice, say: the worker makes it the run's message
            write_bytes(str(e).encode(), _rank_error(project.run_folder(a.run_id), int(os.environ["RANK"])))
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    cancelled = threading.Event()
    # before the claim: `cancel` signals only a claimed ('running') run, so the handler is always in place
    signal.signal(signal.SIGTERM, lambda *_: cancelled.set())   # the engine installs its own while training
    if not project.claim(a.run_id, os.getpid()):
        print(f"run {a.run_id} is not waiting for a worker", file=sys.stderr)
        return 2
    folder = project.run_folder(a.run_id)
    heart = Heartbeat(project, a.run_id, Phase.PREPARING)
    heart.beat()
    heart.start()
    try:
        heart.set_phase(Phase.PREPARING)
        version = _train_and_publish(project, a.run_id, a.resume, heart, cancelled)
        if version is None:
            project.end_run(a.run_id, RunStatus.CANCELLED,
                            "cancelled; `extremeaug project train --resume` continues it")
        heart.set_phase(Phase.DONE)
        return 0
    except ExtremeAugError as e:
        heart.stop_if_moved(project)   # ranks that saw the move before this worker did have ended themselves
        project.end_run(a.run_id, RunStatus.FAILED, str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:   # keep the run's record truthful whatever happened
        traceback.print_exc()
        project.end_run(a.run_id, RunStatus.FAILED,
                        f"internal error: {type(e).__name__}: {e} (see {folder / 'worker.log'})")
        return 1
    finally:
        heart.done.set()


def _train_and_publish(project: Project, run_id: str, resume: bool, heart: Heartbeat,
                       cancelled: threading.Event) -> Optional[int]:
    job = project.job(run_id)
    spec = job[0]
    folder = project.run_folder(run_id)
    if cancelled.is_set() or (folder / "cancel").exists():
        return None
    heart.set_phase(Phase.TRAINING)
    status = train_run(project, run_id, resume, job) if spec.gpus == 1 else _train_on_ranks(
        project, run_id, resume, spec, cancelled)
    if status == "stopped":
        return None
    heart.set_phase(Phase.SCORING)
    return project.publish(run_id, Path(folder / "train"), spec.device)


def train_run(project: Project, run_id: str, resume: bool, job) -> str:
    """The run's training (`job`: `Project.job`'s spec and inputs) in this process, or as one of several ranks its
    share of it; its end status."""
    from ..training.dataset import Case
    from ..training.train import train

    spec, inputs, unlabeled = job
    folder = project.run_folder(run_id)
    return train(spec.train, [Case(str(scan), str(label), id=case_id) for case_id, scan, label in inputs], [],
                 folder / "train", spec.to_options(resume=resume, progress_file=str(folder / "progress.jsonl"),
                                                   show_progress=False, stop_file=str(folder / "cancel")),
                 project.structures(), [] if resume else [Case(str(scan), None, id=case_id)
                                                          for case_id, scan in unlabeled]).status


def _train_on_ranks(project: Project, run_id: str, resume: bool, spec, cancelled: threading.Event) -> str:
    """One process per GPU, each running `train_run` as one of torchrun's ranks would (see `distributed` for why
    not through torchrun); a cancel reaches every rank through the stop file, which the ranks agree on (this
    worker writes it too when it is sent SIGTERM itself). A rank that dies takes the others down at once: they
    would otherwise wait in their next collective for the process group's timeout."""
    import torch

    from ..training.distributed import free_port, rank_environment
    from ..training.checkpoint import HISTORY

    folder = project.run_folder(run_id)
    if spec.device != Device.CPU and torch.cuda.device_count() < spec.gpus:
        raise ExtremeAugError(f"--gpus {spec.gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    command = ["extremeaug.project.worker", str(project.root), run_id, "--rank"] + (["--resume"] if resume else [])
    for rank in range(spec.gpus):
        _rank_error(folder, rank).unlink(missing_ok=True)   # an earlier attempt's
    port = free_port()
    ranks = [spawn(command, None, environment=rank_environment(rank, spec.gpus, port, os.environ))
             for rank in range(spec.gpus)]
    try:
        while True:
            codes = [rank.poll() for rank in ranks]
            failed = [f"process {i} exited with code {code}" for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                said = [(i, path.read_text(encoding="utf-8"))
                        for i, path in enumerate(_rank_error(folder, r) for r in range(spec.gpus)) if path.exists()]
                raise ExtremeAugError(f"process {said[0][0]} of {spec.gpus}: {said[0][1]}" if said else
                                      f"training on {spec.gpus} processes failed ({', '.join(failed)}); "
                                      f"see {folder / 'worker.log'}")
            if all(code == 0 for code in codes):
                break
            if cancelled.is_set() and not (folder / "cancel").exists():
                (folder / "cancel").write_text(str(time.time()))
            time.sleep(0.5)
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
            rank.wait()
    return json.loads((folder / "train" / HISTORY).read_text())["metadata"]["status"]


def _rank_error(folder: Path, rank: int) -> Path:
    """Where a rank leaves the one-line error it ended with (its log is the worker's, shared by every rank)."""
    return folder / f"rank{rank}.error"


if __name__ == "__main__":
    sys.exit(main())
