"""The panel's runtime behaviour that can be decided without Qt, on a real MRML scene (slicer-core): the
Sample Data source Slicer can build, settings and the project folder kept over Close Scene, buttons decided
from the selection, the segment Accept starts from, polling that survives a failure, a restart asked only
when needed, a declined extension that is not an error, memory given back after a case, views fitted to a
new case."""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import MODULE_DIR

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
sys.path.insert(0, str(MODULE_DIR))

from test_slicer_logic import labeled_volume  # noqa: E402
from test_slicer_results import stored_prediction  # noqa: E402

from extremeaug.project import RunState, RunStatus, Structure  # noqa: E402
from ExtremeAugSegmentLib import Panel, PhantomSample, Results, SceneIO, Session  # noqa: E402
from ExtremeAugSegmentLib.InstallLogic import InstallLogic, Purpose  # noqa: E402

SAMPLE_DATA_LISTS = ("uris", "fileNames", "nodeNames", "loadFiles", "loadFileTypes", "checksums")


def test_the_phantom_sample_source_gives_sample_data_the_lists_it_measures(scene, tmp_path):
    """Slicer's SampleDataSource (5.4 to main) takes len(uris) and zips the file lists: a generated source
    must pass empty lists of one length, not None (a TypeError at every start otherwise)."""
    loaded = []
    arguments = PhantomSample.registrationArguments(loaded.append)
    lists = [arguments[k] for k in SAMPLE_DATA_LISTS]
    assert all(isinstance(v, list) for v in lists) and len({len(v) for v in lists}) == 1
    assert arguments["sampleName"] == PhantomSample.SAMPLE_NAME and callable(arguments["customDownloader"])
    labeled, segmentation, unlabeled = PhantomSample.loadPhantomSample(scene, tmp_path)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == len(PhantomSample.STRUCTURES)
    assert labeled.GetImageData() is not None and unlabeled.GetImageData() is not None


def test_close_scene_keeps_the_settings_and_the_open_projects_folder(scene, logic):
    """vtkMRMLScene::Clear keeps the singleton parameter node but empties it: the training settings and the
    folder of the project that stays open come back, so a .mrb saved afterwards reopens its project."""
    node = Session.parameterNode(scene)
    node.SetParameter("augment", "7")
    node.SetParameter(Session.PROJECT_FOLDER, "/somewhere/else")
    logic.settings.keep()   # what the widget's StartCloseEvent observer calls
    scene.Clear(0)
    assert Session.parameterNode(scene).GetParameter("augment") == ""   # what Clear does to the singleton
    logic.settings.restore()   # the EndCloseEvent observer, before the widget reconnects to the node
    node = Session.parameterNode(scene)
    assert node.GetParameter("augment") == "7"
    assert node.GetParameter(Session.PROJECT_FOLDER) == str(logic.project.root)
    logic.closeProject()
    logic.settings.keep()
    scene.Clear(0)   # no project open any more: no folder to reopen
    logic.settings.restore()
    assert Session.parameterNode(scene).GetParameter(Session.PROJECT_FOLDER) == ""


def test_buttons_follow_what_the_selectors_show():
    volume, segmentation = object(), object()
    states = Panel.buttonStates(True, Panel.Selection(volume, segmentation, 2), False, None)
    assert states["addLabeledScanButton"] and not states["segmentButton"] and not states["acceptButton"]
    assert not Panel.buttonStates(True, Panel.Selection(volume, None, 0), False, None)["addLabeledScanButton"]
    states = Panel.buttonStates(True, Panel.Selection(segmentVolume=volume, result=segmentation, haveModel=True),
                                False, None)
    assert states["segmentButton"] and states["acceptButton"] and states["suggestButton"] and states["trainButton"]
    running = RunState("r1", RunStatus.RUNNING, None, None, None, None, None, False)
    states = Panel.buttonStates(True, Panel.Selection(haveModel=True), True, running)
    assert states["segmentButton"] and not states["suggestButton"]   # Segment reads "Cancel" while a job runs
    assert states["cancelButton"] and not states["trainButton"] and not states["resumeButton"]
    assert not any(v for k, v in Panel.buttonStates(False, Panel.Selection(), False, None).items()
                   if k.endswith("CollapsibleButton"))


