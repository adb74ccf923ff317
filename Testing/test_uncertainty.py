"""The voxel-wise uncertainty map, test-time augmentation and anatomy-based clean-up, on real onnxruntime runs."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image, oblique_direction, run_cli
from extremeaug.common.errors import ExtremeAugError
from extremeaug.common.structures import default_structure
from extremeaug.data.io import image_like, write_image
from extremeaug.data.preprocess import Preprocessing, make_template
from extremeaug.evaluation.metrics import evaluate, uncertainty_scores
from extremeaug.data.decision import clean_structures, uncertainty_map
from extremeaug.inference.segmenter import Segmenter
from extremeaug.networks.export import with_metadata


def threshold_model(path, scan: sitk.Image, steepness: float = 12.0, **metadata):
    """A genuine ONNX model whose probability is sigmoid(steepness * (intensity - 0.5)) of the normalised slice:
    a known, position-free response, so what the pipeline does around it can be checked exactly."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sub", ["image", "half"], ["centred"]), helper.make_node("Mul", ["centred", "k"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["probability"])], "threshold",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("k", TensorProto.FLOAT, [],
                                                                                       [steepness])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"format_version": 1, "preprocessing": Preprocessing("sagittal", template=make_template(scan)).to_dict(),
            "threshold": 0.5, "min_component_mm3": 0.0, "width": 1, **metadata}
    path.write_bytes(with_metadata(model.SerializeToString(), meta))
    return path


def blurred_box(spacing=(1.0, 1.0, 1.0), direction=None) -> tuple:
    box = np.zeros((48, 64, 40), np.float32)
    box[8:30, 34:60, 20:36] = 1   # off the slice centre, where a wrong inverse would move it most
    image = sitk.SmoothingRecursiveGaussian(make_image(100 + 900 * box, spacing, (4.0, -7.0, 2.5), direction), 2.0)
    return image, box


def test_one_structure_uncertainty_is_one_minus_the_margin_and_rival_structures_count():
    p = np.array([[0.02, 0.3, 0.5, 0.8, 0.99]], np.float32)
    assert np.allclose(uncertainty_map(p), 1 - np.abs(2 * p[0] - 1), atol=1e-6)
    rivals = np.array([[0.9], [0.85]], np.float32)       # two confident, competing levels
    clear = np.array([[0.9], [0.05]], np.float32)
    assert uncertainty_map(rivals)[0] > 0.9 and uncertainty_map(clear)[0] == pytest.approx(0.2, abs=1e-6)


