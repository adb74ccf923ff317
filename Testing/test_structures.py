"""Several structures from one mask: label tables, .seg.nrrd in and out (loaded by real MRML), per-channel
augmentation, per-structure clean-up and evaluation, a project's label table. (A three-structure phantom
trained end to end through the command line: test_end_to_end.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import make_image, one_line_error, run_cli
from extremeaug.common.errors import ExtremeAugError
from extremeaug.common.structures import Structure, parse_table
from extremeaug.data.io import read_label_arrays, read_structures, write_image
from extremeaug.data.labels import with_segment_fields
from extremeaug.evaluation.metrics import evaluate_files
from extremeaug.data.decision import clean_structures
from extremeaug.training.augment import AffineParams, augmented_batch, patch_table

DISC_TERM = ("SCT^123037004^Anatomical Structure~SCT^244563003^Intervertebral disc~^^~"
             "Anatomic codes - DICOM master list~^^~^^")
TABLE = [Structure("L5-S1", (0.9, 0.1, 0.1), DISC_TERM, 1), Structure("L4-L5", (0.1, 0.8, 0.2), value=2),
         Structure("canal", (0.2, 0.3, 1.0), value=7)]


def three_blocks() -> np.ndarray:
    array = np.zeros((12, 20, 24), np.uint8)
    array[2:5, 3:8, 4:9] = 1
    array[6:9, 10:15, 12:20] = 2
    array[9:11, 2:6, 15:22] = 7
    return array


def test_seg_nrrd_round_trip_keeps_names_colours_and_terminology(tmp_path):
    array = three_blocks()
    path = write_image(with_segment_fields(make_image(array, (0.8, 0.8, 2.0), (5.0, -3.0, 1.0)), TABLE),
                       tmp_path / "out.seg.nrrd")
    arrays, labels, named, geometry = read_label_arrays(path)
    assert named and [lab.name for lab in labels] == ["L5-S1", "L4-L5", "canal"]
    assert [lab.value for lab in labels] == [1, 2, 7]
    assert [lab.color for lab in labels] == [t.color for t in TABLE]
    assert labels[0].terminology == DISC_TERM and labels[1].terminology is None
    for a, t in zip(arrays, TABLE):
        assert (a == (array == t.value)).all()
    assert np.allclose(geometry.GetSpacing(), (0.8, 0.8, 2.0))


def test_seg_nrrd_written_by_segment_loads_in_slicer_as_named_coloured_segments(tmp_path, scene):
    from vtk.util.numpy_support import vtk_to_numpy
    array = three_blocks()
    path = write_image(with_segment_fields(make_image(array), TABLE), tmp_path / "out.seg.nrrd")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for i, t in enumerate(TABLE):
        segment = segmentation.GetNthSegment(i)
        assert segment.GetName() == t.name
        assert np.allclose(segment.GetColor(), t.color, atol=1e-3)
        layer = vtk_to_numpy(segment.GetRepresentation("Binary labelmap").GetPointData().GetScalars())
        assert (layer == segment.GetLabelValue()).sum() == (array == t.value).sum()
    tag = vtk_string()
    assert segmentation.GetNthSegment(0).GetTag("TerminologyEntry", tag) and tag.get() == DISC_TERM


def vtk_string():
    import vtk
    return vtk.reference("")


def test_label_table_matches_masks_by_value_and_refuses_unknown_values(tmp_path):
    array = three_blocks()
    scan = make_image(np.random.default_rng(0).random(array.shape).astype(np.float32))
    write_image(make_image(array), tmp_path / "m.nii.gz")
    images, labels = read_structures(tmp_path / "m.nii.gz", scan)
    assert [lab.value for lab in labels] == [1, 2, 7] and [lab.name for lab in labels] == ["label 1", "label 2",
                                                                                            "label 7"]
    partial = np.where(array == 2, 0, array)   # a structure left out is allowed: its channel is empty
    write_image(make_image(partial), tmp_path / "partial.nii.gz")
    images, _ = read_structures(tmp_path / "partial.nii.gz", scan, TABLE)
    assert [int(sitk.GetArrayFromImage(i).sum()) for i in images] == [75, 0, 56]
    write_image(make_image(np.where(array == 7, 9, array)), tmp_path / "unknown.nii.gz")
    with pytest.raises(ExtremeAugError, match=r"label value 9 is not one of the structures.*1 'L5-S1'"):
        read_structures(tmp_path / "unknown.nii.gz", scan, TABLE)
    merged, labels = read_structures(tmp_path / "m.nii.gz", scan, merge=True)
    assert len(merged) == 1 and int(sitk.GetArrayFromImage(merged[0]).sum()) == int((array > 0).sum())
    with pytest.raises(ExtremeAugError, match="'x=0' is not name=value"):
        parse_table("a=1,x=0")
    with pytest.raises(ExtremeAugError, match="share a value"):
        parse_table("a=1,b=1")


def test_every_mask_channel_gets_the_image_transform():
    """One grid_sample over image + K mask channels equals sampling each binary mask alone (no blending of
    label values: each channel is thresholded on its own)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 256, 256, generator=g)
    masks = (torch.rand(2, 3, 256, 256, generator=g) > 0.7).float()
    rows = patch_table(2, 256)[[0, 5, 11]]
    params = AffineParams(torch.tensor([0.3, -0.2, 0.1]), torch.tensor([0.9, 1.1, 1.0]),
                          torch.tensor([[10.0, -5.0], [0.0, 30.0], [-40.0, 2.0]]))
    img, msk = augmented_batch(images, masks, rows, params)
    assert msk.shape == (3, 3, 128, 128)
    for k in range(3):
        img_k, msk_k = augmented_batch(images, masks[:, k], rows, params)
        assert torch.equal(msk_k[:, 0], msk[:, k]) and torch.allclose(img_k, img)


