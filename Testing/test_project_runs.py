"""Background training with real worker processes: one run at a time, kill -9, cancel, resume."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import pytest

from conftest import module_lib_importable, one_line_error, run_cli
from extremeaug.common.events import tail_events
from extremeaug.common.portable import process_alive
from extremeaug.project import Project, RunSpec, TrainConfig
from extremeaug.project.store import Store


def ok(*args, **kw):
    r = run_cli("project", *args, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout


def status(proj) -> dict:
    return json.loads(ok("status", proj, "--json"))


def wait_for(predicate, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def training_step(proj) -> int:
    run = status(proj)["run"]
    return (run.get("progress") or {}).get("step", 0) if run["status"] == "running" else 0


@pytest.mark.slow
def test_kill_cancel_resume_and_one_run_at_a_time(tmp_path, phantoms):
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    both = [subprocess.Popen([sys.executable, "-m", "extremeaug", "project", "train", str(proj), "--augment", "5",
                              "--time-budget", "3", "--checkpoint-minutes", "0.05"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]   # two at the same moment
    outcomes = sorted((p.wait(120), p.stderr.read()) for p in both)
    assert [code for code, _ in outcomes] == [0, 2] and "already training" in outcomes[1][1]
    wait_for(lambda: training_step(proj) >= 5, "the worker to train")
    run = status(proj)["run"]
    assert run["phase"] == "training" and run["heartbeat_age_s"] < 10
    assert {"loss", "dice", "patches_per_s", "eta_s", "epoch"} <= set(run["progress"])

    one_line_error(run_cli("project", "train", proj, "--augment", "5"), "already training")
    with Store.open(proj) as store:
        assert store.run_count() == 1

    wait_for(lambda: (proj / "runs" / run["id"] / "train" / "checkpoint.pt").is_file(), "a checkpoint")
    os.kill(run["pid"], signal.SIGKILL)
    wait_for(lambda: process_alive(run["pid"]) is False, "the worker to die", 30)
    dead = status(proj)["run"]
    assert dead["status"] == "died" and "gone" in dead["message"] and dead["resumable"]
    assert ok("cases", proj).split()[:3] == ["p0", "manual", "train"]   # the project opens as before

    ok("train", proj, "--resume")
    resumed = wait_for(lambda: (status(proj)["run"].get("progress") or {}).get("step", 0) > 0 and
                       status(proj)["run"]["status"] == "running" and status(proj)["run"], "the resumed worker")
    assert resumed["id"] == run["id"] and resumed["pid"] != run["pid"]
    starts = [e for e in tail_events(proj / "runs" / run["id"] / "progress.jsonl", 1 << 20) if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_at_step"] > 0

    out = ok("cancel", proj)
    assert "cancelled" in out
    cancelled = status(proj)["run"]
    assert cancelled["status"] == "cancelled" and cancelled["resumable"]
    wait_for(lambda: process_alive(resumed["pid"]) is False, "the cancelled worker to exit", 30)
    assert status(proj)["versions"] == 0   # a cancelled run is not a model version

    ok("train", proj, "--resume", "--time-budget", "0.1", "--wait")
    final = status(proj)
    assert final["run"]["status"] == "finished" and final["versions"] == 1 and final["active_version"] == 1
    with Project.open(proj) as project:
        assert project.path(project.versions(rescore=False)[0].path).is_file()
        assert not list((proj / "models").glob(".staging-*"))


def test_a_failing_worker_reports_its_error(tmp_path, phantoms):
    proj = tmp_path / "proj"
    ok("init", proj)
    one_line_error(run_cli("project", "train", proj), "no labeled training case")
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    (proj / json.loads(ok("cases", proj, "p0", "--json"))["scan"]).unlink()   # the worker will not find it
    r = run_cli("project", "train", proj, "--wait")
    assert r.returncode == 2 and "failed" in r.stderr and ".nrrd: no such file" in r.stderr
    run = status(proj)["run"]
    assert run["status"] == "failed" and "no such file" in run["message"] and not run["resumable"]
    assert status(proj)["versions"] == 0
    ok("add", proj, phantoms[1][0], "--id", "p1")   # the project stays usable


def test_cancel_right_after_start_cancels_rather_than_kills(tmp_path, phantoms):
    """The worker may still be importing when cancel comes (a GUI button right after Train): it must stop
    cleanly, not die of SIGTERM."""
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    with Project.open(proj) as project:
        project.train(RunSpec(TrainConfig(augment=1, epochs=1, width=4), device="cpu"))
        assert project.cancel(wait_s=0).active   # asked to stop; not stopped yet
    run = wait_for(lambda: (lambda r: r if r["status"] not in ("starting", "running") else None)(status(proj)["run"]),
                   "the run to stop")
    assert run["status"] == "cancelled", run
    assert status(proj)["versions"] == 0


def test_the_worker_imports_the_engine_copy_that_started_it(tmp_path):
    """Inside Slicer the engine is not installed but shipped in the module's folder: the worker must import
    that copy (PYTHONPATH), not whatever else the interpreter finds."""
    import shutil
    from pathlib import Path

    import extremeaug
    copy = tmp_path / "module"
    shutil.copytree(Path(extremeaug.__file__).parent, copy / "extremeaug",
                    ignore=shutil.ignore_patterns("__pycache__"))
    log = tmp_path / "worker.log"
    code = (f"import sys; sys.path.insert(0, {str(copy)!r}); from pathlib import Path; "
            "from extremeaug.project import runs; "
            f"assert runs.__file__.startswith({str(copy)!r}); "
            f"sys.exit(runs.spawn_worker(Path({str(tmp_path)!r}), 'r1', False, Path({str(log)!r})).wait(120))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert result.returncode != 0, result.stderr   # the folder is not a project: the worker says so ...
    assert "is not an extremeaug project" in log.read_text()
    assert str(copy / "extremeaug" / "project" / "worker.py") in log.read_text()   # ... from the copy


def test_a_stale_heartbeat_marks_the_run_dead(tmp_path):
    """A worker that hangs (or lives on another machine) is judged by its heartbeat alone."""
    from extremeaug.project.runs import STALE_S

    with Store.create(tmp_path / "proj") as store:
        with store.write():
            store.insert_run("r1", {}, [])
            store.claim_run("r1", 0)   # pid 0: nothing to ask the OS about
            store.conn.execute("UPDATE runs SET created = ?, pid = NULL", (time.time() - 600,))
    with Project.open(tmp_path / "proj") as project:
        folder = project.run_folder("r1")
        folder.mkdir(parents=True)
        (folder / "heartbeat.json").write_text(json.dumps({"pid": 0, "time": time.time(), "phase": "training"}))
        assert project.status().run.status.value == "running"
        (folder / "heartbeat.json").write_text(json.dumps({"pid": 0, "time": time.time() - STALE_S - 5,
                                                           "phase": "training"}))
        run = project.status().run
        assert run.status.value == "died" and "no heartbeat for" in run.message


def test_a_run_that_ran_out_of_memory_says_so_while_it_trains_again(tmp_path):
    """The engine's `retry` event (Testing/test_memory.py makes a real one) reaches status, the CLI and the panel."""
    from extremeaug.common.events import append_event

    module_lib_importable()
    from ExtremeAugSegmentLib import Tables

    with Store.create(tmp_path / "proj") as store:
        with store.write():
            store.insert_run("r1", {}, [])
            store.claim_run("r1", 0)   # pid 0: judged by its heartbeat alone
    with Project.open(tmp_path / "proj") as project:
        folder = project.run_folder("r1")
        folder.mkdir(parents=True)
        (folder / "heartbeat.json").write_text(json.dumps({"pid": 0, "time": time.time(), "phase": "training"}))
        for event, fields in (("start", {"resumed_at_step": 0}), ("retry", {"batch_size": 128, "resume": False}),
                              ("start", {"resumed_at_step": 0})):
            append_event(folder / "progress.jsonl", event, **fields)
        run = project.status().run
        assert run.status.value == "running" and run.message == "out of memory: training again at batch size 128"
        assert Tables.runText(run) == "training... · out of memory: training again at batch size 128"
    line = ok("status", tmp_path / "proj")
    assert "running (training, heartbeat" in line and ": out of memory: training again at batch size 128" in line


