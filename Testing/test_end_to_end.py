"""The method for real, through the CLI: train on ONE phantom, segment others, Dice >= 0.8."""
from __future__ import annotations

import json

import pytest

from conftest import REAL_DATA, run_cli


@pytest.mark.slow
def test_train_on_one_phantom_segments_the_others(tmp_path, phantoms):
    model = tmp_path / "model"
    result = run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1],
                     "--val-image", phantoms[1][0], "--val-label", phantoms[1][1],
                     "--out", model, "--augment", "20", "--epochs", "1", "--quiet", "--device", "cpu")   # fixed work, any load
    assert result.returncode == 0, result.stderr
    for i in (2, 3):
        out = tmp_path / f"pred{i}.nii.gz"
        seg = run_cli("segment", "--model", model / "model.onnx", "--image", phantoms[i][0], "--out", out,
                      "--probabilities", tmp_path / f"prob{i}.nii.gz")
        assert seg.returncode == 0, seg.stderr
        ev = run_cli("evaluate", "--prediction", out, "--reference", phantoms[i][1], "--json")
        metrics = json.loads(ev.stdout)
        assert metrics["dice"] >= 0.8, metrics
        assert metrics["missed"] <= 1, metrics


@pytest.mark.realdata
@pytest.mark.slow
def test_real_lumbar_mri_small_budget(tmp_path):
    """Case 11 trains for 3 minutes on the CPU; case 20 is segmented and scored.

    A smoke test of the real pipeline (1 mm isotropic sagittal T2, int16, labels 1..5): the full
    15-minute result is in docs/results.md (benchmarks/real_data.sh).
    """
    if not REAL_DATA.is_dir():
        pytest.skip(f"{REAL_DATA} is absent")
    model = tmp_path / "model"
    result = run_cli("train", "--image", REAL_DATA / "case11_image.nii.gz", "--label",
                     REAL_DATA / "case11_mask.nii.gz", "--out", model, "--time-budget", "3", "--quiet",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "case20.nii.gz"
    seg = run_cli("segment", "--model", model / "model.onnx", "--image", REAL_DATA / "case20_image.nii.gz",
                  "--out", out)
    assert seg.returncode == 0, seg.stderr
    metrics = json.loads(run_cli("evaluate", "--prediction", out, "--reference",
                                 REAL_DATA / "case20_mask.nii.gz", "--json").stdout)
    print("case 20 after 3 CPU minutes:", metrics)
    assert metrics["dice"] >= 0.7, metrics   # 0.83 measured on CPU-2 (docs/results.md)
    assert metrics["found"] >= 4, metrics
