"""The module's Logic in a real MRML scene (the slicer-core wheel; see DEVELOPERS.md): scene nodes <-> project
files with the geometry intact, results aligned voxel for voxel, the accept path, and the whole loop with
the real background worker, polled as the widget polls it."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import MODULE_DIR, make_image, oblique_direction

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
import vtk  # noqa: E402  (installed with slicer-core)

sys.path.insert(0, str(MODULE_DIR))

from extremeaug.common.errors import ExtremeAugError  # noqa: E402
from extremeaug.project import DEFAULT_STRUCTURE, CaseState, Project, RunSpec, Split, TrainConfig  # noqa: E402
from ExtremeAugSegmentLib import Results, SceneIO  # noqa: E402
from ExtremeAugSegmentLib.InstallLogic import (InstallLogic, Purpose, cudaSessionWorks, installPlan,  # noqa: E402
                                               missingModules, modulesToInstall, outdatedModules)
from ExtremeAugSegmentLib.Logic import CASE_ATTRIBUTE, ExtremeAugSegmentLogic  # noqa: E402
from ExtremeAugSegmentLib.SelfTest import runLoop, waitForTraining  # noqa: E402


def oblique_scan(seed=0, shape=(9, 24, 32)):
    rng = np.random.default_rng(seed)
    array = rng.integers(-500, 1500, shape).astype(np.int16)
    image = make_image(array, (0.6, 0.85, 3.3), (12.5, -40.25, 71.0), oblique_direction())
    mask = np.zeros(shape, np.uint8)
    mask[3:6, 6:18, 5:25] = 1
    mask[7, 2, 3] = 1
    return image, sitk.GetImageFromArray(mask)


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras_of(image: sitk.Image) -> np.ndarray:
    """The IJK-to-RAS matrix a SimpleITK (LPS) image implies."""
    d = np.diag([-1.0, -1.0, 1.0]) @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    out = np.eye(4)
    out[:3, :3] = d
    out[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.array(image.GetOrigin())
    return out


def labeled_volume(scene, seed=0, name="oblique"):
    image, mask = oblique_scan(seed)
    mask.CopyInformation(image)
    volume = SceneIO.addVolumeNode(scene, image, name)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} delineation")
    segment = SceneIO.setSegmentFromImage(segmentation, mask, volume, "disc", (1, 0, 0))
    return image, mask, volume, segmentation, segment


def test_volume_and_segment_become_case_files_with_geometry_preserved(scene, logic):
    image, mask, volume, segmentation, segment = labeled_volume(scene)
    assert logic.caseRows() == [] and logic.scenePairsToAdd() == [(volume, segmentation)]
    summary = logic.addLabeledScan(volume, segmentation, segment)
    assert [(r.id, r.state) for r in logic.caseRows()] == [("oblique", CaseState.MANUAL)]
    assert logic.scenePairsToAdd() == []
    assert summary.state == CaseState.MANUAL and summary.split == Split.TRAIN
    scan = sitk.ReadImage(str(logic.project.path(summary.scan)))
    label = sitk.ReadImage(str(logic.project.path(summary.label)))
    assert scan.GetPixelID() == sitk.sitkInt16   # the scan keeps its own pixel type
    assert np.array_equal(sitk.GetArrayViewFromImage(scan), sitk.GetArrayViewFromImage(image))
    assert np.array_equal(sitk.GetArrayViewFromImage(label), sitk.GetArrayViewFromImage(mask))
    for stored in (scan, label):
        np.testing.assert_allclose(ijk_to_ras_of(stored), ijk_to_ras(volume), atol=1e-9)
    assert volume.GetAttribute(CASE_ATTRIBUTE) == summary.id == "oblique"
    assert [(v.GetID(), s.GetID()) for v, s in logic.scenePairs()] == [(volume.GetID(), segmentation.GetID())]
    assert summary.source == "3D Slicer volume 'oblique', segment 'disc'"


def test_result_files_become_nodes_aligned_voxel_for_voxel(scene, logic, tmp_path):
    image, mask, volume, _, _ = labeled_volume(scene)
    case_id = logic.addScan(volume)
    probability = sitk.GetImageFromArray(np.random.default_rng(1).random(mask.GetSize()[::-1]).astype(np.float32))
    # what a prediction file holds: the scan's grid as written to and read back from disk
    stored_scan = sitk.ReadImage(str(logic.project.path(logic.project.case(case_id).scan)))
    for img in (mask, probability):
        img.CopyInformation(stored_scan)
    folder = logic.project.root / "cases" / case_id / "auto"
    folder.mkdir(parents=True)
    sitk.WriteImage(mask, str(folder / "m.nrrd"))
    sitk.WriteImage(probability, str(folder / "p.nrrd"))
    segmentation, prob_node = logic.showResult(volume, case_id, f"cases/{case_id}/auto/m.nrrd",
                                               f"cases/{case_id}/auto/p.nrrd", 3)
    assert segmentation.GetName() == "oblique segmentation"
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == DEFAULT_STRUCTURE.name   # none named
    back = SceneIO.segmentToImage(segmentation, segment_id, volume)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(mask))
    assert np.array_equal(slicer.util.arrayFromVolume(prob_node), sitk.GetArrayViewFromImage(probability))
    assert np.array_equal(ijk_to_ras(prob_node), ijk_to_ras(volume))
    # segmenting again reuses the nodes instead of piling up new ones
    again, prob_again = logic.showResult(volume, case_id, f"cases/{case_id}/auto/m.nrrd", None, 3)
    assert again is segmentation and prob_again is None
    assert scene.GetNodesByClassByName("vtkMRMLSegmentationNode", "oblique segmentation").GetNumberOfItems() == 1
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_mask_on_another_grid_is_refused(scene, logic):
    volume = labeled_volume(scene)[2]
    mask = oblique_scan()[1]   # the same size, but at origin 0 and axis-aligned
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="not on the grid"):
        SceneIO.setSegmentFromImage(segmentation, mask, volume, "x", (1, 0, 0))


def test_a_scan_is_one_case_whatever_its_node_name_and_namesakes_with_other_voxels_are_two(scene, logic, tmp_path):
    image, _ = oblique_scan()
    first = SceneIO.addVolumeNode(scene, image, "scan")
    assert logic.addScan(first) == logic.addScan(first) == "scan"
    renamed = SceneIO.addVolumeNode(scene, image, "scan_1")   # the same scan loaded again: Slicer renames it
    assert logic.caseIdOf(renamed) == "scan" and logic.addScan(renamed) == "scan"
    other, _ = oblique_scan(seed=1)
    namesake = SceneIO.addVolumeNode(scene, other, "scan")     # another scan with the same name
    assert logic.caseIdOf(namesake) is None and logic.addScan(namesake) == "scan_2"
    # added from a file by the command line, then loaded into a node with another name and pixel type
    third, _ = oblique_scan(seed=2)
    sitk.WriteImage(third, str(tmp_path / "case7.nii.gz"))
    with Project.open(logic.project.root) as cli_side:
        assert cli_side.add(str(tmp_path / "case7.nii.gz")).id == "case7"
    loaded = SceneIO.addVolumeNode(scene, sitk.Cast(sitk.ReadImage(str(tmp_path / "case7.nii.gz")), sitk.sitkFloat32),
                                   "T2 sagittal")
    assert logic.addScan(loaded) == "case7"
    assert len(logic.caseRows()) == 3
    # the voxels of a node change: it is another scan now
    array = slicer.util.arrayFromVolume(loaded)
    array[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(loaded)
    assert logic.caseIdOf(loaded) is None
    with pytest.raises(ExtremeAugError, match="choose a volume"):
        logic.addLabeledScan(first, None, "")


def test_accept_refuses_foreign_or_empty_segmentations_and_changes_nothing(scene, logic):
    _, _, volume, segmentation, segment = labeled_volume(scene)
    with pytest.raises(ExtremeAugError, match="not a result of this module"):
        logic.acceptCorrection(segmentation)
    with pytest.raises(ExtremeAugError, match="choose the result segmentation"):
        logic.acceptCorrection(None)
    with pytest.raises(ExtremeAugError, match="choose the volume to segment"):
        logic.startSegment(None)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    empty_id = empty.GetSegmentation().AddEmptySegment("", "nothing")
    before = sum(c.labels for c in logic.caseRows())
    with pytest.raises(ExtremeAugError, match="empty"):
        logic.addLabeledScan(volume, empty, empty_id)
    assert sum(c.labels for c in logic.caseRows()) == before
    assert logic.caseRows() == []
    with pytest.raises(ExtremeAugError, match="no project is open"):
        ExtremeAugSegmentLogic(scene).status()


def test_whole_loop_through_the_logic_with_the_real_worker(scene, tmp_path):
    """add labeled scan -> train (background worker) -> poll -> segment -> correct -> accept: the same
    function Slicer's self-test runs."""
    logic = ExtremeAugSegmentLogic(scene)
    try:
        out = runLoop(logic, tmp_path, log=lambda m: None)
        project = logic.project
        # the new scan was added by the segmentation's child process, from the node's voxels, named after it
        assert project.case("phantom_1").source == "3D Slicer volume 'phantom_1'"
        assert out["volume"].GetAttribute(CASE_ATTRIBUTE) == "phantom_1"
        assert not list((project.root / "jobs").glob(".scan-*")), "the handed-over scan file was left behind"
        # the result is the stored prediction, voxel for voxel, on the volume's grid
        history = project.case("phantom_1").history
        stored = sitk.ReadImage(str(project.path(history[0].path)))
        assert np.array_equal(sitk.GetArrayViewFromImage(out["prediction"]), sitk.GetArrayViewFromImage(stored))
        # the overlay is the stored uncertainty map, drawn only where the model is unsure
        assert np.array_equal(ijk_to_ras(out["overlay"]), ijk_to_ras(out["volume"]))
        unsure = sitk.ReadImage(str(project.path(history[0].uncertainty_map)))
        assert np.array_equal(slicer.util.arrayFromVolume(out["overlay"]), sitk.GetArrayViewFromImage(unsure))
        display = out["overlay"].GetDisplayNode()
        assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == Results.WHERE_TO_LOOK
        # the accepted label is a new file: the auto label stays in the history, with what the correction changed
        assert [h.kind.value for h in history] == ["auto", "corrected"]
        fix = history[1].correction
        assert fix.auto_label == history[0].id and fix.model_version == 1 and fix.seconds is not None
        assert fix.voxels_added + fix.voxels_removed > 0
        assert out["polls"] >= 2 and out["state"].fraction == 1.0
        chart = out["chart"]
        assert chart.GetNumberOfPlotSeriesNodes() == 2
        table = scene.GetFirstNodeByName("ExtremeAugSegment training curve").GetTable()
        assert table.GetNumberOfRows() == len(out["state"].curve) > 0
        assert [v.version for v in logic.versions()] == [1]
        assert logic.useVersion(1) == 1
        with pytest.raises(ExtremeAugError, match="no model version 5"):
            logic.useVersion(5)
        info, volume, segmentation, _ = logic.suggestNext()
        assert info.case is None and volume is None   # every case now has a human label
        # a segmentation can be cancelled; a second one waits for the first
        other = SceneIO.addVolumeNode(scene, sitk.ReadImage(str(tmp_path / "phantoms" / "phantom_0_image.nii.gz")), "o")
        logic.startSegment(other, device="cpu")
        with pytest.raises(ExtremeAugError, match="a segmentation is running"):
            logic.startSegmentUnlabeled()
        logic.cancelJob()
        update = logic.pollJob()
        while update.state.active:
            time.sleep(0.2)
            update = logic.pollJob()
        assert update.state.status.value == "cancelled" and update.shown == [] and logic.pollJob() is None
    finally:
        logic.closeProject()
    with Project.open(tmp_path / "project") as reopened:
        assert reopened.case("phantom_1").state == CaseState.CORRECTED