PUBLISH_CRASH = """
import contextlib, os, sys
from pathlib import Path
from extremeaug.project import Project
from extremeaug.project.store import Store

@contextlib.contextmanager
def write(self):   # the model folder is renamed into place, then the process dies before COMMIT
    self.conn.execute('BEGIN IMMEDIATE')
    yield
    os._exit(9)

project = Project.open(sys.argv[1])
Store.write = write
project.publish('r1', Path(sys.argv[2]), 'cpu')
"""


def test_a_crash_while_publishing_leaves_no_version(tmp_path, phantoms):
    import subprocess as sp

    from extremeaug.training.dataset import Case
    from extremeaug.training.train import RunOptions, train

    model = tmp_path / "model"
    train(TrainConfig(width=4, augment=1, epochs=1), [Case(str(phantoms[0][0]), str(phantoms[0][1]))], [], model,
          RunOptions(device="cpu", show_progress=False, max_steps=2))
    with Store.create(tmp_path / "proj") as store:
        with store.write():
            store.insert_run("r1", {}, [])
    r = sp.run([sys.executable, "-c", PUBLISH_CRASH, str(tmp_path / "proj"), str(model)], capture_output=True,
               text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    with Project.open(tmp_path / "proj") as project:
        assert project.versions() == [] and project.status().active_version is None
        assert (tmp_path / "proj" / "models" / "v1" / "model.onnx").is_file()   # renamed, never registered
        assert project.publish("r1", model, "cpu") == 1
        assert [v.version for v in project.versions()] == [1]
        assert len(list((tmp_path / "proj" / "models").glob(".unregistered-v1-*"))) == 1
        assert project.run("r1").status.value == "finished"


def test_a_worker_whose_project_folder_moves_stops_and_says_so(tmp_path, phantoms):
    """Moved while training: the worker must not keep writing at the old path (recreating it), and the
    project at its new place must show why the run ended instead of a dead worker."""
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    ok("train", proj, "--augment", "20", "--epochs", "3", "--width", "4", "--device", "cpu")
    wait_for(lambda: training_step(proj) > 0, "training to begin")
    moved = tmp_path / "moved"
    proj.rename(moved)
    run = wait_for(lambda: (lambda r: r if r["status"] != "running" else None)(status(moved)["run"]),
                   "the worker to notice", 60)
    assert run["status"] == "failed" and "moved" in run["message"], run
    time.sleep(3)   # longer than a heartbeat: nothing comes back at the old place
    assert not proj.exists()


NO_LIBUV = """
import sys
import torch.distributed as dist

class TCPStore(dist.TCPStore):   # as torch's Windows wheels are built: without libuv
    def __init__(self, *args, use_libuv=True, **kw):
        if use_libuv:
            raise RuntimeError("use_libuv was requested but PyTorch was built without libuv support")
        super().__init__(*args, use_libuv=False, **kw)

dist.TCPStore = sys.modules["torch.distributed.rendezvous"].TCPStore = TCPStore
"""


def _rank_pid(proj, rank: int) -> Optional[int]:
    """The pid of the project's training process of rank `rank` (None: there is none), found through /proc."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"--rank" in command and str(proj).encode() in command and f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_a_run_on_two_processes_meets_without_libuv_and_survives_cancel_dead_processes_and_a_moved_project(
        tmp_path, phantoms):
    """`project train --gpus 2` (CPU processes here), on a torch whose TCPStore refuses libuv as its Windows
    wheels do (torchrun cannot start there): the cancel file stops every rank; a rank killed as it starts takes
    the other down and fails the run at once (not after rank 0's 30-minute wait for it), naming it; ranks whose
    worker is killed stop with a checkpoint; ranks under a moved project folder end without recreating it; the run
    resumed from the new place finishes, and rank 0 alone reports and writes the model the worker publishes."""
    (tmp_path / "no_libuv").mkdir()
    (tmp_path / "no_libuv" / "sitecustomize.py").write_text(NO_LIBUV)
    windows_torch = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(tmp_path / "no_libuv"), os.environ.get("PYTHONPATH")) if p))
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    one_line_error(run_cli("project", "train", proj, "--gpus", "0"), "--gpus must be at least 1")
    one_line_error(run_cli("project", "train", proj, "--gpus", "2", "--batch-size", "1"),   # before a worker starts
                   "--batch-size 1 is the batch over all 2 processes")
    ok("train", proj, "--gpus", "2", "--device", "cpu", "--augment", "1", "--epochs", "300", "--width", "4",
       "--batch-size", "32", env=windows_torch)
    wait_for(lambda: training_step(proj) > 0, "the ranks to train")
    r = run_cli("project", "cancel", proj)
    assert r.returncode == 0, r.stderr
    stopped = lambda: (lambda r: r if r["status"] not in ("starting", "running") else None)(status(proj)["run"])
    run = wait_for(stopped, "the run to stop")
    assert run["status"] == "cancelled" and run["resumable"], run

    ok("train", proj, "--resume", env=windows_torch)
    os.kill(wait_for(lambda: _rank_pid(proj, 1), "rank 1 to start", 60), signal.SIGKILL)   # before it joins rank 0
    run = wait_for(stopped, "the run to fail", 30)   # not after rank 0's 30-minute wait for it
    assert run["status"] == "failed" and "process 1 exited with code -9" in run["message"], run
    assert _rank_pid(proj, 0) is None

    ok("train", proj, "--resume", env=windows_torch)
    wait_for(lambda: training_step(proj) > 0, "the ranks to train again")
    os.kill(status(proj)["run"]["pid"], signal.SIGKILL)   # the worker
    wait_for(lambda: _rank_pid(proj, 0) is None and _rank_pid(proj, 1) is None, "the ranks to stop", 60)
    run = status(proj)["run"]
    assert run["status"] == "died" and run["resumable"], run

    ok("train", proj, "--resume", env=windows_torch)
    wait_for(lambda: training_step(proj) > 0, "the ranks to train once more")
    moved = tmp_path / "moved"
    proj.rename(moved)
    wait_for(lambda: _rank_pid(proj, 0) is None and _rank_pid(proj, 1) is None, "the ranks to stop", 60)
    time.sleep(3)   # longer than a heartbeat: nothing comes back at the old place
    assert not proj.exists()
    run = status(moved)["run"]
    assert run["status"] == "failed" and "moved" in run["message"], run

    one_line_error(run_cli("project", "train", moved, "--resume", "--width", "8", "--gpus", "2"),   # not ignored
                   "own settings: --width 8 (the run's: 4) cannot change (only --batch-size, --device and")
    # a smaller batch is how a run goes on after out of memory (which the ranks do not retry on their own); the
    # run's own command again is no change
    r = run_cli("project", "train", moved, "--resume", "--time-budget", "0.2", "--batch-size", "16", "--gpus", "2",
                "--width", "4", "--wait", env=windows_torch)
    final = status(moved)["run"]
    assert r.returncode == 0 and final["status"] == "finished" and status(moved)["versions"] == 1, r.stderr
    events = list(tail_events(moved / "runs" / final["id"] / "progress.jsonl"))
    starts = [e for e in events if e["event"] == "start"]
    assert starts[-1]["resumed_at_step"] > 0 and all(e["processes"] == 2 for e in starts)
    assert [e["batch_size"] for e in starts] == [32] * (len(starts) - 1) + [16]
    # the attempt killed as it started never started; the moved one ended without a word
    assert [e["event"] for e in events].count("end") == len(starts) - 1


def test_a_failing_rank_gives_the_run_its_own_one_line_error(tmp_path, phantoms):
    """What a rank ends with (out of memory and its advice, a scan damaged since it was added) is the run's message,
    as it is for a run on one process, not the ranks' exit codes and a log to read."""
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    scan = next((proj / "cases" / "p0").glob("scan-*"))
    with open(scan, "r+b") as f:
        f.truncate(scan.stat().st_size // 2)
    r = run_cli("project", "train", proj, "--gpus", "2", "--device", "cpu", "--augment", "1", "--epochs", "1",
                "--width", "4", "--wait")
    run = status(proj)["run"]
    assert r.returncode != 0 and run["status"] == "failed", r.stderr
    said = f": {scan}: not an image SimpleITK can read (NIfTI, NRRD, MHA, DICOM)"
    assert run["message"] in (f"process 0 of 2{said}", f"process 1 of 2{said}"), run   # both fail; the first seen
    assert "Traceback" not in (proj / "runs" / run["id"] / "worker.log").read_text()


@pytest.mark.skipif(__import__("torch").cuda.device_count() >= 2, reason="this machine has the GPUs")
def test_a_run_asking_for_more_gpus_than_the_machine_has_fails_with_the_count(tmp_path, phantoms):
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    r = run_cli("project", "train", proj, "--gpus", "2", "--augment", "1", "--epochs", "1", "--width", "4", "--wait")
    run = status(proj)["run"]
    assert r.returncode != 0 and run["status"] == "failed", r.stderr
    assert "--gpus 2: this machine has" in run["message"] and "CUDA device(s)" in run["message"]


def test_project_train_keeps_its_compile_choice_in_the_run_spec_and_hands_it_to_the_engine(tmp_path):
    """A resumed run, and each process of a --gpus run, reads its spec back from the database: the choice must
    survive the round trip (and a spec stored before the setting existed reads as the default)."""
    from extremeaug.cli.main import parser
    from extremeaug.cli.project import run_spec
    from extremeaug.project import Compile

    spec = run_spec(parser().parse_args(["project", "train", str(tmp_path), "--compile", "on", "--gpus", "2"]))
    assert spec.compile == Compile.ON and spec.gpus == 2
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.compile == Compile.ON and again.to_options().compile == Compile.ON
    old = {k: v for k, v in spec.to_dict().items() if k != "compile"}
    assert RunSpec.from_dict(old).compile == Compile.AUTO
    with pytest.raises(SystemExit):
        parser().parse_args(["project", "train", str(tmp_path), "--compile", "yes"])


def test_project_train_keeps_its_slice_grid_in_the_run_spec_and_an_older_spec_reads_as_the_papers(tmp_path):
    from extremeaug.cli.main import parser
    from extremeaug.cli.project import run_spec
    from extremeaug.common.config import Loss, SliceGrid

    spec = run_spec(parser().parse_args(["project", "train", str(tmp_path)]))
    assert spec.train.slice_grid == SliceGrid.FIT and spec.train.loss == Loss.TVERSKY   # today's defaults
    spec = run_spec(parser().parse_args(["project", "train", str(tmp_path), "--slice-grid", "paper"]))
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert spec.train.slice_grid == again.train.slice_grid == SliceGrid.PAPER
    old = run_spec(parser().parse_args(["project", "train", str(tmp_path)])).to_dict()
    del old["train"]["slice_grid"]   # a run queued before the setting existed trained on the paper's grid
    assert RunSpec.from_dict(old).train.slice_grid == SliceGrid.PAPER
    with pytest.raises(SystemExit):
        parser().parse_args(["project", "train", str(tmp_path), "--slice-grid", "native"])


@pytest.mark.slow
def test_a_run_with_the_unlabeled_cases_names_them_and_stores_no_label_for_them(tmp_path, phantoms, monkeypatch):
    """`project train --unlabeled`: the worker hands the cases without a human label to the engine, which
    pseudo-labels them in rounds; the rounds are in the run's events and the version names the cases it learned
    from, and no case gains a label (pseudo-labels are training material only)."""
    from extremeaug.common.errors import ExtremeAugError

    with Project.create(tmp_path / "proj") as project:
        project.add(str(phantoms[0][0]), str(phantoms[0][1]), "p0")
        spec = RunSpec(TrainConfig(augment=2, epochs=3, width=4, loss="dice+bce"), device="cpu", unlabeled=True)
        with pytest.raises(ExtremeAugError, match="no unlabeled case"):
            project.train(spec)
        for i in (1, 2):
            project.add(str(phantoms[i][0]), case_id=f"p{i}")
        labels_before = {c: project.case(c).history for c in ("p0", "p1", "p2")}
        run_id = project.train(spec)
        wait_for(lambda: not project.run(run_id).active, "the run", timeout=600)
        assert project.run(run_id).version == 1, project.run(run_id).message
        assert [case for case, _ in project.job(run_id)[2]] == ["p1", "p2"]
        rounds = [e for e in project.events(run_id).read() if e["event"] == "pseudo"]
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert all([row["name"] for row in r["scans"]] == ["p1", "p2"] for r in rounds)
        used = [row["name"] for row in rounds[-1]["scans"] if row["used"]]
        version = project.versions(rescore=False)[-1]
        assert version.unlabeled_scans == len(used)
        module_lib_importable()
        from ExtremeAugSegmentLib import Tables   # what the panel's and the page's versions table show
        assert Tables.scansText(version) == "1" + (f" + {len(used)} unlabeled" if used else "")
        assert Tables.scansText(dataclasses.replace(version, unlabeled_scans=2)) == "1 + 2 unlabeled"
        assert {c: project.case(c).history for c in ("p0", "p1", "p2")} == labels_before
        assert [c.state.value for c in project.cases()] == ["manual", "unlabeled", "unlabeled"]
        monkeypatch.setattr(Project, "UNLABELED_PER_RUN", 1)
        assert [case for case, _ in project.job(run_id)[2]] == ["p1"]   # at most that many, spread over the order
