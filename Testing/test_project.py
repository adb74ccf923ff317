"""The labeling project: the bootstrap loop, label history, the fixed split, crash safety, bad input."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image, one_line_error, run_cli
from extremeaug.project import Project, Split
from extremeaug.project.store import Store
from extremeaug.project.suggest import uncertainty


# fixed work, whatever the load. Validation Dice 0.80 and 0.83 on CPU-2; the bootstrap test takes 74 s with it,
# 101 s with batch 16 at 3x
QUICK_TRAINING = ("--epochs", "1", "--augment", "2", "--batch-size", "8")


def ok(*args, timeout=600):
    r = run_cli("project", *args, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def project_json(*args):
    return json.loads(ok(*args, "--json"))


def snapshot(root):
    """Every file (path, size, content hash) and the database's full dump: 'nothing changed' made exact."""
    import hashlib
    files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in root.rglob("*") if p.is_file() and not p.name.startswith("project.db")}
    conn = sqlite3.connect(str(root / "project.db"))
    dump = list(conn.iterdump())
    conn.close()
    return files, dump


@pytest.mark.slow
def test_the_bootstrap_loop_on_phantoms(tmp_path, phantoms):
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    for i in (1, 2, 3):
        ok("add", proj, phantoms[i][0], "--id", f"p{i}")
    assert project_json("status", proj)["states"] == {"unlabeled": 3, "auto": 0, "manual": 1, "corrected": 0}

    out = ok("train", proj, *QUICK_TRAINING, "--wait")
    assert "model version 1 is now active" in out
    ok("segment", proj, "--unlabeled")
    cases = {c["id"]: c for c in project_json("cases", proj)}
    assert [cases[f"p{i}"]["state"] for i in (1, 2, 3)] == ["auto"] * 3
    assert all(0.0 <= cases[f"p{i}"]["uncertainty"] <= 1.0 for i in (1, 2, 3))
    again = project_json("segment", proj, "p1")        # the map where to look is stored beside the mask
    u, mask = sitk.ReadImage(str(proj / again["uncertainty_map"])), sitk.ReadImage(str(proj / again["mask"]))
    assert u.GetSize() == mask.GetSize() and np.allclose(u.GetOrigin(), mask.GetOrigin())
    assert 0 <= sitk.GetArrayViewFromImage(u).min() and sitk.GetArrayViewFromImage(u).max() <= 1
    assert again["uncertainty"] == pytest.approx(cases["p1"]["uncertainty"])

    first = project_json("suggest", proj)
    assert first["case"] in {"p1", "p2", "p3"} and first["version"] == 1
    assert first["score"] == max(cases[f"p{i}"]["uncertainty"] for i in (1, 2, 3))

    ok("accept", proj, "p1", "--label", phantoms[1][1], "--split", "validation")
    ok("accept", proj, "p2", "--label", phantoms[2][1])
    ok("train", proj, *QUICK_TRAINING, "--wait")

    versions = project_json("models", proj, "--plot", tmp_path / "versions.png")
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["active"]
    assert [v["training_scans"] for v in versions] == [1, 2]
    assert versions[0]["val_then"]["cases"] == 0 and versions[1]["val_then"]["cases"] == 1
    for v in versions:   # both scored on today's validation case, so they compare
        assert 0.3 < v["val_now"]["dice"]["value"] <= 1.0 and v["val_now"]["hd95_mm"]["value"] is not None
    assert versions[1]["val_then"]["dice"] == versions[1]["val_now"]["dice"]
    assert versions[0]["corrections"]["corrections"] == 2   # p1 and p2 corrected v1's predictions
    assert (tmp_path / "versions.png").stat().st_size > 10_000
    assert project_json("suggest", proj)["case"] == "p3"

    # the history keeps the auto label under the correction; training used only human labels
    p2 = project_json("cases", proj, "p2")
    assert [h["kind"] for h in p2["history"]] == ["auto", "corrected"] and p2["state"] == "corrected"
    fix = p2["history"][1]["correction"]
    assert fix["auto_label"] == p2["history"][0]["id"] and fix["model_version"] == 1 and 0 <= fix["dice"] <= 1
    with Store.open(proj) as store:
        kinds = [store.label(i).kind.value for i in store.latest_run().train_labels]
    assert sorted(kinds) == ["corrected", "manual"]

    ok("use", proj, "1")
    assert project_json("status", proj)["active_version"] == 1

    moved = tmp_path / "moved"   # a project folder moves (relative paths) and still works
    shutil.move(str(proj), str(moved))
    assert "matches its checksum" in ok("verify", moved)
    ok("segment", moved, "p3", "--model", "2")
    assert project_json("cases", moved, "p3")["auto_version"] == 2


def small_scan(seed: int) -> sitk.Image:
    return make_image(np.random.default_rng(seed).random((6, 20, 20)).astype(np.float32))


def test_fixed_split_policy(tmp_path):
    mask = np.zeros((6, 20, 20), np.uint8)
    mask[2:4, 5:15, 5:15] = 1
    sitk.WriteImage(make_image(mask), str(tmp_path / "m.nrrd"))
    with Project.create(tmp_path / "proj", val_fraction=0.25) as project:
        splits = [project.add(small_scan(i), str(tmp_path / "m.nrrd"), f"c{i}").split.value for i in range(1, 9)]
        assert splits == ["train"] * 3 + ["validation"] + ["train"] * 3 + ["validation"]
        project.add(small_scan(9), None, "later")
        assert project.accept("later", str(tmp_path / "m.nrrd"), split=Split.VALIDATION).split == Split.VALIDATION
        assert project.accept("c4", str(tmp_path / "m.nrrd")).split == Split.VALIDATION   # stays where it was


