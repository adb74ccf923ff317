"""One scenario driven through the project API, then read back by each front end: the command line and the
3D Slicer module (its Logic and the Qt-free tables its widget fills), asserting every field they show.

The scenario: phantom 0 delineated (train), v1 trained, phantoms 1 and 2 segmented and corrected (1 held
out for validation), v2 trained on two scans. It is built once for the module and only read afterwards.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import pytest
import SimpleITK as sitk

from conftest import MODULE_DIR, run_cli
from extremeaug.project import CaseState, JobState, JobStatus, Project, RunSpec, RunStatus, Split, TrainConfig

TINY = RunSpec(TrainConfig(augment=2, epochs=1, width=4), device="cpu")


def wait(project: Project, run_id: str, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while (run := project.run(run_id)).active:
        assert time.monotonic() < deadline, run
        time.sleep(0.5)
    assert run.status.value == "finished", run.message
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantoms):
    root = tmp_path_factory.mktemp("contract") / "project"
    with Project.create(root) as project:
        project.add(str(phantoms[0][0]), str(phantoms[0][1]), "p0")
        for i in (1, 2):
            project.add(str(phantoms[i][0]), None, f"p{i}")
        wait(project, project.train(TINY))
        shown = project.segment(["p1", "p2"])
        project.accept("p1", str(phantoms[1][1]), Split.VALIDATION, corrects=shown[0].label, seconds=75.0)
        project.accept("p2", str(phantoms[2][1]))
        wait(project, project.train(TINY))
    return root


def test_the_api_returns_every_field_the_front_ends_show(trained):
    with Project.open(trained) as project:
        status = project.status()
        v1, v2 = project.versions(rescore=False)
        p1 = project.case("p1")
        suggestion = project.suggest()
    assert status.cases == 3 and status.states == {"unlabeled": 0, "auto": 0, "manual": 1, "corrected": 2}
    assert status.splits == {"train": 2, "validation": 1} and status.versions == 2 and status.active_version == 2
    assert status.run.status.value == "finished" and status.run.version == 2 and status.run.fraction == 1.0
    assert v2.active and not v1.active and (v1.training_scans, v2.training_scans) == (1, 2)
    assert v1.val_then.cases == 0 and v2.val_then.cases == v2.val_then.scored == 1
    for mean in (v2.val_then.dice, v2.val_then.hd95_mm, v2.val_then.assd_mm):
        assert mean.value is not None or mean.undefined == 1
    assert v2.val_then.per_case.keys() == {"p1"}
    assert v1.corrections.corrections == 2 and v1.corrections.voxels_changed.value > 0
    assert v1.corrections.seconds.value == 75.0 and v1.corrections.seconds.undefined == 1   # p2: not timed
    assert v2.corrections.corrections == 0
    assert [h.kind.value for h in p1.history] == ["auto", "corrected"] and p1.state == CaseState.CORRECTED
    assert p1.history[1].correction.auto_label == p1.history[0].id and p1.history[1].correction.seconds == 75.0
    assert suggestion.case is None and "every case has a human label" in suggestion.reason


def test_the_command_line_shows_the_same_fields(trained, tmp_path):
    def cli(*args):
        r = run_cli("project", *args, trained)
        assert r.returncode == 0, r.stderr
        return r.stdout

    with Project.open(trained) as project:
        v2 = project.versions(rescore=False)[1]
    models = cli("models", "--no-rescore").splitlines()
    assert models[1].startswith("* v2: 2 training scan(s)") and f"HD95 {v2.val_now.hd95_mm.format('.2f', ' mm')}" \
        in models[1]
    assert "2 correction(s) of its predictions" in models[0]
    rows = json.loads(cli("models", "--json", "--no-rescore"))
    assert rows[1]["val_then"]["hd95_mm"]["value"] == v2.val_then.hd95_mm.value
    assert rows[0]["corrections"]["voxels_changed"]["n"] == 2
    r = run_cli("project", "models", trained, "--no-rescore", "--plot", tmp_path / "versions.png")
    assert r.returncode == 0 and (tmp_path / "versions.png").stat().st_size > 10_000
    status = json.loads(cli("status", "--json"))
    assert status["run"]["status"] == "finished" and status["settings"]["plane"] == "auto"
    case = json.loads(run_cli("project", "cases", trained, "p1", "--json").stdout)
    assert case["history"][1]["correction"]["seconds"] == 75.0
    assert "corrected v1" in run_cli("project", "cases", trained, "p1").stdout


def test_the_slicer_module_shows_the_same_fields(trained, scene):
    sys.path.insert(0, str(MODULE_DIR))
    from ExtremeAugSegmentLib import SceneIO, Tables
    from ExtremeAugSegmentLib.Logic import ExtremeAugSegmentLogic

    logic = ExtremeAugSegmentLogic(scene)
    try:
        status = logic.openProject(str(trained))
        assert Tables.statusText(status) == "3 case(s) (1 manual, 2 corrected); model v2 active"
        versions = [Tables.versionRow(v) for v in logic.versions()]
        assert [row[0] for row in versions] == ["1", "2"] and versions[1][-1] == "yes"
        v2 = logic.versions()[1]
        assert versions[1][2] == v2.val_then.dice.format(".3f") != "-"
        assert versions[1][3] == v2.val_then.hd95_mm.format(".2f") and versions[1][3] != "-"   # the HD95 column
        assert versions[0][4].endswith("(n=2)") and versions[1][4] == "-"
        cases = {row[0]: row for row in map(Tables.caseRow, logic.caseRows())}
        assert cases["p1"][1:4] == ("corrected", "validation", "v1") and cases["p0"][1:4] == ("manual", "train", "-")
        run = logic.poll().run
        assert Tables.runText(run) == "finished: model version 2 is active"
        stopped = replace(run, status=RunStatus.CANCELLED, resumable=True,
                          message="cancelled; `extremeaug project train --resume` continues it")
        assert Tables.runText(stopped) == "cancelled; Resume continues it"   # the panel's button, not a command
        died = replace(stopped, status=RunStatus.DIED, message="worker died: no heartbeat for 31 s; "
                       "`extremeaug project train --resume` continues it")
        assert Tables.runText(died) == "died: worker died: no heartbeat for 31 s; Resume continues it"
        assert Tables.jobText(JobState(JobStatus.RUNNING, 1, 3)) == "segmenting: 1 of 3 case(s) done..."
        with Project.open(trained) as project:
            done = project.segment(["p0"], device="cpu")
        assert done[0].provider == "CPUExecutionProvider"   # what onnxruntime ran it on, not what was asked
        assert Tables.jobText(JobState(JobStatus.FINISHED, 1, 1, done)) == "segmented 1 case(s) on CPU"
        assert Tables.jobText(JobState(JobStatus.FAILED, 0, 1, message="error: x")) == "failed: error: x"
        # a scan of the project loaded into the scene under another name is its case
        with Project.open(trained) as project:
            scan = sitk.ReadImage(str(project.path(project.case("p2").scan)))
        node = SceneIO.addVolumeNode(scene, scan, "T2 from PACS")
        assert logic.caseIdOf(node) == "p2"
    finally:
        logic.closeProject()


def test_verify_checks_the_database_and_the_models_too(trained, tmp_path):
    import shutil
    import sqlite3

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    with Project.open(copy) as project:
        assert project.verify() == []
        model = project.path(project.versions(rescore=False)[0].path)
    model.write_bytes(model.read_bytes()[:1000])   # an interrupted copy of the project
    db = sqlite3.connect(str(copy / "project.db"))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root, size = db.execute("SELECT rootpage FROM sqlite_master WHERE type = 'index' LIMIT 1").fetchone()[0], \
        db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    data = bytearray((copy / "project.db").read_bytes())
    data[root * size - 24:root * size - 20] = b"zzzz"   # a damaged page of an index
    (copy / "project.db").write_bytes(bytes(data))
    with Project.open(copy) as project:
        problems = project.verify()
    assert any(p.startswith("project.db:") for p in problems), problems
    assert "model v1: models/v1/model.onnx changed on disk (checksum)" in problems
    result = run_cli("project", "verify", copy)
    assert result.returncode == 2 and "problem(s)" in result.stderr
