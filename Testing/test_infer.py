from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image, oblique_direction
from extremeaug.common.structures import default_structure
from extremeaug.data.io import write_image
from extremeaug.data.decision import across_slices, clean_structures
from extremeaug.inference.segmenter import Segmenter, segment_file


def scan_like(phantom_path, spacing, direction, origin=(12.5, -40.0, 7.25)):
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_path)))[:, 10:90, :]
    return make_image(array, spacing, origin, direction)


@pytest.mark.parametrize("spacing,direction", [
    ((3.0, 1.5, 1.5), None),
    ((0.9, 1.3, 4.0), oblique_direction(25, 10)),
    ((2.2, 0.7, 1.1), oblique_direction(-15, 30)),
    ((1.0, 1.0, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),   # axes permuted
])
def test_output_geometry_equals_input(tmp_path, phantoms, random_model, spacing, direction):
    scan = scan_like(phantoms[0][0], spacing, direction)
    write_image(scan, tmp_path / "scan.nrrd")
    segment_file(str(random_model), str(tmp_path / "scan.nrrd"), str(tmp_path / "mask.nii.gz"),
                 str(tmp_path / "prob.nii.gz"), device="cpu", threshold=0.5)
    for name in ("mask.nii.gz", "prob.nii.gz"):
        out = sitk.ReadImage(str(tmp_path / name))
        assert out.GetSize() == scan.GetSize()
        assert np.allclose(out.GetSpacing(), scan.GetSpacing(), atol=1e-5)
        assert np.allclose(out.GetOrigin(), scan.GetOrigin(), atol=1e-4)
        assert np.allclose(out.GetDirection(), scan.GetDirection(), atol=1e-5)
    prob = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "prob.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))
    assert 0 <= prob.min() and prob.max() <= 1
    assert np.array_equal(mask, (prob > 0.5).astype(np.uint8))


def physical_points(image: sitk.Image) -> np.ndarray:
    """World coordinates of every voxel, as an array [k, j, i, 3]."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in image.GetSize()], indexing="ij"), -1).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    pts = np.array(image.GetOrigin()) + (idx * np.array(image.GetSpacing())) @ direction.T
    return pts.transpose(2, 1, 0, 3)


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_slice_values_land_on_the_voxels_they_came_from(phantoms, random_model, plane):
    """A linear function of world position, written on the slice grid and put back on an oblique,
    anisotropic scan grid, must equal the function at the scan's voxels (linear interpolation is exact)."""
    from extremeaug.data.preprocess import Preprocessing, scan_to_slices, slices_to_scan

    scan = scan_like(phantoms[1][0], (0.9, 1.3, 4.0), oblique_direction(25, 10))
    prep = Preprocessing(plane, template=Segmenter(random_model, "cpu").prep.template)
    slices, grid = scan_to_slices(scan, prep)
    f = lambda p: 0.01 * p[..., 0] + 0.02 * p[..., 1] - 0.015 * p[..., 2]
    on_grid = np.moveaxis(f(physical_points(grid)), 2 - prep.axis, 0)
    assert on_grid.shape == slices.shape
    back = sitk.GetArrayFromImage(slices_to_scan(on_grid, grid, prep.axis, scan))
    expected = f(physical_points(scan))
    inner = (slice(1, -1),) * 3
    assert np.allclose(back[inner], expected[inner], atol=1e-3)


def test_small_components_removed_by_physical_size():
    a = np.zeros((20, 40, 40), np.uint8)
    a[2:12, 5:25, 5:25] = 1        # 4000 voxels
    a[15:17, 30:32, 30:32] = 1     # 8 voxels
    image = make_image(a, (2.0, 2.0, 2.0))   # 8 mm3 per voxel: the speck is 64 mm3
    one = [default_structure()]
    kept = sitk.GetArrayFromImage(clean_structures(image, one, 100.0))
    assert kept.sum() == 4000
    assert sitk.GetArrayFromImage(clean_structures(image, one, 50.0)).sum() == 4008
    assert sitk.GetArrayFromImage(clean_structures(image, one, 0)).sum() == 4008


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_runtime_failure_is_a_clear_error(tmp_path, phantoms, random_model):
    """A graph that cannot run on the slices (here: it wants 3 channels) fails with one clear message."""
    import json as _json

    import onnxruntime as ort
    import torch

    from extremeaug.common.errors import ExtremeAugError
    from extremeaug.networks.export import torchscript_exporter, with_metadata

    meta = _json.loads(ort.InferenceSession(str(random_model), providers=["CPUExecutionProvider"])
                       .get_modelmeta().custom_metadata_map["extremeaug"])
    import io

    buffer = io.BytesIO()
    torch.onnx.export(torch.nn.Conv2d(3, 1, 3, padding=1), (torch.zeros(1, 3, 32, 32),), buffer,
                      **torchscript_exporter(), input_names=["image"], dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}})
    path = tmp_path / "three_channels.onnx"
    path.write_bytes(with_metadata(buffer.getvalue(), meta))
    with pytest.raises(ExtremeAugError, match="onnxruntime failed on CPUExecutionProvider"):
        Segmenter(path, "cpu").segment(sitk.ReadImage(str(phantoms[1][0]), sitk.sitkFloat32))


