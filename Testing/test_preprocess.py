from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REAL_DATA, make_image
from extremeaug.common.errors import ExtremeAugError
from extremeaug.common.config import SliceGrid
from extremeaug.data.preprocess import (Preprocessing, covering, fitted_slice_size, make_template, mask_to_slices,
                                        normalise, resolve_plane, scan_to_slices, slice_grid, slice_size_for,
                                        slices_to_scan)
from extremeaug.training.dataset import make_preprocessing

PERMUTED = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)   # index axes i, j, k along world y, z, x


def volume(size=(20, 30, 40), spacing=(1.0, 1.0, 1.0), direction=None):
    rng = np.random.default_rng(0)
    return make_image(rng.normal(100, 10, size[::-1]).astype(np.float32), spacing, direction=direction)


@pytest.mark.parametrize("spacing,direction,expected", [
    ((4.0, 0.5, 0.5), None, "sagittal"),          # thick left-right slices: a sagittal acquisition
    ((0.5, 4.0, 0.5), None, "coronal"),
    ((0.5, 0.5, 4.0), None, "axial"),
    ((0.5, 0.5, 4.0), PERMUTED, "sagittal"),      # k runs along world x: the thick axis is left-right
])
def test_auto_plane_is_the_acquisition_plane(spacing, direction, expected):
    assert resolve_plane(volume(spacing=spacing, direction=direction), "auto") == expected


def test_isotropic_tie_goes_to_the_thinnest_slab():
    assert resolve_plane(volume(size=(67, 221, 221)), "auto") == "sagittal"
    assert resolve_plane(volume(size=(221, 221, 50)), "auto") == "axial"
    assert resolve_plane(volume(), "coronal") == "coronal"
    with pytest.raises(ExtremeAugError, match="unknown plane"):
        resolve_plane(volume(), "oblique")


@pytest.mark.parametrize("plane,count", [("sagittal", 20), ("coronal", 30), ("axial", 40)])
def test_slices_are_256_square_along_the_plane(plane, count):
    image = volume(spacing=(1.0, 2.0, 0.7))
    slices, grid = scan_to_slices(image, Preprocessing(plane, template=make_template(image)))
    assert slices.shape == (count, 256, 256) and slices.dtype == np.float32
    assert 0.0 <= slices.min() and slices.max() <= 1.0
    # same physical extent: spacing x size is preserved on every axis
    assert np.allclose(np.array(grid.GetSpacing()) * grid.GetSize(), np.array(image.GetSpacing()) * image.GetSize())


def test_histogram_matching_removes_scanner_scaling_and_contrast(phantoms):
    a = sitk.ReadImage(str(phantoms[0][0]), sitk.sitkFloat32)
    prep = Preprocessing("sagittal", template=make_template(a))
    b = a * 3.7 + 250.0                       # another scanner's gain and offset
    c = sitk.Pow(a / 1000.0, 1.4) * 800.0     # another contrast
    na = sitk.GetArrayFromImage(normalise(a, prep))
    for other in (b, c):
        nb = sitk.GetArrayFromImage(normalise(other, prep))
        assert 0.0 <= nb.min() and nb.max() <= 1.0
        assert np.abs(np.percentile(na, [25, 50, 75, 95]) - np.percentile(nb, [25, 50, 75, 95])).max() < 0.05


def itk_histogram_matching(image: sitk.Image, prep: Preprocessing) -> np.ndarray:
    """What normalise computed before it moved to numpy: ITK's filter, with the template as its reference."""
    matcher = sitk.HistogramMatchingImageFilter()
    matcher.SetNumberOfHistogramLevels(prep.histogram_levels)
    matcher.SetNumberOfMatchPoints(prep.match_points)
    matcher.ThresholdAtMeanIntensityOn()
    reference = sitk.GetImageFromArray(np.asarray(prep.template, np.float32).reshape(1, 1, -1))
    return np.clip(sitk.GetArrayFromImage(matcher.Execute(sitk.Cast(image, sitk.sitkFloat32), reference)), 0, 1)


def test_numpy_histogram_matching_equals_itks_filter(phantoms):
    template_scan = sitk.ReadImage(str(phantoms[0][0]), sitk.sitkFloat32)
    prep = Preprocessing("sagittal", template=make_template(template_scan))
    images = [sitk.ReadImage(str(phantoms[1][0]), sitk.sitkFloat32), template_scan * 3.7 + 250.0,
              sitk.Pow(template_scan / 1000.0, 1.4) * 800.0,
              make_image(np.random.default_rng(0).choice([0.0, 10.0, 20.0, 30.0], (20, 30, 40)).astype(np.float32))]
    images += [sitk.ReadImage(str(REAL_DATA / f"case{c}_image.nii.gz"), sitk.sitkFloat32)
               for c in (11, 20) if (REAL_DATA / f"case{c}_image.nii.gz").exists()]
    for image in images:
        ours = sitk.GetArrayFromImage(normalise(image, prep))
        assert np.abs(ours - itk_histogram_matching(image, prep)).max() < 1e-5


