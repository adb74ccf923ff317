from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import make_image
from extremeaug.evaluate import evaluate


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