def test_accept_starts_on_the_segment_it_can_tell_and_on_none_otherwise(scene):
    _, _, volume, segmentation, first = labeled_volume(scene)
    assert Panel.segmentToAccept(segmentation, None) == first   # the only segment
    mask = sitk.Image(SceneIO.imageFromVolumeNode(volume).GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(SceneIO.imageFromVolumeNode(volume))
    other = SceneIO.setSegmentFromImage(segmentation, mask, volume, "vertebra", (0, 1, 0))
    assert Panel.segmentToAccept(segmentation, Structure("spleen", (1, 0, 0))) is None   # two, neither named so
    assert Panel.segmentToAccept(segmentation, Structure("vertebra", (1, 0, 0))) == other
    assert Panel.segmentToAccept(None, None) is None


def test_a_failed_poll_is_reported_once_and_polling_recovers():
    errors = Panel.PollErrors()
    assert "share unreachable" in errors.failed(OSError("share unreachable"))
    assert errors.failed(OSError("share unreachable")) is None   # no dialog every second
    assert errors.succeeded() == "following the project again" and errors.succeeded() is None


def test_an_installer_that_imports_what_it_installed_asks_for_no_restart(monkeypatch):
    """PyTorchUtils' installTorch ends with `import torch`: only a module imported before the installation
    is stale in this process."""
    import ExtremeAugSegmentLib.InstallLogic as install
    monkeypatch.setattr(install, "modulesToInstall", lambda purpose=None, **_: [] if installed else ["tqdm"])
    monkeypatch.delitem(sys.modules, "tqdm", raising=False)
    installed = []
    logic = InstallLogic(confirm=lambda q: True, pipInstall=lambda r: installed.append(importlib.import_module("tqdm")))
    assert logic.ensure(Purpose.TRAIN) is True and installed and not logic.needsRestart
    installed.clear()   # now tqdm was imported before: replacing it needs a restart
    logic = InstallLogic(confirm=lambda q: True, pipInstall=lambda r: installed.append(r))
    assert logic.ensure(Purpose.TRAIN) is True and logic.needsRestart


def test_declining_the_pytorch_extension_is_not_an_error(monkeypatch):
    """Slicer's installExtensionFromServer returns False when the user answers No to its own question."""
    import ExtremeAugSegmentLib.InstallLogic as install
    monkeypatch.setattr(install, "modulesToInstall", lambda purpose=None, **_: ["torch"])
    logged = []
    logic = InstallLogic(confirm=lambda q: True, log=logged.append, installExtension=lambda name: False)
    assert logic.ensure(Purpose.TRAIN) is False and not logic.needsRestart
    assert any("was not installed" in m for m in logged)


def test_a_case_the_module_loaded_leaves_the_scene_unless_it_holds_unstored_edits(scene, logic):
    """What Accept and next does with the case it moves past: the volume the module loaded, and its result,
    go; a volume the clinician loaded, or a result with edits not stored, stay."""
    _, mask, volume, _, _ = labeled_volume(scene)
    case_id, path = stored_prediction(logic, volume, mask)
    assert logic.releaseCase(volume) == 0 and volume.GetScene() is scene   # the clinician's own volume
    scene.RemoveNode(volume)
    loaded, _, _ = logic.loadCase(case_id)
    assert loaded.GetAttribute(Results.LOADED_ATTRIBUTE)
    result, _ = logic.showResult(loaded, case_id, path, None, 1)
    edited = sitk.GetArrayFromImage(mask)
    edited[7, 2, 3] = 0   # the clinician removes a stray voxel
    edit = sitk.GetImageFromArray(edited)
    edit.CopyInformation(mask)
    SceneIO.setSegmentFromImage(result, edit, loaded, "disc", (1, 0, 0), result.GetSegmentation().GetNthSegmentID(0))
    assert logic.releaseCase(loaded) == 0 and result.GetScene() is scene   # not stored yet: kept
    logic.acceptCorrection(result)
    assert logic.releaseCase(loaded) == 2 and loaded.GetScene() is None and result.GetScene() is None


def test_showing_a_new_volume_asks_for_the_views_to_be_fitted_and_the_same_one_does_not(scene):
    for name in ("Red", "Green"):
        node = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        node.SetName(name)
    layers = Results.SliceLayers(scene)
    first = SceneIO.addVolumeNode(scene, sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)), "a")
    second = SceneIO.addVolumeNode(scene, sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32)), "b")
    assert layers.show(first) is True and layers.show(first) is False and layers.show(second) is True


def test_the_panels_refresh_lists_scene_pairs_to_add_without_hashing_voxels(scene, logic, monkeypatch):
    """Hashing a 512 x 512 x 400 CT takes about 2 s: the list the panel refreshes is told by the module's
    tags, and the content hash is left to Add labeled scan."""
    import ExtremeAugSegmentLib.Logic as logicModule
    _, _, volume, segmentation, segment = labeled_volume(scene)
    logic.addLabeledScan(volume, segmentation, segment)
    _, _, other, otherSegmentation, _ = labeled_volume(scene, seed=1, name="other")

    def no_hashing(image):
        raise AssertionError("the refresh hashed voxels")
    monkeypatch.setattr(logicModule, "image_sha256", no_hashing)
    assert logic.scenePairsToAdd() == [(other, otherSegmentation)]