def test_mask_slices_follow_the_image():
    array = np.zeros((10, 40, 50), np.float32)
    array[3:7, 10:20, 20:35] = 100
    image = make_image(array + np.random.default_rng(1).normal(0, 1, array.shape).astype(np.float32), (1.2, 0.8, 3.0))
    mask = make_image((array > 0).astype(np.uint8), (1.2, 0.8, 3.0))
    prep = Preprocessing("axial", template=make_template(image))
    slices, grid = scan_to_slices(image, prep)
    m = mask_to_slices(mask, grid, prep.axis)
    assert m.shape == slices.shape and set(np.unique(m)) == {0.0, 1.0}
    assert slices[m > 0].mean() > 0.9 and slices[m == 0].mean() < 0.5


@pytest.mark.parametrize("kind", ["normal", "four values", "a tiny spread (equal edges)", "long-tailed"])
def test_histogram_bins_found_by_arithmetic_equal_a_binary_search(kind):
    """`bin_index` must put every voxel in the bin np.searchsorted finds among the float32 edges, the edges
    themselves and their float32 neighbours included, or the quantiles (and every normalised slice) would move."""
    from extremeaug.data.histogram import bin_index

    f32, rng = np.float32, np.random.default_rng(0)
    values = {"normal": rng.normal(100, 30, 20000), "four values": rng.choice([0.0, 10.0, 20.0, 30.0], 20000),
              "a tiny spread (equal edges)": rng.random(20000) * 1e-3 + 7, "long-tailed": rng.lognormal(3, 2, 20000)}
    v = values[kind].astype(f32)
    for levels in (2, 16, 1024, 4096):
        threshold, vmax = f32(v.mean(dtype=np.float64)), f32(v.max())
        interval = f32((vmax - threshold) / f32(levels))
        mins = (threshold + np.arange(levels, dtype=f32) * interval).astype(f32)
        mins[0] = v.min()
        edges = mins[mins >= threshold]
        counted = np.concatenate([v, edges, np.nextafter(edges, f32(np.inf)), np.nextafter(edges, f32(-np.inf))])
        counted = counted[(counted >= threshold) & (counted <= vmax)].astype(f32)
        assert np.array_equal(bin_index(counted, mins, threshold, interval),
                              np.searchsorted(mins[1:], counted, side="right"))


@pytest.mark.parametrize("size, plane, expected", [
    ((35, 51, 35), "sagittal", 64),      # a hippocampus crop: 64 x 64, 2.3 times its 35 x 51 pixels (not 37)
    ((24, 128, 160), "sagittal", 160),   # the phantom: 160 is already a multiple of 32
    ((221, 221, 67), "axial", 224),      # a lumbar MRI's 221 x 221 in-plane
    ((512, 512, 40), "axial", 512),      # a CT: its own resolution, not cut to 256
    ((900, 700, 20), "axial", 512),      # larger than the fitted grid's top: 512
])
def test_the_fitted_grid_follows_the_scans_in_plane_size(size, plane, expected):
    image = sitk.Image(list(size), sitk.sitkFloat32)
    assert fitted_slice_size(image, plane) == expected == slice_size_for(image, plane, SliceGrid.FIT)
    assert slice_size_for(image, plane, SliceGrid.PAPER) == 256   # the paper's set-up stays available


def test_a_fitted_grid_keeps_every_in_plane_voxel_of_a_small_crop():
    """35 x 51 in-plane on a 64 x 64 grid: each axis stretched on its own, nothing padded, and a mask taken to the
    grid and back covers the voxels it covered."""
    mask = np.zeros((35, 51, 35), np.uint8)   # z, y, x
    mask[10:25, 20:30, 12:20] = 1
    image = make_image(mask.astype(np.float32))
    prep = Preprocessing(plane="sagittal", slice_size=fitted_slice_size(image, "sagittal"), template=[0.0, 1.0])
    slices, grid = scan_to_slices(image, prep)
    assert slices.shape == (35, 64, 64) and grid.GetSize() == (35, 64, 64)
    back = slices_to_scan(mask_to_slices(sitk.Cast(image, sitk.sitkUInt8), grid, 0), grid, 0, image)
    assert ((sitk.GetArrayFromImage(back) > 0.5) == mask.astype(bool)).mean() > 0.99