def test_a_provider_that_did_not_start_is_said_in_one_line_never_silently():
    from extremeaug.inference.segmenter import CUDA_OPTIONS, provider_warning, providers_for

    asked = [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    assert provider_warning(asked, ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    warning = provider_warning(asked, ["CPUExecutionProvider"])
    assert "could not start CUDAExecutionProvider" in warning and "CPUExecutionProvider" in warning
    assert "\n" not in warning
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    assert provider_warning(providers_for("cpu"), ["CPUExecutionProvider"]) is None


def test_segment_at_a_smaller_slice_size_runs_the_model_on_slices_of_that_size(tmp_path, phantoms, random_model):
    """--slice-size 224: the slices are resampled to 224 x 224, the model runs on them, and the probabilities come
    back on the scan's own grid; computed here by hand from the same steps at 224, and unlike the 256 result."""
    from dataclasses import replace

    from extremeaug.data.preprocess import scan_to_slices, slices_to_scan

    scan = sitk.ReadImage(str(phantoms[1][0]), sitk.sitkFloat32)
    trained = Segmenter(random_model, "cpu")
    smaller = Segmenter(random_model, "cpu", slice_size=224)
    slices, grid = scan_to_slices(scan, replace(trained.prep, slice_size=224))
    assert slices.shape[1:] == (224, 224)
    net = trained.session.run(None, {"image": slices[:, None]})[0][:, 0]
    by_hand = sitk.GetArrayFromImage(slices_to_scan(net, grid, trained.prep.axis, scan))
    got = smaller.class_probabilities(scan)[0]
    assert got.shape == by_hand.shape == sitk.GetArrayViewFromImage(scan).shape
    assert np.allclose(got, by_hand, atol=1e-5)
    assert not np.allclose(got, trained.class_probabilities(scan)[0], atol=1e-3)
    info = segment_file(str(random_model), str(phantoms[1][0]), str(tmp_path / "mask.nii.gz"), device="cpu",
                        slice_size=224)
    assert info["slice_size"] == 224 and sitk.ReadImage(str(tmp_path / "mask.nii.gz")).GetSize() == scan.GetSize()


def test_a_slice_size_the_model_was_not_trained_for_is_refused_naming_the_closest(tmp_path, phantoms, random_model):
    """Sizes the network cannot take (not a multiple of 32) or whose scale training never showed it (outside the
    augmentation's 0.8-1.2) are refused before anything is written; a model trained without augmentation keeps its
    own size."""
    from conftest import one_line_error, run_cli
    from extremeaug.common.errors import ExtremeAugError
    from extremeaug.networks.export import with_metadata

    out = tmp_path / "mask.nii.gz"
    one_line_error(run_cli("segment", "--model", random_model, "--image", phantoms[1][0], "--out", out,
                           "--slice-size", 200), "slice size 200", "224, 256, 288", "the closest is 224")
    assert not out.exists()
    with pytest.raises(ExtremeAugError, match="0.8-1.2x the 256 it was trained on.*the closest is 224"):
        Segmenter(random_model, "cpu", slice_size=192)
    with pytest.raises(ExtremeAugError, match="the closest is 288"):
        Segmenter(random_model, "cpu", slice_size=320)
    meta = dict(Segmenter(random_model, "cpu").metadata, augmentation=False)
    plain = tmp_path / "no_augmentation.onnx"
    plain.write_bytes(with_metadata(random_model.read_bytes(), meta))
    with pytest.raises(ExtremeAugError, match="trained without augmentation, so it segments at its own 256 only"):
        Segmenter(plain, "cpu", slice_size=224)
    assert Segmenter(plain, "cpu", slice_size=256).prep.slice_size == 256
    done = run_cli("segment", "--model", random_model, "--image", phantoms[1][0], "--out", out, "--slice-size", 224)
    assert done.returncode == 0 and "on 224 x 224 slices" in done.stdout, done.stderr


def _two_structure_model(path, scan_path, slice_size: bool = True, **meta):
    """An untrained ONNX model of two structures, with or without a slice size (an older engine's), and `meta`."""
    import torch

    from extremeaug.data.preprocess import Preprocessing, make_template
    from extremeaug.networks.export import export_onnx
    from extremeaug.networks.model import ResUNet

    torch.manual_seed(1)
    scan = sitk.ReadImage(str(scan_path), sitk.sitkFloat32)
    prep = Preprocessing("sagittal", template=make_template(scan)).to_dict()
    if not slice_size:
        del prep["slice_size"]
    labels = [dict(default_structure().to_dict(), value=v, name=f"s{v}") for v in (1, 2)]
    export_onnx(ResUNet(4, classes=2), path, {"preprocessing": prep, "threshold": 0.5, "min_component_mm3": 0.0,
                                              "width": 4, "labels": labels, **meta})
    return scan


def _shared_voxels(probs):
    """Probabilities where two neighbours share 20 x 20 x 4 voxels at 0.4 each: neither passes 0.5, but the
    probability of either, 1 - 0.6 * 0.6 = 0.64, does."""
    shared = np.zeros_like(probs)
    shared[:, 40:60, 40:60, 5:9] = 0.4
    return shared


def test_a_model_from_before_slice_sizes_and_union_decisions_segments_as_it_always_did(tmp_path, phantoms):
    """Models written before the fitted grid carry no slice size, and before the union decision no `union`: they
    segment on 256 x 256 slices and decide on the highest structure probability, whatever training's defaults are
    now; with two structures that is not the union decision (checked on the same probabilities)."""
    import json

    import onnx

    from extremeaug.networks.metadata import METADATA_KEY

    path = tmp_path / "old.onnx"
    scan = _two_structure_model(path, phantoms[1][0], slice_size=False)
    meta = json.loads(next(p.value for p in onnx.load(str(path)).metadata_props if p.key == METADATA_KEY))
    assert "slice_size" not in meta["preprocessing"] and "union" not in meta
    old = Segmenter(path, "cpu")
    assert old.prep.slice_size == 256
    probs = old.class_probabilities(scan)
    decided = sitk.GetArrayFromImage(old.decide(probs, scan, uncertainty=False)[0])
    highest = np.where(probs.max(0) > 0.5, np.array([1, 2])[probs.argmax(0)], 0)
    assert (decided == highest).all()
    shared = _shared_voxels(probs)
    assert not sitk.GetArrayFromImage(old.decide(shared, scan, uncertainty=False)[0]).any()
    union = sitk.GetArrayFromImage(old.decide(shared, scan, uncertainty=False, union=True)[0])
    assert (union != 0).sum() == 4 * 20 * 20


def test_a_model_stored_with_the_union_decision_keeps_voxels_its_structures_share(tmp_path, phantoms):
    """Training stores `union: true` by default (test_train); segmenting then follows it without being asked."""
    path = tmp_path / "union.onnx"
    scan = _two_structure_model(path, phantoms[1][0], union=True)
    model = Segmenter(path, "cpu")
    shared = _shared_voxels(model.class_probabilities(scan))
    decided = sitk.GetArrayFromImage(model.decide(shared, scan, uncertainty=False)[0])
    assert (decided != 0).sum() == 4 * 20 * 20 and set(np.unique(decided)) == {0, 1}   # the likeliest: a tie, 1
    assert not sitk.GetArrayFromImage(model.decide(shared, scan, uncertainty=False, union=False)[0]).any()


def test_across_slices_averages_a_slice_with_its_neighbours_by_their_distance():
    """1 mm apart a neighbour weighs half the slice ([1, 2, 1] / 4); 3 mm apart next to nothing; the first and last
    slice stand in for their missing neighbour, so a uniform stack stays as it is."""
    spike = np.zeros((5, 2, 3, 3), np.float32)
    spike[2] = 1.0
    assert across_slices(spike, 1.0)[:, 1, 0, 0].tolist() == [0.0, 0.25, 0.5, 0.25, 0.0]
    far = across_slices(spike, 3.0)[:, 0, 2, 2]
    assert far[2] > 0.99 and 0 < far[1] == far[3] < 0.003
    flat = np.full((4, 1, 2, 2), 0.7, np.float32)
    assert np.allclose(across_slices(flat, 1.0), flat) and across_slices(flat, 1.0).dtype == np.float32


def test_a_model_that_smooths_slices_averages_each_sagittal_slice_with_its_neighbours_and_an_older_one_does_not(
        tmp_path, phantoms):
    """`smooth_slices` averages the slices' probabilities before they go back onto the scan's grid; the in-plane
    resampling is linear and per slice, so on the scan that is `across_slices` along its left-right (sagittal slice)
    axis. The same network stored without the setting gives the probabilities it always did."""
    _two_structure_model(tmp_path / "new.onnx", phantoms[1][0], smooth_slices=True)
    scan = _two_structure_model(tmp_path / "old.onnx", phantoms[1][0])
    scan.SetSpacing((1.0,) + scan.GetSpacing()[1:])   # 1 mm slices: the phantom's 3 mm would all but keep them apart
    new, old = Segmenter(tmp_path / "new.onnx", "cpu"), Segmenter(tmp_path / "old.onnx", "cpu")
    each = new.class_probabilities(scan, smooth=False)
    smoothed = new.class_probabilities(scan)
    expected = np.moveaxis(across_slices(np.moveaxis(each, 3, 0), 1.0), 0, 3)   # [K, z, y, x]: x is left-right
    assert np.abs(smoothed - each).max() > 1e-4 > 1e-6 > np.abs(smoothed - expected).max()   # an untrained net
    assert not old.smooth() and np.array_equal(old.class_probabilities(scan), each)


def test_a_model_with_a_pixel_size_segments_a_scan_of_a_wider_field_of_view_whole(tmp_path):
    """A model of 160-pixel slices at 1 mm and a 150 x 250 mm scan: the window grows to 256 pixels at 1 mm, so the
    model answers everywhere on the scan; at its own 160 pixels it would see only the middle 160 mm. Asked for fewer
    pixels (`--slice-size`), the same field of view is shown at a larger pixel size."""
    import torch

    from extremeaug.data.preprocess import Preprocessing, make_template
    from extremeaug.networks.export import export_onnx
    from extremeaug.networks.model import ResUNet

    rng = np.random.default_rng(0)
    scan = make_image(rng.normal(100.0, 20.0, (150, 250, 6)).astype(np.float32))   # z, y, x: 6 sagittal slices
    torch.manual_seed(0)
    prep = Preprocessing("sagittal", slice_size=160, template=make_template(scan), pixel_mm=[1.0, 1.0])
    export_onnx(ResUNet(4), tmp_path / "m.onnx", {"preprocessing": prep.to_dict(), "threshold": 0.5,
                                                  "min_component_mm3": 0.0, "width": 4})
    for asked, pixel in ((None, 1.0), (128, 1.25)):
        segmenter = Segmenter(tmp_path / "m.onnx", "cpu", slice_size=asked)
        assert segmenter.prep.pixel_mm == [pixel, pixel]
        probs = segmenter.class_probabilities(scan, tta=False, smooth=False)
        assert probs.shape == (1, 150, 250, 6) and (probs > 0.01).all()   # an untrained model's ~0.5, corners too
