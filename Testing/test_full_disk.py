"""Failing disks and file systems, for real: a tmpfs filled to a chosen level and read-only bind mounts (the
`mount` fixture; skipped where this machine refuses to mount). Whatever the disk does, a command that says it
stored something has stored it, and one that could not says why in one line, exit 2, with nothing renamed into
place and no record committed; a full disk is never called a damaged project."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import MODULE_DIR, one_line_error, run_cli
from extremeaug.project import Project

HOLDER = """
import sys, time
from extremeaug.project import Project
project = Project.open(sys.argv[1])
project.status()
print("open", flush=True)
time.sleep(120)
"""
READER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM labels").fetchone()   # a read transaction: no checkpoint passes it
print("reading", flush=True)
time.sleep(120)
"""


def scan_array(dtype=np.int16, shape=(6, 20, 24), seed=0):
    return (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)


def write(folder, name, array):
    path = folder / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def box_mask(shape=(6, 20, 24)):
    mask = np.zeros(shape, np.uint8)
    mask[2:4, 5:12, 6:14] = 1
    return mask


@pytest.fixture
def holding():
    """A front end holding a project open in another process (its connection keeps -wal and -shm there)."""
    processes = []

    def hold(folder, script=HOLDER, target=None):
        p = subprocess.Popen([sys.executable, "-c", script, str(target or folder)], stdout=subprocess.PIPE, text=True,
                             cwd=str(MODULE_DIR))
        processes.append(p)
        assert p.stdout.readline().strip() in ("open", "reading")
        return p

    yield hold
    for p in processes:
        p.kill()
        p.wait()


def labels_on_disk(project_dir, case_id):
    return sorted((project_dir / "cases" / case_id / "labels").glob("*.nrrd"))


def test_accept_on_a_full_disk_while_a_front_end_holds_the_project_open_stores_nothing_and_says_so(
        tmp_path, mount, holding):
    disk = mount.tiny_disk(4096)
    shape = (12, 48, 48)
    scan = write(tmp_path, "scan.nii.gz", scan_array(shape=shape))
    assert run_cli("project", "add", disk / "p", scan, "--label", write(tmp_path, "m.nii.gz", box_mask(shape)),
                   "--id", "a").returncode == 2   # no project yet: init first
    assert run_cli("project", "init", disk / "p").returncode == 0
    assert run_cli("project", "add", disk / "p", scan, "--label", write(tmp_path, "m.nii.gz", box_mask(shape)),
                   "--id", "a").returncode == 0
    corrected = box_mask(shape)
    corrected[6:9, 20:40, 20:40] = 1
    corrected_file = write(tmp_path, "corrected.nii.gz", corrected)
    holding(disk / "p")
    before = labels_on_disk(disk / "p", "a")
    filler = mount.fill(disk)
    result = run_cli("project", "accept", disk / "p", "a", "--label", corrected_file)
    one_line_error(result, "the disk is full")
    assert "stored" not in result.stdout and "damaged" not in result.stderr
    assert labels_on_disk(disk / "p", "a") == before   # no new (empty) label file took a name
    assert not [p for p in (disk / "p" / "cases" / "a" / "labels").iterdir() if p.name.startswith(".")]
    filler.unlink()
    history = json.loads(run_cli("project", "cases", disk / "p", "a", "--json").stdout)["history"]
    assert [h["kind"] for h in history] == ["manual"]
    verified = run_cli("project", "verify", disk / "p")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert run_cli("project", "accept", disk / "p", "a", "--label", corrected_file).returncode == 0  # space again


def test_segment_out_onto_a_full_disk_writes_nothing_and_exits_2(tmp_path, mount, random_model, phantoms):
    disk = mount.tiny_disk(1024)
    filler = mount.fill(disk)
    for out in ("labels.nii.gz", "labels.nrrd"):
        result = run_cli("segment", "--model", random_model, "--image", phantoms[1][0], "--out", disk / out,
                         "--min-component-mm3", "0")
        one_line_error(result, f"{disk / out}", "the disk is full")
        assert "wrote" not in result.stdout
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]   # neither output nor a temporary file
    filler.unlink()
    assert run_cli("segment", "--model", random_model, "--image", phantoms[1][0], "--out",
                   disk / "labels.nrrd").returncode == 0
    assert sitk.ReadImage(str(disk / "labels.nrrd")).GetSize() == sitk.ReadImage(str(phantoms[1][0])).GetSize()


