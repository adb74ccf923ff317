"""Bad input through the real command line: one clear line on stderr, exit 2, nothing written."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import one_line_error, run_cli


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, phantoms):
    d = tmp_path_factory.mktemp("bad")
    scan = sitk.ReadImage(str(phantoms[0][0]))
    (d / "text.nii.gz").write_text("hello")
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(30, 30).astype(np.float32)), str(d / "2d.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(2, 5, 30, 30).astype(np.float32), isVector=False),
                    str(d / "4d.nii.gz"))
    nan = sitk.GetArrayFromImage(scan).astype(np.float32)
    nan[5, 5, 5] = np.nan
    nan_image = sitk.GetImageFromArray(nan)
    nan_image.CopyInformation(scan)
    sitk.WriteImage(nan_image, str(d / "nan.mha"))
    const = sitk.Image(scan.GetSize(), sitk.sitkInt16) + 5
    const.CopyInformation(scan)
    sitk.WriteImage(const, str(d / "constant.nii.gz"))
    empty = sitk.Image(scan.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(scan)
    sitk.WriteImage(empty, str(d / "empty.nii.gz"))
    far = sitk.ReadImage(str(phantoms[0][1]))
    far.SetOrigin((900.0, 900.0, 900.0))
    sitk.WriteImage(far, str(d / "far.nii.gz"))
    return d


@pytest.mark.parametrize("image,label,needle", [
    ("absent.nii.gz", None, "no such file"),
    ("text.nii.gz", None, "not an image"),
    ("2d.nii.gz", None, "2D"),
    ("4d.nii.gz", None, "4D"),
    ("nan.mha", None, "NaN"),
    ("constant.nii.gz", None, "constant"),
    (None, "empty.nii.gz", "empty"),
    (None, "far.nii.gz", "does not overlap"),
    (None, "absent_mask.nii.gz", "no such file"),
])
def test_train_refuses_bad_input_and_writes_nothing(tmp_path, bad_files, phantoms, image, label, needle):
    image = bad_files / image if image else phantoms[0][0]
    label = bad_files / label if label else phantoms[0][1]
    out = tmp_path / "model"
    result = run_cli("train", "--image", image, "--label", label, "--out", out, "--epochs", "1", "--quiet")
    one_line_error(result, needle)
    assert not out.exists()


def test_train_refuses_cuda_without_cuda(tmp_path, phantoms):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "model"
    result = run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", out, "--device", "cuda")
    one_line_error(result, "CUDA")
    assert not out.exists()


def test_train_and_project_train_refuse_a_non_positive_time_budget(tmp_path, phantoms):
    out = tmp_path / "model"
    for budget in ("0", "-2"):
        result = run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", out,
                         "--time-budget", budget)
        one_line_error(result, "--time-budget must be positive")
    assert not out.exists()
    proj = tmp_path / "proj"
    assert run_cli("project", "init", proj).returncode == 0
    assert run_cli("project", "add", proj, phantoms[0][0], "--label", phantoms[0][1]).returncode == 0
    one_line_error(run_cli("project", "train", proj, "--time-budget", "0"), "--time-budget must be positive")
    assert not (proj / "runs").exists() or not any((proj / "runs").iterdir())   # no worker was started


def test_train_refuses_a_context_relative_size_or_scale_range_out_of_range_and_segment_a_negative_one(
        tmp_path, phantoms, random_model):
    out = tmp_path / "model"
    for scales in ("1.1,1.4", "0.7", "0.7,nan"):
        one_line_error(run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", out,
                               "--scale-range", scales), "--scale-range", "0.8,1.2")
    one_line_error(run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", out,
                           "--context", "9"), "--context must be 0 to 5")
    one_line_error(run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", out,
                           "--min-relative-size", "2"), "--min-relative-size must be 0 to 1")
    assert not out.exists()
    one_line_error(run_cli("segment", "--model", random_model, "--image", phantoms[0][0], "--out", tmp_path / "m.nrrd",
                           "--min-relative-size", "-1"), "--min-relative-size")
    assert not (tmp_path / "m.nrrd").exists()


def test_train_refuses_unpaired_and_existing_model(tmp_path, phantoms, random_model):
    result = run_cli("train", "--image", phantoms[0][0], "--out", tmp_path / "m")
    one_line_error(result, "pairs")
    existing = random_model.parent
    before = sorted(p.name for p in existing.iterdir())
    result = run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", existing)
    one_line_error(result, "already holds a model")
    assert sorted(p.name for p in existing.iterdir()) == before


def test_segment_refuses_bad_models_and_scans(tmp_path, phantoms, random_model, bad_files):
    out = tmp_path / "mask.nii.gz"
    corrupted = tmp_path / "corrupted.onnx"
    corrupted.write_bytes(random_model.read_bytes()[:3000])
    one_line_error(run_cli("segment", "--model", corrupted, "--image", phantoms[1][0], "--out", out),
                   "not a readable ONNX")
    one_line_error(run_cli("segment", "--model", tmp_path / "none.onnx", "--image", phantoms[1][0], "--out", out),
                   "no such model")
    one_line_error(run_cli("segment", "--model", random_model, "--image", bad_files / "nan.mha", "--out", out),
                   "NaN")
    if not torch.cuda.is_available():
        one_line_error(run_cli("segment", "--model", random_model, "--image", phantoms[1][0], "--out", out,
                               "--device", "cuda"), "CUDA")
    assert not out.exists()


def test_evaluate_json(tmp_path, phantoms):
    result = run_cli("evaluate", "--prediction", phantoms[0][1], "--reference", phantoms[0][1], "--json")
    assert result.returncode == 0, result.stderr
    import json

    m = json.loads(result.stdout)
    assert m["dice"] == 1.0 and m["hd95_mm"] == 0.0 and m["found"] == m["reference_structures"] > 3


def test_segment_leaves_the_project_package_unloaded_and_help_still_lists_the_project(tmp_path, phantoms,
                                                                                      random_model):
    """`segment` is the command a clinician waits for: the project's commands are built only when one of them (or
    the whole help) is asked for, since importing the project package costs 0.06-0.09 s of a 2-second command."""
    args = ["segment", "--model", str(random_model), "--image", str(phantoms[1][0]), "--out", str(tmp_path / "m.nrrd")]
    code = (f"import sys; from extremeaug.cli.main import main; assert main({args!r}) == 0; "
            "assert 'extremeaug.project' not in sys.modules, 'the project package was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.nrrd").is_file()
    listed = run_cli("--help")
    assert listed.returncode == 0 and "project" in listed.stdout
    project = run_cli("project", "--help")
    assert project.returncode == 0 and "init" in project.stdout


def test_every_command_says_in_its_help_what_it_is_for():
    import argparse

    from extremeaug.cli.main import parser

    def commands(p, prefix=""):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield prefix + name, sub
                    yield from commands(sub, prefix + name + " ")

    found = dict(commands(parser()))
    assert {"train", "segment", "evaluate", "demo", "experiment", "project", "project accept"} <= set(found)
    missing = [name for name, sub in found.items() if not sub.description or "\n" in sub.description.strip()]
    assert not missing, f"commands whose --help does not open with one line saying what they are for: {missing}"
    assert parser().description and "\n" not in parser().description
