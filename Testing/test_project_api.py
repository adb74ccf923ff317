"""The project API's contract pieces: scans known by content, verify, schema migration, correction effort,
the one label-kind policy, typed choices, one definition of each default, no import cycles."""
from __future__ import annotations

import getpass
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import MODULE_DIR, make_image, one_line_error, run_cli
from extremeaug.common.errors import ExtremeAugError
from extremeaug.data.io import image_sha256
from extremeaug.inference.segmenter import Segmenter
from extremeaug.project import DEFAULT_STRUCTURE, CaseState, LabelKind, Project, Split, schema
from extremeaug.project.store import Store


def scan_and_mask(seed: int = 0, shape=(6, 24, 24)):
    scan = make_image(np.random.default_rng(seed).integers(0, 900, shape).astype(np.int16), (0.9, 0.9, 3.0),
                      (10.0, -20.0, 5.5))
    mask = np.zeros(shape, np.uint8)
    mask[2:4, 6:16, 6:16] = 1
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(scan)
    return scan, m


def ok(*args):
    r = run_cli("project", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_same_scan_is_one_case_from_a_file_or_an_image(tmp_path):
    scan, mask = scan_and_mask()
    sitk.WriteImage(scan, str(tmp_path / "t2.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "t2_mask.nii.gz"))
    ok("init", tmp_path / "p")
    assert "added case t2: unlabeled" in ok("add", tmp_path / "p", tmp_path / "t2.nii.gz")
    assert "already case t2" in ok("add", tmp_path / "p", tmp_path / "t2.nii.gz")
    one_line_error(run_cli("project", "add", tmp_path / "p", tmp_path / "t2.nii.gz", "--new-id"), "already",
                   "'t2'")
    one_line_error(run_cli("project", "add", tmp_path / "p", tmp_path / "t2.nii.gz", "--id", "other"), "'t2'")
    with Project.open(tmp_path / "p") as project:
        as_float = sitk.Cast(scan, sitk.sitkFloat32)   # another pixel type, no file: the same voxels and grid
        assert project.find_scan(as_float) == "t2"
        again = project.add(as_float, mask)              # its label lands on the existing case
        assert again.existing and again.id == "t2" and again.state == CaseState.MANUAL
        shifted = sitk.Image(as_float)
        shifted.SetOrigin((10.0, -20.0, 8.5))            # the same voxels elsewhere: another scan
        assert project.find_scan(shifted) is None
        assert len(project.cases()) == 1


def test_verify_names_a_scan_whose_voxels_or_grid_changed(tmp_path):
    scan, mask = scan_and_mask()
    with Project.create(tmp_path / "p") as project:
        case = project.add(scan, mask, "c1")
        other = project.add(scan_and_mask(1)[0], None, "c2")
        assert project.verify() == []
        stored = project.path(case.scan)
        changed = sitk.ReadImage(str(stored))
        changed[3, 3, 3] = changed[3, 3, 3] + 1     # one voxel: the file is a valid image, with other content
        sitk.WriteImage(changed, str(stored))
        moved = sitk.ReadImage(str(project.path(other.scan)))
        moved.SetSpacing((1.0, 1.0, 3.0))
        sitk.WriteImage(moved, str(project.path(other.scan)))
        problems = project.verify()
    assert len(problems) == 2 and all("changed on disk" in p for p in problems)
    assert problems[0].startswith("case c1: scan") and problems[1].startswith("case c2: scan")
    one_line_error(run_cli("project", "verify", tmp_path / "p"), "2 problem(s)")


# the schema of the first release, as its store.py wrote it (a frozen copy: the migration must read these)
SCHEMA_1 = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cases (id TEXT PRIMARY KEY, scan TEXT NOT NULL, source TEXT NOT NULL, added REAL NOT NULL,
    split TEXT CHECK (split IN ('train', 'validation')), labeled_order INTEGER);
CREATE TABLE labels (id INTEGER PRIMARY KEY AUTOINCREMENT, case_id TEXT NOT NULL REFERENCES cases(id),
    kind TEXT NOT NULL CHECK (kind IN ('manual', 'corrected', 'auto')), path TEXT NOT NULL, sha256 TEXT NOT NULL,
    voxels INTEGER NOT NULL, created REAL NOT NULL, source TEXT, model_version INTEGER, probabilities TEXT,
    uncertainty REAL);
CREATE INDEX labels_case ON labels (case_id, id);
CREATE TABLE runs (id TEXT PRIMARY KEY, status TEXT NOT NULL, pid INTEGER, created REAL NOT NULL, ended REAL,
    config TEXT NOT NULL, train_labels TEXT NOT NULL, message TEXT, version INTEGER);
CREATE TABLE versions (version INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id), created REAL NOT NULL,
    path TEXT NOT NULL, train_labels TEXT NOT NULL, val_labels TEXT NOT NULL, summary TEXT NOT NULL);
CREATE TABLE scores (version INTEGER NOT NULL REFERENCES versions(version), label_id INTEGER NOT NULL
    REFERENCES labels(id), case_id TEXT NOT NULL, metrics TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (version, label_id));
"""


def schema_1_project(root: Path) -> None:
    """A project folder as the first release left it: scan.nrrd per case, a manual and an auto label, a
    finished run, version 1 scored on a validation case, settings.schema_version = 1 and user_version 0."""
    from extremeaug.project.cases import sha256
    now = time.time()
    conn = sqlite3.connect(str(root / "project.db"))
    conn.executescript(SCHEMA_1)
    settings = {"plane": "auto", "val_fraction": 0.25, "label_values": None, "active_version": 1,
                "schema_version": 1, "created": now}
    conn.executemany("INSERT INTO settings VALUES (?, ?)", [(k, json.dumps(v)) for k, v in settings.items()])
    for i, (case, split, kinds) in enumerate((("c1", "train", ["manual"]), ("c2", "validation", ["auto", "manual"]),
                                             ("c3", None, ["auto"]))):
        scan, mask = scan_and_mask(i)
        folder = root / "cases" / case
        (folder / "labels").mkdir(parents=True)
        sitk.WriteImage(scan, str(folder / "scan.nrrd"), True)
        conn.execute("INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?)", (case, f"cases/{case}/scan.nrrd",
                                                                    f"/data/{case}.nii.gz", now + i, split,
                                                                    i + 1 if split else None))
        for n, kind in enumerate(kinds, start=1):
            path = folder / "labels" / f"{n:04d}-{kind}-abcdef.nrrd"
            sitk.WriteImage(mask, str(path), True)
            conn.execute("INSERT INTO labels (case_id, kind, path, sha256, voxels, created, model_version, "
                         "uncertainty) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (case, kind, path.relative_to(root).as_posix(), sha256(path), 200, now,
                          1 if kind == "auto" else None, 0.4 if kind == "auto" else None))
    config = {"train": {"augment": 3, "epochs": 1, "batch_size": 16, "width": 4, "lr": 0.003, "loss": "dice",
                        "plane": "auto", "seed": 0, "label_values": None, "augmentation": True,
                        "augment_mode": "fresh", "threshold": 0.5, "min_component_mm3": 100.0},
              "device": "cpu", "time_budget_min": None, "checkpoint_minutes": 2.0}
    conn.execute("INSERT INTO runs VALUES ('r0001-20261127-101010', 'finished', 4242, ?, ?, ?, '[1]', NULL, 1)",
                 (now, now, json.dumps(config)))
    summary = {"status": "finished", "epochs_done": 1.0, "augment": 3, "train_dice": 0.8, "loss": 0.2,
               "seconds": 12.0, "device": "cpu", "width": 4, "training_cases": ["c1"]}
    conn.execute("INSERT INTO versions VALUES (1, 'r0001-20261127-101010', ?, 'models/v1/model.onnx', '[1]', '[3]', ?)",
                 (now, json.dumps(summary)))
    conn.execute("INSERT INTO scores VALUES (1, 3, 'c2', ?, ?)",
                 (json.dumps({"dice": 0.75, "hd95_mm": 2.5, "assd_mm": 0.8}), now))
    conn.commit()
    conn.close()


def test_a_schema_1_project_is_migrated_in_place(tmp_path, random_model):
    root = tmp_path / "old"
    root.mkdir()
    schema_1_project(root)
    (root / "models" / "v1").mkdir(parents=True)   # a first-release model: published without a checksum
    (root / "models" / "v1" / "model.onnx").write_bytes(random_model.read_bytes())
    with Project.open(root) as project:
        status = project.status()
        assert status.cases == 3 and status.states["manual"] == 2 and status.states["auto"] == 1
        assert status.active_version == 1 and status.run.status.value == "finished"
        c1 = project.case("c1")
        assert c1.scan == "cases/c1/scan.nrrd" and c1.source == "/data/c1.nii.gz"
        assert c1.scan_sha256 == image_sha256(sitk.ReadImage(str(root / "cases/c1/scan.nrrd")))
        assert project.verify() == []   # the model is loaded; no checksum to compare with
        v1, = project.versions(rescore=False)
        assert v1.val_then.dice.value == 0.75 and v1.val_then.hd95_mm.value == 2.5 and v1.corrections.corrections == 0
        assert project.add(str(root / "cases/c2/scan.nrrd")).existing   # the old scans are known by content
        fixed = project.accept("c3", scan_and_mask(2)[1])                  # over v1's old prediction: a correction
        assert fixed.state == CaseState.CORRECTED and fixed.history[-1].correction.model_version == 1
        # labels stored before step 6 name no one; a new one names who stored it (the login, from a command line)
        assert fixed.history[0].accepted_by is None and fixed.history[-1].accepted_by == getpass.getuser()
        # it learned one structure: that stays its label table, and new masks are merged into it
        assert project.structures() == [DEFAULT_STRUCTURE] and project.status().settings.merge_labels
    conn = sqlite3.connect(str(root / "project.db"))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.CURRENT == 6
    assert json.loads(conn.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]) == schema.CURRENT
    conn.close()
    Project.open(root).close()   # opening again migrates nothing


def test_a_project_labeled_before_several_structures_still_trains_its_one_structure(tmp_path, random_model):
    root = tmp_path / "old"
    root.mkdir()
    schema_1_project(root)
    (root / "models" / "v1").mkdir(parents=True)
    (root / "models" / "v1" / "model.onnx").write_bytes(random_model.read_bytes())
    trained = run_cli("project", "train", root, "--augment", "1", "--epochs", "1", "--width", "4", "--device", "cpu",
                      "--wait")
    assert trained.returncode == 0, trained.stderr
    with Project.open(root) as project:
        v2 = project.versions(rescore=False)[-1]
        assert v2.version == 2 and project.structures() == [DEFAULT_STRUCTURE]
        assert Segmenter(project.path(v2.path), "cpu").labels == [DEFAULT_STRUCTURE]   # one channel, value 1


def test_a_project_from_a_newer_release_is_refused(tmp_path):
    Project.create(tmp_path / "p").close()
    conn = sqlite3.connect(str(tmp_path / "p" / "project.db"))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    one_line_error(run_cli("project", "status", tmp_path / "p"), "unknown project format 99")


def test_a_correction_records_what_changed_against_the_prediction(tmp_path):
    scan, truth = scan_and_mask()
    predicted = sitk.Image(truth)
    predicted[5, 5, 2] = 1          # one voxel too many ...
    predicted[10, 10, 2] = 0        # ... and one missed
    with Project.create(tmp_path / "p") as project:
        case = project.add(scan, None, "c1")
        assert project.accept("c1", truth).history[-1].kind == LabelKind.MANUAL   # nothing was predicted
        other = project.add(scan_and_mask(1)[0], None, "c2")
    with Store.open(tmp_path / "p") as store:   # a prediction of model v3, as `segment` stores one
        path = tmp_path / "p" / "cases" / "c2" / "auto" / "v3-mask.nrrd"
        path.parent.mkdir(parents=True)
        sitk.WriteImage(predicted, str(path))
        with store.write():
            auto_id = store.insert_label("c2", LabelKind.AUTO, "cases/c2/auto/v3-mask.nrrd", "-", 200, model_version=3)
    with Project.open(tmp_path / "p") as project:
        fixed = project.accept(other.id, truth, seconds=42.04)
        fix = fixed.history[-1].correction
        assert fixed.history[-1].kind == LabelKind.CORRECTED and fixed.state == CaseState.CORRECTED
        assert (fix.auto_label, fix.model_version, fix.voxels_added, fix.voxels_removed, fix.seconds) == (
            auto_id, 3, 1, 1, 42.0)
        n = int(sitk.GetArrayViewFromImage(truth).sum())
        assert fix.dice == pytest.approx(2 * (n - 1) / (2 * n))
        assert case.id == "c1"
    shown = json.loads(ok("cases", tmp_path / "p", "c2", "--json"))["history"][-1]["correction"]
    assert shown == {"auto_label": auto_id, "model_version": 3, "voxels_added": 1, "voxels_removed": 1,
                     "dice": fix.dice, "seconds": 42.0}
    assert "corrected v3: +1 / -1 voxels" in ok("cases", tmp_path / "p", "c2")
    ok("accept", tmp_path / "p", "c2", "--label", tmp_path / "p" / fixed.history[-1].path, "--manual")
    latest = json.loads(ok("cases", tmp_path / "p", "c2", "--json"))["history"][-1]
    assert latest["kind"] == "manual" and latest["correction"] is None   # drawn from scratch: no correction


def test_unknown_choices_name_the_closest_valid_one(tmp_path):
    from extremeaug.common.config import Plane, TrainConfig
    with pytest.raises(ExtremeAugError, match="unknown plane 'sagital'; did you mean 'sagittal'"):
        Plane.parse("sagital")
    with pytest.raises(ExtremeAugError, match="unknown split 'valid'; did you mean 'validation'"):
        Split.parse("valid")
    assert TrainConfig(plane="axial", loss="dice+bce").plane is Plane.AXIAL   # strings from JSON become choices
    one_line_error(run_cli("project", "init", tmp_path / "p", "--plane", "sagital"), "sagital", "sagittal")
    one_line_error(run_cli("train", "--image", "a", "--label", "b", "--out", tmp_path / "m", "--label-values", "1,x"),
                   "--label-values", "expected integers")
    assert not (tmp_path / "p").exists() and not (tmp_path / "m").exists()


def test_every_command_takes_its_defaults_from_the_one_definition():
    from dataclasses import fields

    from extremeaug.cli.main import parser
    from extremeaug.common.config import PAPER_SETUP, RUN_DEFAULTS, TRAIN_DEFAULTS
    p = parser()
    commands = {"train": p.parse_args(["train", "--image", "a", "--label", "b", "--out", "o"]),
                "project train": p.parse_args(["project", "train", "d"]),
                "experiment": p.parse_args(["experiment", "--data", "d", "--out", "o"]),
                "demo": p.parse_args(["demo"])}
    for name, args in commands.items():
        for defaults in (TRAIN_DEFAULTS, RUN_DEFAULTS):
            for f in fields(defaults):
                own = (name == "demo" and f.name == "time_budget_min") or (name == "experiment" and f.name == "augment")
                if name == "experiment" and f.name in PAPER_SETUP and hasattr(args, f.name):   # the paper's
                    assert str(getattr(args, f.name)) == str(PAPER_SETUP[f.name]), f.name
                elif hasattr(args, f.name) and not own:   # the demo's budget; the grid's list of levels
                    assert str(getattr(args, f.name)) == str(getattr(defaults, f.name)), (name, f.name)
    assert commands["train"].checkpoint_minutes == commands["project train"].checkpoint_minutes == 2.0
    assert commands["train"].tta is commands["train"].union is True
    one_pass = p.parse_args(["project", "train", "d", "--no-tta", "--no-union"])
    assert one_pass.tta is one_pass.union is False


def test_means_count_undefined_values_instead_of_dropping_them():
    import math

    from extremeaug.evaluation.stats import mean
    from extremeaug.experiments.report import _table
    m = mean([2.0, math.inf, None, 4.0])
    assert (m.value, m.n, m.undefined) == (3.0, 2, 2) and m.format(".1f", " mm") == "3.0 mm (2 undefined)"
    assert mean([]).value is None and mean([math.inf]).format() == "- (1 undefined)"
    rows = [{"mode": "fresh", "augment": 5, "epochs": 1, "n_train": 1, "val_hd95_mm": 2.0, "val_hd95_mm_undefined": 1}]
    assert any("2.000 (1 undefined)" in line for line in _table(rows, "val_hd95_mm", None, "HD95"))


def test_an_empty_or_full_prediction_has_an_undefined_distance_not_a_huge_one():
    import math

    from extremeaug.evaluation.metrics import evaluate
    ref = np.zeros((6, 20, 20), np.uint8)
    ref[2:4, 5:10, 5:10] = 1
    full = evaluate(make_image(np.ones_like(ref)), make_image(ref))
    assert math.isinf(full["hd95_mm"]) and math.isinf(full["assd_mm"]) and 0 < full["dice"] < 1


def test_one_event_format_for_writers_and_readers(tmp_path):
    from tqdm import tqdm

    from extremeaug.common.events import EventReader, EventWriter, append_event, format_eta, tail_events
    path = tmp_path / "progress.jsonl"
    path.write_bytes(b'{"event": "start", "time": 1}\n{"event": "progress", "st')   # a writer killed mid-line
    reader = EventReader(path)
    assert [e["event"] for e in reader.read()] == ["start"]
    append_event(path, "phase", phase="queued")
    writer = EventWriter(path)
    writer.write("progress", step=3)
    writer.close()
    assert [e["event"] for e in reader.read()] == ["phase", "progress"]
    assert [e["event"] for e in tail_events(path)] == ["start", "phase", "progress"]
    assert format_eta(3725.2) == tqdm.format_interval(3725.2) == "1:02:05" and format_eta(None) == "?"


def test_the_declared_torch_floor_is_the_one_the_code_runs_on(monkeypatch):
    import re

    import torch

    from extremeaug.networks import export
    from extremeaug.common.requirements import MINIMUM, version_tuple
    declared = (MODULE_DIR.parent / "pyproject.toml").read_text(encoding="utf-8")
    for name, floor in MINIMUM.items():
        assert re.search(rf'"{name}>={re.escape(floor)}"', declared), name
    assert version_tuple("2.5.1+cu124") == (2, 5, 1) and version_tuple("1.16.0rc1") == (1, 16, 0)
    assert export.torchscript_exporter() == ({"dynamo": False} if version_tuple(torch.__version__) >= (2, 5) else {})

    def export_before_2_5(model, args, f, export_params=True, verbose=False, input_names=None, output_names=None,
                          opset_version=None, dynamic_axes=None):
        return None
    monkeypatch.setattr(torch.onnx, "export", export_before_2_5)
    assert export.torchscript_exporter() == {}   # torch 2.1-2.4 has no `dynamo` keyword: none is passed


def test_scan_files_of_two_cases_never_share_a_path(tmp_path):
    """Scans are stored under a fresh name, so two adds racing for one id cannot overwrite (or, cleaning up,
    delete) the file the other committed."""
    with Project.create(tmp_path / "p") as project:
        a = project.add(scan_and_mask(0)[0], None, "same")
        with pytest.raises(ExtremeAugError, match="already in the project"):
            project.add(scan_and_mask(1)[0], None, "same")
        assert project.verify() == [] and (tmp_path / "p" / a.scan).is_file()
        assert list((tmp_path / "p" / "cases" / "same").glob("scan-*.nrrd")) == [tmp_path / "p" / a.scan]


def test_a_case_id_with_a_trailing_newline_and_a_nan_budget_are_refused(tmp_path):
    from extremeaug.common.config import RunOptions
    with Project.create(tmp_path / "p") as project:
        with pytest.raises(ExtremeAugError, match="case id"):
            project.add(scan_and_mask()[0], None, "c1\n")   # `$` used to match before a final newline
        assert project.cases() == []
    for flags in ({"time_budget_min": float("nan")}, {"checkpoint_minutes": float("nan")}):
        with pytest.raises(ExtremeAugError, match="must be positive"):
            RunOptions(**flags).check()
    one_line_error(run_cli("project", "train", tmp_path / "p", "--time-budget", "nan"), "--time-budget")


def test_status_and_the_command_line_parser_load_no_imaging_library(tmp_path):
    """What a GUI timer and `project status` run must start fast: no numpy, SimpleITK, onnxruntime or torch."""
    Project.create(tmp_path / "p").close()
    code = ("import sys, extremeaug.cli.main; extremeaug.cli.main.parser(); from extremeaug.project import Project; "
            f"p = Project.open({str(tmp_path / 'p')!r}); p.status(); p.run(); p.close(); "
            "heavy = {'numpy', 'SimpleITK', 'onnxruntime', 'torch'} & set(sys.modules); assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
