"""Windows semantics forced on Linux: fsync through a writable handle, renames and reads retried over sharing
violations, a heartbeat that survives failed writes, network shares kept out of SQLite's WAL mode, a
cancel that stops a launcher's child too, and a worker that never imports code from the project folder. (What was never run on Windows: README.)"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from extremeaug.common import files, portable
from extremeaug.common.errors import ExtremeAugError
from extremeaug.common.portable import spawn
from extremeaug.data import io
from extremeaug.project import Phase, Project, runs, worker
from extremeaug.project.store import DB_FILE


@pytest.fixture
def windows_fsync(monkeypatch):
    """`os.fsync` as Windows' `_commit` behaves: EBADF on a handle not opened for writing."""
    real = os.fsync

    def commit(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd)
    monkeypatch.setattr(os, "fsync", commit)


@pytest.fixture
def sharing_violations(monkeypatch):
    """`os.replace` failing as Windows does while another process has the target open, `times` times."""
    real, calls = os.replace, {"left": 0, "seen": 0}

    def replace(src, dst):
        calls["seen"] += 1
        if calls["left"] > 0:
            calls["left"] -= 1
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_writes_fsync_through_a_writable_handle_as_windows_requires(tmp_path, windows_fsync):
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    io.write_image(image, tmp_path / "scan.nrrd")
    files.write_bytes(b"{}", tmp_path / "heartbeat.json")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "scan.nrrd"))).tolist() == \
        sitk.GetArrayFromImage(image).tolist()
    assert (tmp_path / "heartbeat.json").read_bytes() == b"{}"


def test_a_rename_over_a_file_another_process_holds_is_retried(tmp_path, sharing_violations):
    sharing_violations["left"] = 3
    files.write_bytes(b"new", tmp_path / "heartbeat.json")
    assert (tmp_path / "heartbeat.json").read_bytes() == b"new" and sharing_violations["seen"] == 4
    sharing_violations["left"] = 100   # held for good: the error comes through, nothing is left behind
    with pytest.raises(ExtremeAugError, match="nothing was written there"):
        files.write_bytes(b"newer", tmp_path / "heartbeat.json")
    assert (tmp_path / "heartbeat.json").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat.json"]


def test_a_heartbeat_the_gui_cannot_read_for_a_moment_does_not_kill_the_run(tmp_path, monkeypatch):
    project = Project.create(tmp_path / "p")
    folder = tmp_path / "p" / "runs" / "r1"
    folder.mkdir(parents=True)
    (folder / "heartbeat.json").write_text(json.dumps({"time": time.time() - 3600}))
    store = project._store
    assert runs.heartbeat(store, "r1")["time"] < time.time() - 3000   # readable: an hour old
    monkeypatch.setattr(runs, "read_bytes", lambda path: (_ for _ in ()).throw(PermissionError(13, "in use")))
    beat = runs.heartbeat(store, "r1")   # being replaced right now: it is being written, so fresh
    assert time.time() - beat["time"] < 5
    project.close()


