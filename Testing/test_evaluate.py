from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import make_image
from extremeaug.evaluation.metrics import evaluate


def cube(shape, lo, hi):
    a = np.zeros(shape, np.uint8)
    a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    return a


def test_shifted_cubes_hand_computed():
    # 10-voxel cubes shifted by 2 voxels along x: overlap 800 of 1000 + 1000 -> Dice 0.8.
    a = cube((30, 30, 30), (10, 10, 10), (20, 20, 20))
    b = cube((30, 30, 30), (10, 10, 12), (20, 20, 22))
    m = evaluate(make_image(a), make_image(b))
    assert m["dice"] == pytest.approx(0.8)
    assert m["hd95_mm"] == pytest.approx(2.0)
    # distances are in mm: with 3 mm voxels along x the shift is 6 mm
    m3 = evaluate(make_image(a, (3.0, 1.0, 1.0)), make_image(b, (3.0, 1.0, 1.0)))
    assert m3["hd95_mm"] == pytest.approx(6.0)
    assert m3["assd_mm"] > m["assd_mm"]


def test_slab_surface_distances_exact():
    # two full-width slabs whose faces are 1 voxel apart: every surface voxel is 1 mm from the other
    # surface, except the shared faces at distance 0.
    a = np.zeros((10, 8, 8), np.uint8)
    a[2:5] = 1
    b = np.zeros_like(a)
    b[3:6] = 1
    m = evaluate(make_image(a), make_image(b))
    assert m["dice"] == pytest.approx(2 * 2 / 6)
    assert m["hd95_mm"] == pytest.approx(1.0)
    assert 0 < m["assd_mm"] <= 1.0


def test_identical_and_empty():
    a = cube((20, 20, 20), (5, 5, 5), (10, 10, 10))
    same = evaluate(make_image(a), make_image(a))
    assert (same["dice"], same["hd95_mm"], same["assd_mm"]) == (1.0, 0.0, 0.0)
    empty = evaluate(make_image(np.zeros_like(a)), make_image(a))
    assert empty["dice"] == 0.0 and math.isinf(empty["hd95_mm"])
    assert empty["missed"] == 1 and empty["found"] == 0


def test_detection_counts():
    ref = cube((20, 40, 40), (5, 5, 5), (10, 10, 10)) + cube((20, 40, 40), (5, 20, 20), (10, 25, 25))
    pred = cube((20, 40, 40), (5, 5, 5), (10, 10, 10)) + cube((20, 40, 40), (12, 32, 32), (15, 36, 36))
    m = evaluate(make_image(pred), make_image(ref))
    assert (m["reference_structures"], m["found"], m["missed"], m["extra"]) == (2, 1, 1, 1)


def test_labeled_extent_dice_ignores_components_that_touch_no_reference_structure():
    ref = cube((20, 40, 40), (5, 5, 5), (10, 10, 10))
    pred = cube((20, 40, 40), (5, 5, 6), (10, 10, 11)) + cube((20, 40, 40), (12, 30, 30), (17, 35, 35))
    m = evaluate(make_image(pred), make_image(ref))
    assert m["dice"] == pytest.approx(2 * 100 / (125 + 125 + 125))
    assert m["dice_labeled_extent"] == pytest.approx(2 * 100 / (125 + 125))
    assert m["extra_voxels"] == 125


def test_evaluate_warns_when_a_label_value_or_the_grid_matches_nothing(tmp_path):
    import SimpleITK as sitk

    from conftest import run_cli
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:5, 4:9, 4:9] = 1
    reference = tmp_path / "ref.nii.gz"
    sitk.WriteImage(make_image(labels), str(reference))
    elsewhere = tmp_path / "pred.nii.gz"   # a prediction of another scan, 500 mm away
    sitk.WriteImage(make_image((labels > 0).astype(np.uint8), origin=(500.0, 0.0, 0.0)), str(elsewhere))
    result = run_cli("evaluate", "--prediction", elsewhere, "--reference", reference, "--label-values", "1,7",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert "warning: label value 7 matches no voxel of the reference" in result.stderr
    assert "warning: the prediction does not overlap the reference's grid" in result.stderr
    assert len(json.loads(result.stdout)["warnings"]) == 2
    same = run_cli("evaluate", "--prediction", reference, "--reference", reference, "--json")
    assert json.loads(same.stdout)["warnings"] == [] and same.stderr == ""
