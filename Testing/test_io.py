from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image, oblique_direction, write_dicom_series
from extremeaug.common.errors import ExtremeAugError
from extremeaug.data.io import read_binary, read_mask, read_scan, write_image


@pytest.fixture
def scan_array():
    rng = np.random.default_rng(0)
    return rng.normal(100, 20, (12, 20, 24)).astype(np.float32)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_formats_round_trip_geometry(tmp_path, scan_array, ext):
    image = make_image(scan_array, (0.7, 0.9, 3.0), (10.0, -5.0, 2.5), oblique_direction())
    path = write_image(image, tmp_path / f"scan{ext}")
    back = read_scan(path)
    assert np.allclose(sitk.GetArrayFromImage(back), scan_array, atol=1e-4)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_dicom_series_folder(tmp_path, scan_array):
    image = make_image(scan_array.astype(np.int16), (0.8, 0.8, 2.0), (-30.0, 12.0, 40.0))
    folder = write_dicom_series(image, tmp_path / "dicom")
    back = read_scan(folder)
    assert back.GetSize() == image.GetSize()
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(sitk.GetArrayFromImage(back), scan_array.astype(np.int16))


def test_seg_nrrd_labelmap_and_layers(tmp_path, scan_array):
    scan = make_image(scan_array)
    labels = np.zeros(scan_array.shape, np.uint8)
    labels[2:5, 3:8, 4:9] = 1
    labels[7:10, 10:15, 12:20] = 2
    seg = make_image(labels)
    for key, value in [("Segment0_ID", "disc"), ("Segment0_LabelValue", "1"), ("Segment1_ID", "other"),
                       ("Segment1_LabelValue", "2")]:
        seg.SetMetaData(key, value)
    path = tmp_path / "labels.seg.nrrd"
    write_image(seg, path)
    assert sitk.GetArrayFromImage(read_mask(path, scan)).sum() == (labels > 0).sum()
    assert sitk.GetArrayFromImage(read_mask(path, scan, [2])).sum() == (labels == 2).sum()
    # overlapping segments are stored as layers (a 4D NRRD); they are united
    layers = np.stack([labels == 1, labels == 2]).astype(np.uint8)
    layered = sitk.GetImageFromArray(layers, isVector=False)
    layered_path = tmp_path / "layers.seg.nrrd"
    sitk.WriteImage(layered, str(layered_path))
    assert sitk.GetArrayFromImage(read_binary(layered_path)).sum() == (labels > 0).sum()


def test_mask_on_another_grid_is_resampled(tmp_path, scan_array):
    scan = make_image(scan_array, (1.0, 1.0, 2.0))
    fine = np.zeros((24, 40, 48), np.uint8)
    fine[4:20, 10:30, 10:30] = 3
    mask = make_image(fine, (0.5, 0.5, 1.0), (-0.25, -0.25, -0.5))
    write_image(mask, tmp_path / "m.nii.gz")
    on_scan = read_mask(tmp_path / "m.nii.gz", scan)
    assert on_scan.GetSize() == scan.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(on_scan))) == {0, 1}
    assert sitk.GetArrayFromImage(on_scan)[2:10, 5:15, 5:15].all()


@pytest.mark.parametrize("case", ["missing", "text", "2d", "4d", "nan", "constant", "vector", "one-slice"])
def test_bad_scans(tmp_path, case):
    path = tmp_path / "scan.nii.gz"
    if case == "text":
        path = tmp_path / "scan.nii"
        path.write_text("not an image")
    elif case == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), str(path))
    elif case == "4d":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(3, 4, 5, 6).astype(np.float32), isVector=False),
                        str(path))
    elif case == "nan":
        path = tmp_path / "scan.mha"   # (SimpleITK's NIfTI writer does not keep NaN)
        a = np.random.rand(4, 5, 6).astype(np.float32)
        a[1, 2, 3] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    elif case == "constant":
        sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 7, np.int16)), str(path))
    elif case == "one-slice":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(1, 20, 20).astype(np.float32)), str(path))
    elif case == "vector":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 5, 6, 3).astype(np.float32), isVector=True),
                        str(path))
    expected = {"missing": "no such file", "text": "not an image", "2d": "2D", "4d": "4D", "nan": "NaN",
                "constant": "constant", "vector": "components", "one-slice": "single 2D slice"}[case]
    with pytest.raises(ExtremeAugError, match=expected):
        read_scan(path)


def test_empty_and_disjoint_masks(tmp_path, scan_array):
    scan = make_image(scan_array)
    write_image(make_image(np.zeros(scan_array.shape, np.uint8)), tmp_path / "empty.nii.gz")
    with pytest.raises(ExtremeAugError, match="empty"):
        read_mask(tmp_path / "empty.nii.gz", scan)
    far = np.ones((4, 4, 4), np.uint8)
    write_image(make_image(far, origin=(500.0, 500.0, 500.0)), tmp_path / "far.nii.gz")
    with pytest.raises(ExtremeAugError, match="does not overlap"):
        read_mask(tmp_path / "far.nii.gz", scan)
    some = np.zeros(scan_array.shape, np.uint8)
    some[3, 3, 3] = 1
    write_image(make_image(some), tmp_path / "label1.nii.gz")
    with pytest.raises(ExtremeAugError, match=r"label values \[2\]"):
        read_mask(tmp_path / "label1.nii.gz", scan, [2])