def _spine_like(shape_zyx=(221, 221, 20), block=(slice(100, 120), slice(90, 130), slice(5, 15))):
    """A noisy sagittal scan (x is the slice axis) with a 20 x 40 mm block, and the block's mask."""
    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 10.0, shape_zyx).astype(np.float32)
    mask = np.zeros(shape_zyx, np.uint8)
    mask[block] = 1
    array[mask > 0] += 200.0
    return make_image(array), make_image(mask)


def _block_pixels(image, mask, prep):
    slices, grid = scan_to_slices(image, prep)
    return mask_to_slices(mask, grid, prep.axis).sum(), slices, grid


def test_the_fitted_grid_keeps_the_training_scans_own_grid_and_stores_its_pixel_size():
    image, _ = _spine_like()
    prep = make_preprocessing(image, "sagittal", SliceGrid.FIT)
    assert prep.slice_size == 224 and np.allclose(prep.pixel_mm, [221 / 224] * 2)
    assert covering(prep, image) == prep   # segmenting the training scan: its own window
    stretched = slice_grid(sitk.DICOMOrient(image, "LPS"), 0, 224)
    grid = scan_to_slices(image, prep)[1]
    assert np.allclose(grid.GetSpacing(), stretched.GetSpacing()) and np.allclose(grid.GetOrigin(), stretched.GetOrigin())
    assert make_preprocessing(image, "sagittal", SliceGrid.PAPER).pixel_mm is None   # the paper stretches


def test_the_fitted_grid_shows_a_scan_of_another_field_of_view_at_the_training_scans_pixel_size():
    """The same anatomy cut to 160 mm, or padded to 300 mm, along one in-plane axis: stretched to the model's 224
    pixels, the block would appear 1.38 times (0.74 times) as tall; at the training scan's pixel size it keeps its
    size, and the window grows to hold the larger scan whole (320 pixels)."""
    image, mask = _spine_like()
    prep = make_preprocessing(image, "sagittal", SliceGrid.FIT)
    own = _block_pixels(image, mask, prep)[0]
    cut, cut_mask = image[:, 30:190, :], mask[:, 30:190, :]
    wide = sitk.ConstantPad(image, (0, 40, 0), (0, 39, 0), 100.0)
    wide_mask = sitk.ConstantPad(mask, (0, 40, 0), (0, 39, 0), 0)
    for scan, scan_mask, stretch in ((cut, cut_mask, 221 / 160), (wide, wide_mask, 221 / 300)):
        fitted = covering(prep, scan)
        assert abs(_block_pixels(scan, scan_mask, fitted)[0] / own - 1) < 0.02
        assert abs(_block_pixels(scan, scan_mask, replace(prep, pixel_mm=None))[0] / own - stretch) < 0.05
    assert covering(prep, cut).slice_size == 224 and covering(prep, wide).slice_size == 320
    assert covering(replace(prep, pixel_mm=None), wide) == replace(prep, pixel_mm=None)


def test_a_window_that_pads_the_scan_normalises_it_as_its_own_voxels_do():
    """The padding is not part of the scan's histogram: the scan's pixels are the same in a 224 and a 320 window
    (ITK's matching counts the voxels above the mean, which padding would move)."""
    image, _ = _spine_like()
    prep = make_preprocessing(image, "sagittal", SliceGrid.FIT)
    small, large = scan_to_slices(image, prep)[0], scan_to_slices(image, replace(prep, slice_size=320))[0]
    assert np.allclose(large[:, 48:272, 48:272], small, atol=1e-5)
    assert (large[:, :40] == large[:, :40].min()).all()   # the padding: the scan's lowest value


def test_a_scan_wider_than_the_largest_window_is_covered_by_larger_pixels():
    image, _ = _spine_like((20, 900, 10), (slice(5, 10), slice(400, 420), slice(2, 8)))
    prep = Preprocessing(plane="sagittal", slice_size=224, template=[0.0, 1.0], pixel_mm=[1.0, 1.0])
    grown = covering(prep, image)
    assert grown.slice_size == 512 and np.allclose(grown.pixel_mm, [900 / 512] * 2)


@pytest.mark.parametrize("bad", [[0.0, 1.0], [1.0], "1,1", [1.0, float("nan")]])
def test_a_damaged_pixel_size_in_a_models_metadata_is_refused(bad):
    with pytest.raises(ValueError, match="pixel size"):
        Preprocessing.from_dict({"plane": "sagittal", "template": [0.0, 1.0], "pixel_mm": bad})