def test_status_and_add_on_a_nearly_full_disk_name_the_disk_not_a_damaged_database(tmp_path, mount):
    disk = mount.tiny_disk(1024)
    with Project.create(disk / "p") as project:
        project.add(str(write(tmp_path, "a.nii.gz", scan_array())), case_id="a")
    for leave in (0, 8 << 10, 16 << 10):
        filler = mount.fill(disk, leave)
        status = run_cli("project", "status", disk / "p", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["cases"] == 1, status.stderr
        result = run_cli("project", "add", disk / "p", write(tmp_path, f"b{leave}.nii.gz", scan_array(seed=leave + 1)))
        one_line_error(result, "the disk is full")
        assert "damaged" not in result.stderr and "backup" not in result.stderr
        filler.unlink()
    with Project.open(disk / "p") as project:
        assert [c.id for c in project.cases()] == ["a"]
    assert sorted(p.name for p in (disk / "p" / "cases").iterdir()) == ["a"]   # no half case, no empty folder


def test_a_full_disk_during_add_is_one_line_and_leaves_no_folder_behind(tmp_path, mount, holding):
    """Free space grows page by page until the add fits: on the way the scan, then the label, then the database
    commit (the WAL cannot grow) run out of room; each refusal leaves no case and no (empty) folder."""
    disk = mount.tiny_disk(2048)
    assert run_cli("project", "init", disk / "p").returncode == 0
    shape = (12, 48, 48)
    scan = write(tmp_path, "s.nii.gz", scan_array(shape=shape, seed=5))
    label = write(tmp_path, "m.nii.gz", box_mask(shape))
    holding(disk / "p")
    refused = []
    for pages in range(0, 64, 2):
        filler = mount.fill(disk, leave=pages * 4096)
        result = run_cli("project", "add", disk / "p", scan, "--label", label, "--id", "x")
        filler.unlink()
        if result.returncode == 0:
            break
        one_line_error(result, "the disk is full")
        refused.append(result.stderr)
        assert not (disk / "p" / "cases").exists() or not any((disk / "p" / "cases").iterdir()), pages
    assert result.returncode == 0 and any("project.db" in r for r in refused), refused   # the commit was refused too
    with Project.open(disk / "p") as project:
        assert [c.id for c in project.cases()] == ["x"]


def test_the_losing_side_of_two_adds_of_one_scan_leaves_no_folder(tmp_path, monkeypatch):
    """Two front ends add the same scan at once: the second finds it taken under the write lock and leaves
    nothing behind, not even the empty labels/ folder its label was written in."""
    from extremeaug.common.errors import ExtremeAugError
    from extremeaug.project.store import Store
    scan, mask = write(tmp_path, "a.nii.gz", scan_array()), write(tmp_path, "m.nii.gz", box_mask())
    with Project.create(tmp_path / "p") as project:
        project.add(str(scan), case_id="first")
        real, calls = Store.case_with_scan, []

        def racing(store, digest):   # the first look (before writing) misses the other add; the second sees it
            calls.append(digest)
            return None if len(calls) == 1 else real(store, digest)
        monkeypatch.setattr(Store, "case_with_scan", racing)
        with pytest.raises(ExtremeAugError, match="just added as case 'first'"):
            project.add(str(scan), str(mask), case_id="second")
    assert sorted(p.name for p in (tmp_path / "p" / "cases").iterdir()) == ["first"]


def test_a_read_only_copy_with_a_pending_wal_shows_the_newest_label(tmp_path, mount, holding):
    scan, mask = write(tmp_path, "a.nii.gz", scan_array()), write(tmp_path, "m.nii.gz", box_mask())
    with Project.create(tmp_path / "p") as project:
        project.add(str(scan), case_id="a")
    holding(tmp_path / "p", READER, tmp_path / "p" / "project.db")   # keeps the next commit in the WAL
    assert run_cli("project", "accept", tmp_path / "p", "a", "--label", mask).returncode == 0
    assert (tmp_path / "p" / "project.db-wal").stat().st_size > 0
    shutil.copytree(tmp_path / "p", tmp_path / "copy")    # copied as it is, its WAL with it
    plain = sqlite3.connect((tmp_path / "copy" / "project.db").as_uri() + "?mode=ro&immutable=1", uri=True)
    assert plain.execute("SELECT count(*) FROM labels").fetchone()[0] == 0   # what an immutable reader sees
    plain.close()
    view = mount.read_only(tmp_path / "copy")
    case = json.loads(run_cli("project", "cases", view, "a", "--json").stdout)
    assert case["state"] == "manual" and [h["kind"] for h in case["history"]] == ["manual"]
    verified = run_cli("project", "verify", view)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    one_line_error(run_cli("project", "accept", view, "a", "--label", mask), "cannot be written")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(
        p.name for p in (tmp_path / "p").iterdir())   # the view wrote nothing into the project


def test_a_read_only_project_is_read_and_refuses_writes_without_calling_itself_damaged(tmp_path, mount):
    scan = write(tmp_path, "a.nii.gz", scan_array())
    with Project.create(tmp_path / "p") as project:
        project.add(str(scan), case_id="a")
    folder = mount.read_only(tmp_path / "p")
    status = run_cli("project", "status", folder, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["cases"] == 1, status.stderr
    assert run_cli("project", "cases", folder).returncode == 0
    other = write(tmp_path, "b.nii.gz", scan_array(shape=(6, 20, 25)))
    result = run_cli("project", "add", folder, other)
    one_line_error(result, "read-only")
    assert "damaged" not in result.stderr


def test_a_read_only_file_system_is_named_in_one_line(tmp_path, mount):
    scan = write(tmp_path, "v.nii.gz", scan_array())
    folder = mount.read_only(tmp_path)   # the same folder, seen through a read-only mount
    one_line_error(run_cli("project", "init", folder / "new"), "read-only")
    one_line_error(run_cli("train", "--image", scan, "--label", scan, "--out", folder / "m"), "read-only")
    one_line_error(run_cli("segment", "--model", scan, "--image", scan, "--out", folder / "x.nrrd"), "cannot write")


def test_an_older_project_seen_read_only_is_migrated_in_a_private_copy(tmp_path, mount):
    with Project.create(tmp_path / "p") as project:
        project.add(str(write(tmp_path, "a.nii.gz", scan_array())), case_id="a")
    conn = sqlite3.connect(str(tmp_path / "p" / "project.db"))
    conn.execute("ALTER TABLE labels DROP COLUMN accepted_by")   # as a project of schema 5 had it
    conn.execute("PRAGMA user_version = 4")   # the step-5 table rebuild is idempotent on the same columns
    conn.commit()
    conn.close()
    folder = mount.read_only(tmp_path / "p")
    status = run_cli("project", "status", folder, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["cases"] == 1, status.stderr
    assert sqlite3.connect(str(tmp_path / "p" / "project.db")).execute("PRAGMA user_version").fetchone()[0] == 4


def test_project_db_that_is_a_folder_or_empty_is_named_for_what_it_is_and_left_alone(tmp_path):
    (tmp_path / "folder" / "project.db").mkdir(parents=True)
    one_line_error(run_cli("project", "status", tmp_path / "folder"), "is a folder, not a project database")
    one_line_error(run_cli("project", "init", tmp_path / "folder"), "is a folder, not a project database")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "project.db").write_bytes(b"")
    for command in ("status", "verify", "cases"):
        one_line_error(run_cli("project", command, tmp_path / "empty"), "is empty (0 bytes)")
    assert (tmp_path / "empty" / "project.db").stat().st_size == 0
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["project.db"]


def test_demo_never_replaces_files_it_did_not_write(tmp_path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "notes.txt").write_text("a clinician's notes")
    one_line_error(run_cli("demo", "--workdir", tmp_path / "mine", "--time-budget", "0.01"),
                   "holds files the demo did not write")
    assert (tmp_path / "mine" / "model" / "notes.txt").read_text() == "a clinician's notes"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["model"]
    from extremeaug.experiments.demo import MARKER, _own_workdir
    own = _own_workdir(tmp_path / "new")   # a new folder becomes the demo's; its output there may be replaced
    (own / "model").mkdir()
    assert _own_workdir(own) == own and (own / MARKER).is_file()


def test_an_interrupted_project_segment_says_which_predictions_it_stored(tmp_path, random_model, phantoms):
    """SIGINT after the first of three cases: the message names what was stored instead of 'nothing written'."""
    import os
    import signal

    from extremeaug.project.store import Store
    with Project.create(tmp_path / "p") as project:
        for i in range(3):
            project.add(str(phantoms[i][0]), case_id=f"c{i}")
    with Store.open(tmp_path / "p") as store:   # the random model as version 1, as a finished run publishes it
        (tmp_path / "p" / "models" / "v1").mkdir(parents=True)
        shutil.copy(random_model, tmp_path / "p" / "models" / "v1" / "model.onnx")
        with store.write():
            store.insert_run("r1", {}, [])
            store.insert_version(1, "r1", "models/v1/model.onnx", [], [], {})
            store.set_setting("active_version", 1)
    p = subprocess.Popen([sys.executable, "-m", "extremeaug", "project", "segment", str(tmp_path / "p"), "c0", "c1",
                          "c2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    assert first.startswith("c0:"), first + p.stderr.read()
    os.kill(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "nothing written" not in err, err
    stored = [c.id for c in Project.open(tmp_path / "p").cases() if c.state.value == "auto"]
    assert f"after storing the predictions of {len(stored)} of 3 case(s)" in err and "c0" in err, err


def test_accept_without_the_prediction_file_stores_the_correction_with_unknown_effort(tmp_path):
    from extremeaug.project import LabelKind
    from extremeaug.project.store import Store
    scan, mask = write(tmp_path, "a.nii.gz", scan_array()), write(tmp_path, "m.nii.gz", box_mask())
    with Project.create(tmp_path / "p") as project:
        project.add(str(scan), case_id="a")
    with Store.open(tmp_path / "p") as store:   # a prediction whose file is gone (deleted; or empty after a full disk)
        with store.write():
            auto = store.insert_label("a", LabelKind.AUTO, "cases/a/auto/v1-mask.nrrd", "-", 10, model_version=1)
    (tmp_path / "p" / "cases" / "a" / "auto").mkdir()
    for content in (None, b""):
        if content is not None:
            (tmp_path / "p" / "cases" / "a" / "auto" / "v1-mask.nrrd").write_bytes(content)
        result = run_cli("project", "accept", tmp_path / "p", "a", "--label", mask)
        assert result.returncode == 0, result.stderr
        assert "corrected v1: what it changed is unknown" in result.stdout
    history = json.loads(run_cli("project", "cases", tmp_path / "p", "a", "--json").stdout)["history"]
    assert [h["kind"] for h in history] == ["auto", "corrected", "corrected"]
    assert history[-1]["correction"] == {"auto_label": auto, "model_version": 1, "voxels_added": None,
                                         "voxels_removed": None, "dice": None, "seconds": None}
    models = run_cli("project", "models", tmp_path / "p", "--no-rescore")
    assert "Traceback" not in models.stderr


def test_verify_reads_every_label_back(tmp_path):
    """A label file whose recorded checksum is that of what is on the disk (an empty file a full disk left, as
    an older release recorded it) is still named: verify reads each label as an image."""
    from extremeaug.project.cases import sha256
    from extremeaug.project.store import Store
    with Project.create(tmp_path / "p") as project:
        project.add(str(write(tmp_path, "a.nii.gz", scan_array())), str(write(tmp_path, "m.nii.gz", box_mask())),
                    case_id="a")
    path = next((tmp_path / "p" / "cases" / "a" / "labels").glob("*.nrrd"))
    path.write_bytes(b"")
    with Store.open(tmp_path / "p") as store, store.write():
        store.conn.execute("UPDATE labels SET sha256 = ?", (sha256(path),))
    result = run_cli("project", "verify", tmp_path / "p")
    assert result.returncode == 2 and "is not a readable image (0 bytes)" in result.stdout + result.stderr
