"""The clinician's loop clicked through the real panel in 3D Slicer: the Sample Data button, the panel's
selectors and every one of its buttons, Close Scene and a reopened .mrb, with what the panel shows checked
after each step. ExtremeAugSegmentTest runs it (Reload and Test, or `ctest -R ExtremeAugSegment`); it
needs the application, so CI checks statically that it reaches every button of the .ui
(Testing/test_slicer_static.py), and SelfTest.py runs the same loop through the Logic under pytest.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import slicer

from extremeaug.project import CaseState

from . import Session
from .EditorPanel import EDITOR_SINGLETON
from .PhantomSample import SAMPLE_NAME, STRUCTURES
from .Results import VOLUME_ROLE


def waitUntil(condition: Callable[[], bool], what: str, timeout_s: float = 900.0) -> None:
    """Let the application run (the panel's timer polls) until `condition` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        slicer.app.processEvents()
        time.sleep(0.05)


def runPanelLoop(workdir: str | Path, log: Callable[[str], None] = print) -> None:
    workdir = Path(workdir)
    slicer.util.selectModule("SampleData")
    slicer.util.findChild(slicer.modules.sampledata.widgetRepresentation(), f"{SAMPLE_NAME}PushButton").click()
    labeled, unlabeled = slicer.util.getNode("phantom_0"), slicer.util.getNode("phantom_1")
    delineation = slicer.util.getNode("phantom_0 delineation")
    slicer.util.selectModule("ExtremeAugSegment")
    panel = slicer.util.getModuleWidget("ExtremeAugSegment").widget
    ui, logic = panel.ui, panel.logic
    log("the phantom sample loaded from Sample Data")

    ui.projectPathLineEdit.currentPath = str(workdir / "project")
    ui.createProjectButton.click()
    _check(logic.isOpen and ui.dataCollapsibleButton.enabled, "Create project did not open the project")
    ui.inputVolumeSelector.setCurrentNode(labeled)
    ui.inputSegmentationSelector.setCurrentNode(delineation)
    _check(ui.inputSegmentComboBox.count == len(STRUCTURES) + 1, "the segments of the new selection are not listed")
    _check(ui.addLabeledScanButton.enabled, "Add labeled scan is not enabled by the selection just made")
    ui.addLabeledScanButton.click()
    _check([c.state for c in logic.caseRows()] == [CaseState.MANUAL], f"cases: {logic.caseRows()}")
    log("project created, labeled scan added")

    ui.augmentSpinBox.value, ui.epochsSpinBox.value, ui.timeBudgetSpinBox.value = 3, 1, 0
    ui.widthComboBox.currentText, ui.deviceComboBox.currentText = "8", "cpu"
    ui.trainButton.click()
    waitUntil(lambda: ui.cancelButton.enabled, "the training run to start")
    ui.showPlotButton.click()
    ui.cancelButton.click()
    waitUntil(lambda: not ui.cancelButton.enabled, "the cancelled run to stop")
    if ui.resumeButton.enabled:
        ui.resumeButton.click()
    else:   # cancelled before its first checkpoint: nothing to resume, so a new run
        log("the run stopped before its first checkpoint; training again")
        ui.trainButton.click()
    waitUntil(lambda: ui.modelVersionComboBox.count > 0 and ui.trainButton.enabled, "model version 1")
    log(f"trained: {ui.trainingStatusLabel.text}")

    ui.segmentVolumeSelector.setCurrentNode(unlabeled)
    ui.segmentButton.click()
    _check(ui.segmentButton.text == "Cancel segmentation", "Segment did not turn into Cancel")
    waitUntil(lambda: ui.segmentButton.text == "Segment", "the segmentation", 300)
    result = ui.resultSegmentationSelector.currentNode()
    _check(result is not None and result.GetNodeReference(VOLUME_ROLE) is unlabeled, "no result for phantom_1")
    _check(ui.acceptButton.enabled and ui.editButton.enabled, "Accept/Edit not enabled for the shown result")
    ui.segmentUnlabeledButton.click()   # phantom_1 has no human label yet: segmented again, in the background
    waitUntil(lambda: ui.suggestButton.enabled, "Segment all unlabeled", 300)
    ui.unlabeledCheckBox.checked = True   # a run that also learns from phantom_1's pseudo-labels
    ui.trainButton.click()
    waitUntil(lambda: ui.modelVersionComboBox.count > 1 and ui.trainButton.enabled, "model version 2")
    ui.unlabeledCheckBox.checked = False
    caseId = unlabeled.GetAttribute("ExtremeAugSegment.CaseId")
    _check([case for case, _ in logic.project.job(logic.project.run().id)[2]] == [caseId], "phantom_1 not used")
    _check(not any(lab.kind.human for lab in logic.project.case(caseId).history), "a pseudo-label was stored")
    log("trained again with the unlabeled scan's pseudo-labels")
    ui.editButton.click()
    _check(not ui.correctCollapsibleButton.collapsed and panel.correction.editor.segmentationNode() is result,
           "Edit did not open the embedded editor on the result")
    moduleEditor = slicer.mrmlScene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    _check(EDITOR_SINGLETON != "SegmentEditor" and (moduleEditor is None or moduleEditor.GetSegmentationNode()
                                                    is not result), "the Segment Editor module's selection changed")
    segments = result.GetSegmentation().GetNumberOfSegments()
    ui.show3DButton.click()
    _check(result.GetSegmentation().ContainsRepresentation("Closed surface"), "Show 3D made no surface")
    ui.show3DButton.click()
    _check(result.GetSegmentation().GetNumberOfSegments() == segments, "Show 3D off changed the segments")
    ui.acceptButton.click()
    _check(logic.project.case(caseId).state == CaseState.CORRECTED, "Accept did not store a corrected label")
    log(f"segmented, edited and accepted {caseId}")

    ui.segmentButton.click()   # a newer prediction of the same case, then Accept and next
    waitUntil(lambda: ui.segmentButton.text == "Segment", "the second segmentation", 300)
    ui.acceptNextButton.click()
    _check(len(logic.project.case(caseId).history) >= 3, "Accept and next stored nothing")
    ui.suggestButton.click()   # every case has a human label now: the panel says so
    _check(ui.suggestionLabel.text != "", "Suggest showed nothing")
    ui.versionsTableWidget.setCurrentCell(0, 0)
    ui.useVersionButton.click()
    _check(logic.status().active_version == int(ui.versionsTableWidget.item(0, 0).text()), "Use version did not")
    ui.installButton.click()   # everything is installed: nothing is asked
    log("accept and next, suggest, model versions")

    mrb = workdir / "loop.mrb"
    _check(slicer.util.saveScene(str(mrb)), f"the scene could not be saved to {mrb}")
    slicer.mrmlScene.Clear(0)   # Close Scene: the project stays open, the panel keeps its settings
    node = Session.parameterNode(slicer.mrmlScene)
    _check(node.GetParameter(Session.PROJECT_FOLDER) == str(logic.project.root), "Close Scene forgot the project")
    _check(ui.augmentSpinBox.value == 3, "Close Scene reset the training settings")
    logic.closeProject()
    slicer.util.loadScene(str(mrb))
    waitUntil(lambda: logic.isOpen, "the .mrb to reopen its project", 60)
    _check(ui.inputVolumeSelector.currentNode() is not None, "the .mrb did not bring back the selections")
    ui.openProjectButton.click()
    _check(logic.isOpen and ui.casesTableWidget.rowCount == 2, "Open project did not show the project's cases")
    log("Close Scene and the reopened .mrb kept the project and the settings")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
