"""What the clinician sees and edits, in a real MRML scene (slicer-core): an edited result is never replaced,
Accept takes the chosen segment, results follow a transformed volume and its study, carry the trained
structure's name and colour, the probability overlay shows the unsure band and gives the views back, a busy
database skips a poll instead of freezing, a failed run is announced once, a cancelled run resumes."""
from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import MODULE_DIR

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
import vtk  # noqa: E402  (installed with slicer-core)

sys.path.insert(0, str(MODULE_DIR))

from test_slicer_logic import labeled_volume, oblique_scan  # noqa: E402

from extremeaug.common.errors import ExtremeAugError  # noqa: E402
from extremeaug.common.portable import process_alive  # noqa: E402
from extremeaug.data.phantom import write_phantoms  # noqa: E402
from extremeaug.project import CaseState, RunSpec, Structure, TrainConfig  # noqa: E402
from ExtremeAugSegmentLib import Results, SceneIO  # noqa: E402
from ExtremeAugSegmentLib.Logic import ExtremeAugSegmentLogic  # noqa: E402
from ExtremeAugSegmentLib.SelfTest import waitForTraining  # noqa: E402


def stored_prediction(logic, volume, mask: sitk.Image, name="m.nrrd") -> tuple:
    """A prediction file of the volume's case, as a segmentation job stores it -> (case id, relative path)."""
    case_id = logic.addScan(volume)
    scan = sitk.ReadImage(str(logic.project.path(logic.project.case(case_id).scan)))
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(scan)
    path = logic.project.root / "cases" / case_id / "auto" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mask, str(path))
    return case_id, f"cases/{case_id}/auto/{name}"


def voxels(node, volume, segment_id=None) -> np.ndarray:
    segment_id = segment_id or node.GetSegmentation().GetNthSegmentID(0)
    return sitk.GetArrayFromImage(SceneIO.segmentToImage(node, segment_id, volume))


def test_an_edited_result_is_never_replaced_by_a_new_one(scene, logic):
    image, mask = oblique_scan()
    volume = SceneIO.addVolumeNode(scene, image, "scan")
    case_id, path = stored_prediction(logic, volume, mask)
    shown, _ = logic.showResult(volume, case_id, path, None, 1)
    again, _ = logic.showResult(volume, case_id, path, None, 1)
    assert again is shown   # untouched: reused
    edited = voxels(shown, volume)
    edited[0, 0, 0] = 1   # the clinician paints one voxel
    edit = sitk.GetImageFromArray(edited)
    edit.CopyInformation(image)
    SceneIO.setSegmentFromImage(shown, edit, volume, "x", (1, 0, 0), shown.GetSegmentation().GetNthSegmentID(0))
    new, _ = logic.showResult(volume, case_id, path, None, 1)   # Segment again, or Suggest loads the case
    assert new is not shown and new.GetName() != shown.GetName()
    assert np.array_equal(voxels(shown, volume), edited)   # the edit survives, still acceptable
    assert np.array_equal(voxels(new, volume), sitk.GetArrayFromImage(mask))
    case = logic.acceptCorrection(shown)   # stored: now the node equals a stored label, so it may be reused
    assert case.state == CaseState.MANUAL   # (this prediction file was not registered as an auto label)
    assert not Results.isEdited(shown, volume, logic._labelImage, logic.project.structures())


def test_accept_takes_the_chosen_segment_and_asks_when_it_cannot_tell(scene, logic):
    image, mask = oblique_scan()
    volume = SceneIO.addVolumeNode(scene, image, "scan")
    logic.project.name_structure(Structure("disc", (1.0, 0.5, 0.0)))
    case_id, path = stored_prediction(logic, volume, mask)
    result, _ = logic.showResult(volume, case_id, path, None, 1)
    first = result.GetSegmentation().GetNthSegmentID(0)
    other = np.zeros(sitk.GetArrayFromImage(mask).shape, np.uint8)
    other[1:3, 2:4, 2:4] = 1
    other_image = sitk.GetImageFromArray(other)
    other_image.CopyInformation(image)
    added = SceneIO.setSegmentFromImage(result, other_image, volume, "my redraw", (0, 1, 0))   # "Add segment"
    chosen = logic.acceptCorrection(result, added)
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(logic.project.path(chosen.label))))
    assert np.array_equal(stored, other) and "segment 'my redraw'" in chosen.history[-1].source
    result.GetSegmentation().GetSegment(first).SetName("old disc")
    with pytest.raises(ExtremeAugError, match="2 segments: choose the segment to accept"):
        logic.acceptCorrection(result)
    result.GetSegmentation().GetSegment(first).SetName("disc")   # one segment named as the structure: that one
    by_name = logic.acceptCorrection(result)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(logic.project.path(by_name.label)))),
                          sitk.GetArrayFromImage(mask))