def test_small_and_extra_components_are_removed_per_structure():
    array = np.zeros((10, 30, 30), np.uint8)
    array[1:4, 1:10, 1:10] = 1      # 243 voxels
    array[6:8, 20:23, 20:23] = 1    # 18 voxels of the same structure
    array[1:3, 20:25, 1:6] = 2      # 50 voxels
    labels = [Structure("a", (1, 0, 0)), Structure("b", (0, 1, 0), value=2)]
    image = make_image(array)
    kept = sitk.GetArrayFromImage(clean_structures(image, labels, min_mm3=20))
    assert (kept == 1).sum() == 243 and (kept == 2).sum() == 50   # the 18-voxel speck of 1 goes, all of 2 stays
    largest = sitk.GetArrayFromImage(clean_structures(image, labels, keep_largest=True))
    assert (largest == 1).sum() == 243 and (largest == 2).sum() == 50


def test_evaluation_per_structure_reports_a_swapped_level(tmp_path):
    ref = three_blocks()
    pred = ref.copy()
    pred[ref == 1] = 2   # structure 1 predicted as structure 2
    write_image(make_image(ref), tmp_path / "ref.nii.gz")
    write_image(make_image(pred), tmp_path / "pred.nii.gz")
    m = evaluate_files(str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz"))
    assert m["dice"] == 1.0   # the union is perfect
    rows = {r["value"]: r for r in m["structures"]}
    assert rows[1]["dice"] == 0.0 and rows[1]["predicted_as"] == {"label 2": 75}
    assert rows[1]["wrong_structure_voxels"] == 75 and rows[7]["dice"] == 1.0
    assert m["mean_dice"] == pytest.approx((0 + 2 * 120 / (120 + 195) + 1) / 3)


def test_project_label_table_refuses_unknown_structures_and_records_missing_ones(tmp_path):
    project = tmp_path / "project"
    assert run_cli("project", "init", project, "--labels", "L5-S1=1,L4-L5=2").returncode == 0
    array = three_blocks()
    scan = make_image(np.random.default_rng(0).random(array.shape).astype(np.float32) * 100)
    write_image(scan, tmp_path / "scan.nrrd")
    write_image(make_image(np.where(array == 7, 0, array)), tmp_path / "both.nii.gz")
    write_image(make_image(np.where(array == 2, 0, np.where(array == 7, 0, array))), tmp_path / "one.nii.gz")
    write_image(make_image(array), tmp_path / "extra.nii.gz")
    assert run_cli("project", "add", project, tmp_path / "scan.nrrd", "--label", tmp_path / "both.nii.gz",
                   "--id", "c1").returncode == 0
    files = sorted((project / "cases" / "c1" / "labels").iterdir())
    one_line_error(run_cli("project", "accept", project, "c1", "--label", tmp_path / "extra.nii.gz"),
                   "label value 7 is not one of the structures", "1 'L5-S1', 2 'L4-L5'")
    assert sorted((project / "cases" / "c1" / "labels").iterdir()) == files   # nothing written
    assert run_cli("project", "accept", project, "c1", "--label", tmp_path / "one.nii.gz").returncode == 0
    from extremeaug.project import Project
    with Project.open(project) as p:
        history = p.case("c1").history
        assert [h.missing for h in history] == [[], ["L4-L5"]]
        assert [s.name for s in p.structures()] == ["L5-S1", "L4-L5"]
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(p.path(history[0].path))))
        assert np.array_equal(stored, np.where(array == 7, 0, array))   # the project's values, as given
    # a version is scored per structure on the validation labels
    write_image(make_image(np.random.default_rng(1).random(array.shape).astype(np.float32) * 100),
                tmp_path / "scan2.nrrd")
    assert run_cli("project", "add", project, tmp_path / "scan2.nrrd", "--label", tmp_path / "both.nii.gz",
                   "--id", "c2", "--split", "validation").returncode == 0
    trained = run_cli("project", "train", project, "--augment", "1", "--epochs", "1", "--width", "4",
                      "--device", "cpu", "--wait")
    assert trained.returncode == 0, trained.stderr
    models = run_cli("project", "models", project)
    assert "per structure now: L5-S1 " in models.stdout and ", L4-L5 " in models.stdout, models.stdout