def test_a_failing_worker_is_reported_and_training_can_start_again(scene, logic):
    _, _, volume, segmentation, segment = labeled_volume(scene)
    case = logic.addLabeledScan(volume, segmentation, segment)
    scan = logic.project.path(case.scan)
    hidden = scan.with_name("hidden.nrrd")
    scan.rename(hidden)   # the worker cannot read its training scan
    tiny = RunSpec(TrainConfig(augment=1, epochs=1, width=4), device="cpu")
    logic.startTraining(tiny)
    polls = [logic.poll()]
    while polls[-1].active:   # the widget's timer: it shows a notification when a poll says `ended`
        time.sleep(0.5)
        polls.append(logic.poll())
    polls += [logic.poll() for _ in range(3)]
    assert [p.ended for p in polls].count(True) == 1 and polls[-4].ended   # one notification, at the end
    state = polls[-1]
    assert state.status == "failed" and scan.name in state.message and state.text.startswith("failed: ")
    assert not state.active
    hidden.rename(scan)
    run = logic.startTraining(tiny)   # not refused: nothing is stuck
    assert logic.poll().run.id == run
    logic.cancelTraining()
    assert waitForTraining(logic, timeout_s=300).status in ("cancelled", "finished")


def test_logic_imports_without_torch_or_onnxruntime():
    """Dependencies are installed on first use, never needed at import."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None; "
            f"sys.path.insert(0, {str(MODULE_DIR)!r}); import ExtremeAugSegmentLib.Logic; "
            "import ExtremeAugSegmentLib.InstallLogic")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_install_plan_prefers_pytorchutils_and_matches_onnxruntime_to_the_gpu():
    plan = installPlan(["torch", "onnxruntime", "tqdm"], hasPyTorchUtils=True, cuda=True)
    assert [(s.module, s.how, s.requirement) for s in plan] == [
        ("torch", "pytorchutils", "torch>=2.1"), ("onnxruntime", "pip", "onnxruntime-gpu>=1.16"),
        ("tqdm", "pip", "tqdm>=4.60")]
    plan = installPlan(["torch", "onnxruntime"], hasPyTorchUtils=False, cuda=False)
    assert [(s.how, s.requirement) for s in plan] == [("pip", "torch>=2.1"), ("pip", "onnxruntime>=1.16")]
    assert installPlan([], True, True) == []


def test_install_upgrades_packages_older_than_the_engine_floor():
    """An old torch is not 'installed' for the engine: it is upgraded like a missing one."""
    from extremeaug.common.requirements import MINIMUM
    versions = {"torch": "2.0.1+cu118", "onnxruntime": "1.15.1", "onnx": "1.16.0", "tqdm": "4.66.1",
                "matplotlib": "3.8.0"}
    present = lambda name: object()   # noqa: E731
    assert modulesToInstall(present, versions.get) == ["torch", "onnxruntime"]
    assert outdatedModules(versions.get) == [f"torch 2.0.1+cu118 (needs >= {MINIMUM['torch']})",
                                             f"onnxruntime 1.15.1 (needs >= {MINIMUM['onnxruntime']})"]
    assert [s.requirement for s in installPlan(["torch", "onnxruntime"], True, False)] == [
        f"torch>={MINIMUM['torch']}", f"onnxruntime>={MINIMUM['onnxruntime']}"]
    assert modulesToInstall(present, {**versions, "torch": "2.13.0", "onnxruntime": "1.20.0"}.get) == []


def test_install_asks_first_and_installs_nothing_when_declined():
    assert missingModules() == [] and modulesToInstall() == []   # this environment has everything, new enough
    asked = []
    assert InstallLogic(confirm=lambda q: asked.append(q) or False).ensure() is True
    assert asked == []                                    # nothing missing: no question
    assert missingModules(find=lambda name: None if name in ("onnxruntime", "tqdm") else object()) == [
        "onnxruntime", "tqdm"]


def test_the_cuda_probe_runs_a_real_session_and_says_no_without_a_working_cuda():
    """onnxruntime (CPU build here) loads the probe model and runs it on the CPU: no CUDA session."""
    assert cudaSessionWorks() is False


def test_onnxruntime_gpu_without_working_cuda_is_replaced_by_the_cpu_build(monkeypatch):
    """The machine has an NVIDIA driver, so onnxruntime-gpu is installed; its CUDA session does not work
    (the probe says so), so the CPU build replaces it. pip is the installer's seam (no network in tests)."""
    import ExtremeAugSegmentLib.InstallLogic as install
    from extremeaug.common.requirements import MINIMUM
    pip, logged = [], []
    monkeypatch.setattr(install, "modulesToInstall", lambda purpose=None, **_: [] if pip else ["onnxruntime"])
    monkeypatch.setattr(install, "cudaAvailable", lambda: True)
    logic = InstallLogic(confirm=lambda q: True, pipInstall=pip.append, log=logged.append, cudaWorks=lambda: False)
    assert logic.ensure(Purpose.SEGMENT) is True
    floor = MINIMUM["onnxruntime"]
    assert pip == [f"onnxruntime-gpu>={floor}", "uninstall onnxruntime-gpu", f"onnxruntime>={floor}"]
    assert any("cannot load its CUDA libraries" in m for m in logged)


def test_segmenting_asks_only_for_onnxruntime_and_training_offers_the_pytorch_extension(monkeypatch):
    import ExtremeAugSegmentLib.InstallLogic as install
    nothing = lambda name: None   # noqa: E731  (a bare Slicer: no package installed)
    assert modulesToInstall(nothing, purpose=Purpose.SEGMENT) == ["onnxruntime"]
    assert modulesToInstall(nothing, purpose=Purpose.TRAIN) == ["torch", "onnxruntime", "onnx", "tqdm", "matplotlib"]
    monkeypatch.setattr(install, "modulesToInstall", lambda purpose=None, **_: ["torch"])
    asked, extensions, pip = [], [], []
    logic = InstallLogic(confirm=lambda q: asked.append(q) or True, pipInstall=pip.append,
                         installExtension=lambda name: extensions.append(name) or True)
    assert logic.ensure(Purpose.TRAIN) is False and logic.needsRestart   # PyTorchUtils is absent here
    assert extensions == ["PyTorch"] and pip == [] and "PyTorch extension" in asked[0]