def test_results_follow_a_transformed_volume_and_come_back_unshifted(scene, logic):
    image, mask = oblique_scan()
    volume = SceneIO.addVolumeNode(scene, image, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 7.0)
    matrix.SetElement(1, 3, -3.5)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    case_id, path = stored_prediction(logic, volume, mask)
    probability = sitk.Cast(mask, sitk.sitkFloat32) * 0.5
    sitk.WriteImage(probability, str(logic.project.path(path.replace("m.nrrd", "p.nrrd"))))
    result, prob = logic.showResult(volume, case_id, path, path.replace("m.nrrd", "p.nrrd"), 1)
    assert result.GetTransformNodeID() == prob.GetTransformNodeID() == transform.GetID()
    assert np.array_equal(voxels(result, volume), sitk.GetArrayFromImage(mask))
    accepted = logic.acceptCorrection(result)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(logic.project.path(accepted.label)))),
                          sitk.GetArrayFromImage(mask))
    result.SetAndObserveTransformNodeID(None)   # what the result would be outside the transform: shifted
    assert not np.array_equal(voxels(result, volume), sitk.GetArrayFromImage(mask))


def test_results_join_the_volumes_study_and_carry_the_trained_name_colour_and_terminology(scene, logic):
    _, _, volume, delineation, segment = labeled_volume(scene, name="patient scan")
    terminology = ("Segmentation category and type - DICOM master list~SCT^91723000^Anatomical Structure~"
                   "SCT^244639000^Intervertebral disc~^^~Anatomic codes - DICOM master list~^^~^^")
    seg = delineation.GetSegmentation().GetSegment(segment)
    seg.SetTag(seg.GetTerminologyEntryTagName(), terminology)
    logic.addLabeledScan(volume, delineation, segment)
    assert logic.project.structure() == Structure("disc", (1.0, 0.0, 0.0), terminology)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "MR 2026")
    hierarchy.CreateItem(study, volume)   # what Slicer's DICOM import does for a loaded series
    other = SceneIO.addVolumeNode(scene, oblique_scan(seed=3)[0], "other")
    case_id, path = stored_prediction(logic, other, oblique_scan()[1])
    hierarchy.CreateItem(study, other)
    result, _ = logic.showResult(other, case_id, path, None, 1)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(result)) == study
    shown = result.GetSegmentation().GetNthSegment(0)
    assert shown.GetName() == "disc" and np.allclose(shown.GetColor(), (1.0, 0.0, 0.0))
    assert Results.structureOf(result, result.GetSegmentation().GetNthSegmentID(0)).terminology == terminology


def test_the_uncertainty_overlay_shows_where_to_look_and_gives_the_views_back(scene, logic):
    image, mask = oblique_scan()
    volume = SceneIO.addVolumeNode(scene, image, "scan")
    mine = SceneIO.addVolumeNode(scene, image, "my fusion")
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    composites[0].SetForegroundVolumeID(mine.GetID())
    composites[0].SetForegroundOpacity(0.7)
    prob = Results.overlayNode(scene, volume, "scan uncertainty", sitk.Cast(mask, sitk.sitkFloat32))
    display = prob.GetDisplayNode()
    assert display.GetApplyThreshold()
    assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == Results.WHERE_TO_LOOK
    layers = Results.SliceLayers(scene)
    layers.show(volume, prob)
    assert all(c.GetBackgroundVolumeID() == volume.GetID() and c.GetForegroundVolumeID() == prob.GetID()
               for c in composites)
    layers.show(volume, prob)   # shown twice: what is given back is still the user's own
    layers.hideOverlay()
    assert composites[0].GetForegroundVolumeID() == mine.GetID() and composites[0].GetForegroundOpacity() == 0.7
    assert composites[1].GetForegroundVolumeID() is None
    assert all(c.GetBackgroundVolumeID() == volume.GetID() for c in composites)