def test_uncertainty_score_is_the_maps_mean_near_the_prediction():
    shape = (4, 10, 10)
    some = np.zeros(shape, np.uint8)
    some[1:3, 3:6, 3:6] = 1
    assert uncertainty(make_image(np.ones(shape, np.float32)), make_image(some)) == pytest.approx(1.0)
    far = np.zeros(shape, np.float32)
    far[:, 9, 9] = 1.0                       # unsure only outside the 3 mm band: not where a correction goes
    assert uncertainty(make_image(far), make_image(some)) == 0.0
    assert uncertainty(make_image(np.zeros(shape, np.float32)), make_image(np.zeros(shape, np.uint8))) == 1.0


@pytest.fixture()
def small_project(tmp_path, phantoms):
    proj = tmp_path / "proj"
    ok("init", proj)
    ok("add", proj, phantoms[0][0], "--label", phantoms[0][1], "--id", "p0")
    ok("add", proj, phantoms[1][0], "--id", "p1")
    return proj


CRASH = {
    # the label file is written, the process dies before the database transaction starts
    "before_commit": "Store.write = lambda self: os._exit(9)",
    # the row is inserted, the process dies inside the transaction, before COMMIT
    "inside_transaction": (
        "import contextlib\n"
        "@contextlib.contextmanager\n"
        "def write(self):\n"
        "    self.conn.execute('BEGIN IMMEDIATE')\n"
        "    yield self.conn\n"
        "    os._exit(9)\n"
        "Store.write = write"),
}


@pytest.mark.parametrize("when", sorted(CRASH))
def test_crash_while_accepting_keeps_the_old_label(small_project, phantoms, when):
    script = (f"import os\nfrom extremeaug.project import Project\nfrom extremeaug.project.store import Store\n"
              f"project = Project.open({str(small_project)!r})\n{CRASH[when]}\n"
              f"project.accept('p0', {str(phantoms[2][1])!r})\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    case = project_json("cases", small_project, "p0")
    assert case["state"] == "manual" and len(case["history"]) == 1
    assert "matches its checksum" in ok("verify", small_project)
    ok("accept", small_project, "p0", "--label", phantoms[2][1])   # the project is usable, the new label lands
    case = project_json("cases", small_project, "p0")
    assert [h["kind"] for h in case["history"]] == ["manual", "manual"]   # no prediction: nothing was corrected
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(small_project / case["label"])))
    assert np.array_equal(stored > 0, sitk.GetArrayFromImage(sitk.ReadImage(str(phantoms[2][1]))) > 0)


def test_bad_input_changes_nothing(small_project, phantoms, tmp_path):
    far = sitk.ReadImage(str(phantoms[1][1]))
    far.SetOrigin((900.0, 900.0, 900.0))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    before = snapshot(small_project)
    one_line_error(run_cli("project", "add", small_project, phantoms[2][0], "--label", tmp_path / "far.nii.gz"),
                   "does not overlap")
    one_line_error(run_cli("project", "add", small_project, phantoms[2][0], "--id", "p0"), "already in the project")
    one_line_error(run_cli("project", "add", small_project, phantoms[2][0], "--split", "validation"), "with a label")
    one_line_error(run_cli("project", "accept", small_project, "nope", "--label", phantoms[1][1]), "no case 'nope'")
    one_line_error(run_cli("project", "accept", small_project, "p1", "--label", tmp_path / "far.nii.gz"),
                   "does not overlap")
    one_line_error(run_cli("project", "accept", small_project, "p0", "--label", phantoms[0][1], "--split",
                           "validation"), "split is fixed")
    one_line_error(run_cli("project", "segment", small_project, "p1"), "no model yet")
    one_line_error(run_cli("project", "use", small_project, "3"), "no model version 3")
    one_line_error(run_cli("project", "cancel", small_project), "no training is running")
    one_line_error(run_cli("project", "train", small_project, "--resume"), "nothing to resume")
    assert snapshot(small_project) == before

    scan = small_project / project_json("cases", small_project, "p1")["scan"]
    scan.rename(tmp_path / "scan-away.nrrd")
    before = snapshot(small_project)
    one_line_error(run_cli("project", "accept", small_project, "p1", "--label", phantoms[1][1]), "has no scan")
    assert snapshot(small_project) == before
    one_line_error(run_cli("project", "verify", small_project), "problem")


def test_not_a_project_and_damaged_database(tmp_path, small_project):
    one_line_error(run_cli("project", "status", tmp_path / "elsewhere"), "not an extremeaug project")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    one_line_error(run_cli("project", "init", tmp_path / "full"), "not empty")
    one_line_error(run_cli("project", "init", small_project), "already a project")

    db = small_project / "project.db"
    run_cli("project", "status", small_project)   # checkpoint the WAL into the file first
    for name in ("project.db-wal", "project.db-shm"):
        (small_project / name).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    data[:100] = b"\0" * 100   # the header gone
    db.write_bytes(bytes(data))
    one_line_error(run_cli("project", "status", small_project), "damaged")
    db.write_bytes(b"not a database at all" * 100)
    one_line_error(run_cli("project", "cases", small_project), "damaged")
    assert len(list((small_project / "cases" / "p0").glob("scan-*.nrrd"))) == 1   # the files are intact