def test_uncertainty_map_is_written_on_the_scan_grid_and_is_highest_on_the_blurred_boundary(tmp_path):
    scan, box = blurred_box((1.2, 0.8, 1.5), oblique_direction(15, -10))
    write_image(scan, tmp_path / "scan.nrrd")
    model = threshold_model(tmp_path / "model.onnx", scan)
    r = run_cli("segment", "--model", model, "--image", tmp_path / "scan.nrrd", "--out", tmp_path / "mask.nrrd",
                "--uncertainty", tmp_path / "uncertainty.nrrd", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    u_image = sitk.ReadImage(str(tmp_path / "uncertainty.nrrd"))
    assert u_image.GetSize() == scan.GetSize() and np.allclose(u_image.GetDirection(), scan.GetDirection())
    assert np.allclose(u_image.GetOrigin(), scan.GetOrigin()) and np.allclose(u_image.GetSpacing(), scan.GetSpacing())
    u = sitk.GetArrayFromImage(u_image)
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(make_image(box.astype(np.uint8)), [4] * 3)) > 0
    shell = (sitk.GetArrayFromImage(sitk.BinaryDilate(make_image(box.astype(np.uint8)), [1] * 3)) > 0) & ~(
        sitk.GetArrayFromImage(sitk.BinaryErode(make_image(box.astype(np.uint8)), [1] * 3)) > 0)
    outside = ~(sitk.GetArrayFromImage(sitk.BinaryDilate(make_image(box.astype(np.uint8)), [4] * 3)) > 0)
    assert 0 <= u.min() and u.max() <= 1
    assert u[shell].mean() > 0.3 and u[shell].mean() > 5 * max(u[inner].mean(), u[outside].mean())
    r = run_cli("segment", "--model", model, "--image", tmp_path / "scan.nrrd", "--out", tmp_path / "tta.nrrd",
                "--tta", "--min-relative-size", "0.2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    tta = sitk.ReadImage(str(tmp_path / "tta.nrrd"))
    assert tta.GetSize() == scan.GetSize() and evaluate(tta, sitk.ReadImage(str(tmp_path / "mask.nrrd")))["dice"] > 0.97


def test_tta_maps_every_pose_back_onto_the_scan_grid(tmp_path):
    """With a model that has no notion of position, each rotated and scaled pose mapped back lands where the
    plain prediction is: a wrong inverse would smear or shift the averaged probabilities."""
    scan, box = blurred_box((1.0, 0.9, 1.3), oblique_direction(-20, 12))
    segmenter = Segmenter(threshold_model(tmp_path / "model.onnx", scan), "cpu")
    plain, _, plain_u = segmenter.analyse(scan)
    tta, top, tta_u = segmenter.analyse(scan, tta=True)
    for image in (tta, top, tta_u):
        assert image.GetSize() == scan.GetSize() and np.allclose(image.GetOrigin(), scan.GetOrigin())
        assert np.allclose(image.GetDirection(), scan.GetDirection())
    assert evaluate(tta, plain)["dice"] > 0.99     # a pose mapped back with its forward transform: 0.95
    assert evaluate(tta, image_like(box, scan))["dice"] > 0.9


@pytest.mark.parametrize("key,flag,said", [("tta", "tta", "averaged over poses"),
                                            ("smooth_slices", "smooth-slices", "each slice averaged with its neighbours")])
def test_a_decision_setting_stored_with_the_model_is_followed_unless_told_not_to_and_an_older_model_lacks_it(
        tmp_path, key, flag, said):
    """`tta` (averaging over poses) and `smooth_slices` (each slice's probabilities averaged with its neighbours')
    are stored with the model (on for models trained with the defaults): `segment` follows them and `--no-FLAG`
    turns one off; a model stored without it (every model from before) segments as it always did."""
    scan, _ = blurred_box((1.0, 0.9, 1.3), oblique_direction(-20, 12))
    write_image(scan, tmp_path / "scan.nrrd")
    probabilities = {}
    for name, meta, flags in (("stored", {key: True}, []), ("told-not-to", {key: True}, [f"--no-{flag}"]),
                              ("older", {}, []), ("asked", {}, [f"--{flag}"])):
        model = threshold_model(tmp_path / f"{name}.onnx", scan, **meta)
        r = run_cli("segment", "--model", model, "--image", tmp_path / "scan.nrrd", "--out", tmp_path / f"{name}.nrrd",
                    "--probabilities", tmp_path / f"{name}-p.nrrd", "--device", "cpu", *flags)
        assert r.returncode == 0, r.stderr
        assert (said in r.stdout) == (name in ("stored", "asked")), r.stdout
        probabilities[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}-p.nrrd")))
    assert np.array_equal(probabilities["stored"], probabilities["asked"])
    assert np.array_equal(probabilities["told-not-to"], probabilities["older"])
    assert np.abs(probabilities["stored"] - probabilities["older"]).max() > 0.01   # both blur the box's edges
    with pytest.raises(ExtremeAugError, match=f"{key} is not true or false"):
        Segmenter(threshold_model(tmp_path / "damaged.onnx", scan, **{key: "yes"}), "cpu")


def test_segmenting_without_the_uncertainty_map_skips_it_and_gives_the_same_label_map(tmp_path):
    """`segment` without --uncertainty (and `Segmenter.segment`) leave the map out, to save its time: the label
    and probability maps must not change."""
    scan, _ = blurred_box()
    segmenter = Segmenter(threshold_model(tmp_path / "model.onnx", scan), "cpu")
    mask, top, unsure = segmenter.analyse(scan)
    lean_mask, lean_top, none = segmenter.analyse(scan, uncertainty=False)
    assert unsure is not None and none is None
    assert np.array_equal(sitk.GetArrayFromImage(lean_mask), sitk.GetArrayFromImage(mask))
    assert np.array_equal(sitk.GetArrayFromImage(lean_top), sitk.GetArrayFromImage(top))
    assert sitk.GetArrayFromImage(mask).any()


def test_uncertainty_scores_rank_wrong_voxels():
    ref = np.zeros((10, 30, 30), np.uint8)
    ref[3:7, 10:20, 10:20] = 1
    pred = ref.copy()
    pred[3:7, 10:20, 19] = 0                                  # 40 wrong voxels on one face
    pointing = np.zeros(ref.shape, np.float32)
    pointing[3:7, 10:20, 18:20] = 1                         # uncertain there (and on 40 right voxels beside)
    s = uncertainty_scores(make_image(pointing), make_image(pred), make_image(ref), radius_mm=2.0, top=0.05)
    assert s["auroc"] == pytest.approx(1 - 0.5 * 40 / (s["neighbourhood_voxels"] - 40))
    assert s["wrong_voxels"] == 40 and s["captured"] > 0.5
    blind = uncertainty_scores(make_image(np.zeros(ref.shape, np.float32)), make_image(pred), make_image(ref))
    assert blind["auroc"] == pytest.approx(0.5)


def test_relative_size_keeps_components_near_the_largest_and_drops_small_look_alikes():
    a = np.zeros((20, 40, 40), np.uint8)
    a[2:10, 2:12, 2:12] = 1       # 800 voxels
    a[12:18, 2:12, 2:12] = 1      # 600
    a[2:5, 30:35, 30:35] = 1      # 75: under 0.2 x 800
    cleaned = sitk.GetArrayFromImage(clean_structures(make_image(a), [default_structure()], min_relative=0.2))
    assert cleaned.sum() == 1400 and not cleaned[2:5, 30:35, 30:35].any()
    unchanged = sitk.GetArrayFromImage(clean_structures(make_image(a), [default_structure()]))
    assert unchanged.sum() == a.sum()


def test_a_models_stored_relative_size_applies_at_segment_and_the_flag_overrides_it(tmp_path):
    blobs = np.zeros((40, 48, 48), np.float32)
    blobs[5:30, 8:30, 8:30] = 1       # the structure
    blobs[33:37, 36:42, 36:42] = 1    # a look-alike under 0.2 x its size
    scan = make_image(100 + 900 * blobs)
    write_image(scan, tmp_path / "scan.nrrd")
    model = threshold_model(tmp_path / "model.onnx", scan, 40.0, min_relative_size=0.2)
    found = {}
    for name, flags in (("stored", ()), ("off", ("--min-relative-size", "0"))):
        r = run_cli("segment", "--model", model, "--image", tmp_path / "scan.nrrd", "--out", tmp_path / f"{name}.nrrd",
                    "--device", "cpu", *flags)
        assert r.returncode == 0, r.stderr
        found[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nrrd")))
    assert found["off"][33:37, 36:42, 36:42].all() and not found["stored"][33:37, 36:42, 36:42].any()
    assert found["stored"][10:25, 12:26, 12:26].all()
    r = run_cli("segment", "--model", model, "--image", tmp_path / "scan.nrrd", "--out", tmp_path / "x.nrrd",
                "--min-relative-size", "1.5", "--device", "cpu")
    assert r.returncode != 0 and "--min-relative-size 1.5: expected 0 to 1" in r.stderr


def test_a_model_whose_stored_relative_size_is_out_of_range_is_refused_as_damaged(tmp_path):
    scan, _ = blurred_box()
    model = threshold_model(tmp_path / "model.onnx", scan, min_relative_size=5.0)
    with pytest.raises(ExtremeAugError, match="metadata is damaged \\(min_relative_size is not 0 to 1\\)"):
        Segmenter(model, "cpu")