def test_a_busy_database_skips_a_poll_and_a_failed_run_is_announced_once(scene, logic):
    _, _, volume, segmentation, segment = labeled_volume(scene)
    logic.addLabeledScan(volume, segmentation, segment)
    logic.startTraining(RunSpec(TrainConfig(augment=1, epochs=1, width=4), device="cpu"))
    pid = logic.poll().run.pid
    os.kill(pid, signal.SIGKILL)   # the worker dies: the next poll must record it (a write)
    deadline = time.monotonic() + 30
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    other = sqlite3.connect(str(logic.project.root / "project.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")   # another process holds the write lock
    try:
        start = time.monotonic()
        state = logic.poll()
        assert state.skipped and time.monotonic() - start < 5   # not the 10 s default wait, and no error
    finally:
        other.execute("ROLLBACK")
        other.close()
    states = [logic.poll() for _ in range(4)]
    assert [s.ended for s in states] == [True, False, False, False]
    assert states[0].status == "died" and "--resume" in states[0].message


def test_a_cancelled_run_resumes_from_the_panel_after_the_project_moved(scene, tmp_path):
    """Resume continues a cancelled run from its checkpoint, also when the project folder was moved in
    between: the checkpoint names its scans relative to itself, not by the old absolute path."""
    logic = ExtremeAugSegmentLogic(scene)
    scans = write_phantoms(tmp_path / "phantoms", 1)
    volume = SceneIO.addVolumeNode(scene, sitk.ReadImage(str(scans[0][0])), "phantom")
    delineation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "delineation")
    segment = SceneIO.setSegmentFromImage(delineation, sitk.ReadImage(str(scans[0][1])), volume, "disc", (1, 0, 0))
    logic.openProject(str(tmp_path / "project"), create=True)
    try:
        logic.addLabeledScan(volume, delineation, segment)
        logic.startTraining(RunSpec(TrainConfig(augment=3, epochs=1, width=4), device="cpu"))
        deadline = time.monotonic() + 240
        while not logic.poll().curve:   # training has begun (a checkpoint is written on stop)
            assert time.monotonic() < deadline, logic.poll().text
            time.sleep(0.5)
        logic.cancelTraining()
        stopped = waitForTraining(logic, timeout_s=240)
        assert stopped.status == "cancelled" and stopped.run.resumable
        logic.closeProject()
        (tmp_path / "project").rename(tmp_path / "moved")
        logic.openProject(str(tmp_path / "moved"))
        assert logic.resumeTraining() == stopped.run.id
        done = waitForTraining(logic, timeout_s=600)
        assert done.status == "finished" and done.version == 1, done.message
    finally:
        logic.closeProject()


def test_two_segments_come_back_as_two_named_segments_and_accept_maps_them_by_name(scene, logic):
    image, mask = oblique_scan()
    two = sitk.GetArrayFromImage(mask)
    two[3:6, 6:18, 15:25] *= 2   # the block's right half is a second structure
    labelmap = sitk.GetImageFromArray(two)
    labelmap.CopyInformation(image)
    volume = SceneIO.addVolumeNode(scene, image, "scan")
    drawn = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    SceneIO.setSegmentFromImage(drawn, labelmap == 1, volume, "nucleus", (1.0, 0.0, 0.0))
    SceneIO.setSegmentFromImage(drawn, labelmap == 2, volume, "annulus", (0.0, 0.0, 1.0))
    case = logic.addLabeledScan(volume, drawn)   # every segment: one structure each
    assert [(s.name, s.value) for s in logic.project.structures()] == [("nucleus", 1), ("annulus", 2)]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(logic.project.path(case.label)))), two)
    # a prediction with both structures is shown as two named, coloured segments
    other, _ = oblique_scan(seed=1)
    target = SceneIO.addVolumeNode(scene, other, "next")
    case_id, path = stored_prediction(logic, target, labelmap)
    shown, _ = logic.showResult(target, case_id, path, None, 1)
    segmentation = shown.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [(s.GetName(), tuple(s.GetColor())) for s in segments] == [("nucleus", (1.0, 0.0, 0.0)),
                                                                      ("annulus", (0.0, 0.0, 1.0))]
    # the clinician moves a voxel from one structure to the other and re-orders the segments
    nucleus, annulus = (SceneIO.segmentToImage(shown, segmentation.GetNthSegmentID(i), target) for i in (0, 1))
    moved = sitk.GetArrayFromImage(annulus)
    moved[3, 6, 15] = 0
    fixed = sitk.GetImageFromArray(moved)
    fixed.CopyInformation(other)
    SceneIO.setSegmentFromImage(shown, fixed, target, "annulus", (0.0, 0.0, 1.0), segmentation.GetNthSegmentID(1))
    SceneIO.setSegmentFromImage(shown, nucleus, target, "nucleus", (1.0, 0.0, 0.0),
                                segmentation.GetNthSegmentID(0))   # now second in the node
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["annulus", "nucleus"]
    accepted = logic.acceptCorrection(shown)
    expected = two.copy()
    expected[3, 6, 15] = 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(logic.project.path(accepted.label)))), expected)
    # a segment that is no structure of the project is refused, and nothing is stored
    SceneIO.setSegmentFromImage(shown, labelmap == 1, target, "vertebra", (0.0, 1.0, 0.0))
    labels_before = len(logic.project.case(case_id).history)
    with pytest.raises(ExtremeAugError, match="segment vertebra is not one of the structures"):
        logic.acceptCorrection(shown)
    assert len(logic.project.case(case_id).history) == labels_before