def test_the_heartbeat_thread_survives_failed_writes(tmp_path, monkeypatch, capfd):
    project = Project.create(tmp_path / "p")
    project.run_folder("r1").mkdir(parents=True)
    failures = {"left": 2}
    real = worker.write_bytes

    def flaky(data, path):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(data, path)
    monkeypatch.setattr(worker, "write_bytes", flaky)
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.05)
    heart = worker.Heartbeat(project, "r1", Phase.TRAINING)
    heart.start()
    deadline = time.monotonic() + 10
    while not (project.run_folder("r1") / "heartbeat.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    heart.done.set()
    heart.join(5)
    assert (project.run_folder("r1") / "heartbeat.json").exists() and failures["left"] == 0
    assert "heartbeat not written (OSError" in capfd.readouterr().err
    project.close()


MOUNTS = """/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/nfs nfs4 rw,relatime 0 0
//nas/share /mnt/nas\\040drive cifs rw 0 0
/dev/sdb1 /mnt/nfs/local ext4 rw 0 0
"""


def test_network_shares_are_recognised_from_the_mount_table_and_unc_paths():
    assert not portable.on_network_share("/home/x", windows=False, mounts=MOUNTS)
    assert portable.on_network_share("/mnt/nfs/projects/p1", windows=False, mounts=MOUNTS)
    assert portable.on_network_share("/mnt/nas drive/p1", windows=False, mounts=MOUNTS)
    assert not portable.on_network_share("/mnt/nfs/local/p1", windows=False, mounts=MOUNTS)   # longest mount wins
    assert not portable.on_network_share("/mnt/nfsother", windows=False, mounts=MOUNTS)
    assert portable.on_network_share(r"\\server\share\project", windows=True)   # a UNC path, Windows branch
    assert not portable.on_network_share(os.getcwd())   # this machine's own disk


def test_a_project_on_a_network_share_uses_a_rollback_journal_not_wal(tmp_path, monkeypatch):
    from extremeaug.project import database
    monkeypatch.setattr(database, "on_network_share", lambda folder: True)
    with Project.create(tmp_path / "share") as project:
        assert project._store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        project.add(_scan(tmp_path), case_id="a")
    assert not (tmp_path / "share" / (DB_FILE + "-wal")).exists()
    monkeypatch.setattr(database, "on_network_share", lambda folder: False)
    with Project.open(tmp_path / "share") as project:
        assert project._store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [c.id for c in project.cases()] == ["a"]


def test_process_liveness_on_this_platform():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert portable.process_alive(child.pid) is True
    finally:
        child.kill()
        child.wait()
    assert portable.process_alive(child.pid) is False and portable.process_alive(None) is None


def _launcher(tmp_path):
    """A stand-in for 3D Slicer's PythonSlicer (CTKAppLauncher): it runs the real interpreter as its own
    child and waits for it, without passing a SIGTERM on. Its child records its pid and computes."""
    pid_file = tmp_path / "python-real.pid"
    launcher = tmp_path / "PythonSlicer"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    launcher.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                        f"sys.exit(subprocess.call([{sys.executable!r}, '-c', {child!r}]))\n")
    launcher.chmod(0o755)
    return launcher, pid_file


def _child_pid(pid_file, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the launcher's child did not start"
        time.sleep(0.1)
    return int(pid_file.read_text())


def _gone(pid, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while portable.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not portable.process_alive(pid)


def test_cancelling_a_segmentation_started_through_a_launcher_stops_the_launchers_child(tmp_path, monkeypatch):
    """Inside Slicer `sys.executable` is a launcher whose child does the work: cancel must stop that
    child too, not only the launcher (which terminate() alone would leave orphaned, still computing)."""
    from extremeaug.project.jobs import SegmentJob
    launcher, pid_file = _launcher(tmp_path)
    monkeypatch.setattr(sys, "executable", str(launcher))
    (tmp_path / "p").mkdir()
    job = SegmentJob(tmp_path / "p", ["case"], None, "cpu")
    child = _child_pid(pid_file)
    job.cancel()
    try:
        assert _gone(child), "the launcher's child still runs after cancel"
        assert job.poll().status.value == "cancelled"
    finally:
        if portable.process_alive(child):
            os.kill(child, 9)


def test_stop_tree_on_windows_ends_the_whole_tree_with_taskkill(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    portable.stop_tree(child, windows=True)
    assert calls == [["taskkill", "/T", "/F", "/PID", str(child.pid)]]
    child.wait()


def test_background_processes_never_import_code_from_the_project_folder(tmp_path):
    """`python -m` puts its working directory first on sys.path: a shared project folder holding an
    argparse.py must not be it."""
    project = Project.create(tmp_path / "p")
    marker = tmp_path / "executed"
    (tmp_path / "p" / "argparse.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(7)\n")
    with open(tmp_path / "worker.log", "wb") as log:
        code = spawn(["extremeaug.project.worker", str(tmp_path / "p"), "r-none"], log).wait(120)
    assert not marker.exists()
    assert code == 2 and "is not waiting for a worker" in (tmp_path / "worker.log").read_text()
    project.close()


def _scan(tmp_path):
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)), str(path))
    return str(path)



def test_compiled_kernels_are_kept_in_the_users_local_cache_folder_on_each_platform(tmp_path):
    """Windows: under LOCALAPPDATA (not the roaming profile); elsewhere XDG_CACHE_HOME, else ~/.cache."""
    windows = portable.user_cache_folder(windows=True, environment={"LOCALAPPDATA": r"C:\Users\ana\AppData\Local"})
    assert str(windows) == r"C:\Users\ana\AppData\Local\ExtremeAugSegment"
    assert portable.user_cache_folder(windows=False, environment={"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "extremeaug")
    assert portable.user_cache_folder(windows=False, environment={}) == Path.home() / ".cache" / "extremeaug"
