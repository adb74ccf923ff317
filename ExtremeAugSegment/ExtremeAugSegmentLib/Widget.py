"""The module panel: a thin Qt layer over ExtremeAugSegmentLogic.

Training runs in the project's background worker process; a 1-second QTimer polls it (never a blocking
loop), so the GUI stays responsive. Every action goes through `_action`, which shows an error's message
and always re-enables the buttons afterwards: a failed step never leaves the panel stuck.
"""
from __future__ import annotations

import functools
import inspect
import logging
import traceback
from pathlib import Path

import qt
import slicer

from extremeaug.project import RunSpec, TrainConfig

from . import Tables
from .InstallLogic import InstallLogic, missingModules, outdatedModules
from .Logic import ExtremeAugSegmentLogic
from .Parameter import ExtremeAugSegmentParameterNode

MODULE_NAME = "ExtremeAugSegment"
POLL_MS = 1000


def _action(method):
    """A button's slot: errors become a message box, the panel is refreshed either way. PythonQt passes a
    signal's arguments (e.g. `clicked`'s `checked`) to a slot that takes *args, so only as many as the
    method declares are passed on."""
    accepted = len(inspect.signature(method).parameters) - 1

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            with slicer.util.WaitCursor():
                return method(self, *args[:accepted])
        except Exception as e:   # shown to the user; the panel stays usable
            from extremeaug.errors import ExtremeAugError
            if isinstance(e, (ExtremeAugError, ValueError)):
                slicer.util.errorDisplay(str(e), windowTitle=MODULE_NAME)
            else:
                logging.error(traceback.format_exc())
                slicer.util.errorDisplay(f"{type(e).__name__}: {e}", windowTitle=MODULE_NAME,
                                         detailedText=traceback.format_exc())
        finally:
            self.safeRefresh()
    return wrapper


class Widget(qt.QWidget):
    def __init__(self, logic: ExtremeAugSegmentLogic = None, parent=None):
        super().__init__(parent)
        self.logic = logic or ExtremeAugSegmentLogic()
        self.installLogic = InstallLogic(confirm=lambda q: slicer.util.confirmOkCancelDisplay(q, MODULE_NAME),
                                         log=self._log)
        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        uiWidget = slicer.util.loadUI(str(Path(__file__).parent.parent / "Resources" / "UI" / f"{MODULE_NAME}.ui"))
        uiWidget.setMRMLScene(slicer.mrmlScene)
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self._wasActive = False

        self._parameterNode, self._guiTag = None, None
        self._connectParameterNode()
        self._sceneObserver = slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent,
                                                           lambda *_: self._connectParameterNode())

        self.ui.openProjectButton.clicked.connect(lambda: self.onOpenProject(False))
        self.ui.createProjectButton.clicked.connect(lambda: self.onOpenProject(True))
        self.ui.inputSegmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        self.ui.inputVolumeSelector.currentNodeChanged.connect(lambda *_: self.safeRefresh())
        self.ui.segmentVolumeSelector.currentNodeChanged.connect(lambda *_: self.safeRefresh())
        self.ui.resultSegmentationSelector.currentNodeChanged.connect(lambda *_: self.safeRefresh())
        self.ui.addLabeledScanButton.clicked.connect(self.onAddLabeledScan)
        self.ui.trainButton.clicked.connect(self.onTrain)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.showPlotButton.clicked.connect(self.onShowPlot)
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.editButton.clicked.connect(self.onEdit)
        self.ui.acceptButton.clicked.connect(self.onAccept)
        self.ui.useVersionButton.clicked.connect(self.onUseVersion)
        self.ui.suggestButton.clicked.connect(self.onSuggest)
        self.ui.installButton.clicked.connect(self.onInstall)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onTimer)
        if self._parameterNode.projectFolder:
            self.ui.projectPathLineEdit.currentPath = self._parameterNode.projectFolder
            self.onOpenProject(False)
        self.safeRefresh()

    def _connectParameterNode(self) -> None:
        """The scene's singleton parameter node (created when missing, e.g. after the scene was closed)."""
        if self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
        node = slicer.mrmlScene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)   # CreateNodeByClass returns a reference Python would otherwise leak
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = slicer.mrmlScene.AddNode(node)
        self._parameterNode = ExtremeAugSegmentParameterNode(node)
        self._guiTag = self._parameterNode.connectGui(self.ui)

    def cleanup(self) -> None:
        self.timer.stop()
        slicer.mrmlScene.RemoveObserver(self._sceneObserver)
        if self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
        self.logic.closeProject()

    # -- actions -------------------------------------------------------------------------------
    @_action
    def onOpenProject(self, create: bool) -> None:
        folder = self.ui.projectPathLineEdit.currentPath
        if not folder:
            raise ValueError("choose a project folder first")
        self.logic.openProject(folder, create=create)
        self._parameterNode.projectFolder = folder
        self.ui.projectPathLineEdit.addCurrentPathToHistory()
        self.timer.start()

    @_action
    def onAddLabeledScan(self) -> None:
        case = self.logic.addLabeledScan(self._parameterNode.inputVolume, self._parameterNode.inputSegmentation,
                                         self.ui.inputSegmentComboBox.currentData)
        self._log(f"added {case.id}: {case.state.value} label, {case.split.value} split")

    @_action
    def onTrain(self) -> None:
        if not self._dependenciesReady():
            return
        p = self._parameterNode
        runId = self.logic.startTraining(RunSpec(
            TrainConfig(augment=p.augment, epochs=p.epochs, width=None if p.width == "auto" else int(p.width)),
            device=p.device, time_budget_min=p.time_budget_min or None))
        self._log(f"training run {runId} started in the background")
        self.onShowPlot()

    @_action
    def onCancel(self) -> None:
        self.logic.cancelTraining()

    @_action
    def onShowPlot(self) -> None:
        chart = self.logic.updateTrainingPlot()
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    @_action
    def onSegment(self) -> None:
        if not self._dependenciesReady():
            return
        volume = self._parameterNode.segmentVolume
        segmentation, probability, result = self.logic.segmentVolume(
            volume, self.ui.modelVersionComboBox.currentData, self._parameterNode.showProbabilities)
        self._show(volume, segmentation, probability)
        self._log(f"segmented {result.case_id} with model v{result.version} "
                  f"(uncertainty {result.uncertainty:.3f} bits)")

    @_action
    def onEdit(self) -> None:
        segmentation = self._parameterNode.resultSegmentation
        volume = segmentation.GetNodeReference("ExtremeAugSegment.Volume") if segmentation else None
        if segmentation is None:
            raise ValueError("choose a result segmentation first")
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        if volume is not None:   # setMasterVolumeNode before Slicer 5.4
            (getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode)(volume)

    @_action
    def onAccept(self) -> None:
        case = self.logic.acceptCorrection(self._parameterNode.resultSegmentation)
        self._log(f"stored the {case.state.value} label of {case.id} ({case.split.value} split); "
                  "train again to learn from it")

    @_action
    def onUseVersion(self) -> None:
        row = self.ui.versionsTableWidget.currentRow()
        if row < 0:
            raise ValueError("select a model version in the table first")
        version = self.logic.useVersion(int(self.ui.versionsTableWidget.item(row, 0).text()))
        self._log(f"model version {version} is active")

    @_action
    def onSuggest(self) -> None:
        info, volume, segmentation, probability = self.logic.suggestNext()
        self.ui.suggestionLabel.text = f"{info.case or 'nothing to correct'}: {info.reason}"
        if volume is not None:
            self._show(volume, segmentation, probability)

    @_action
    def onInstall(self) -> None:
        self._dependenciesReady()

    def onTimer(self) -> None:
        try:
            state = self.logic.poll()
        except Exception as e:   # e.g. the project folder vanished: report once, stop polling
            self.timer.stop()
            slicer.util.errorDisplay(f"stopped following the project: {e}", windowTitle=MODULE_NAME)
            return
        self.ui.trainingProgressBar.value = int(round(100 * state.fraction))
        self.ui.trainingStatusLabel.text = state.text
        if state.active or self._wasActive:
            self.logic.updateTrainingPlot()
        if self._wasActive and not state.active:
            self.safeRefresh()
            if state.status in ("failed", "died"):
                slicer.util.errorDisplay(f"Training {state.status}: {state.message}", windowTitle=MODULE_NAME)
        self._wasActive = state.active
        self._setTrainingButtons(state.active)

    def onSegmentationChanged(self, node) -> None:
        combo = self.ui.inputSegmentComboBox
        combo.clear()
        if node is not None:
            segmentation = node.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):
                combo.addItem(segmentation.GetNthSegment(i).GetName(), segmentation.GetNthSegmentID(i))
        self.safeRefresh()

    # -- display -------------------------------------------------------------------------------
    def safeRefresh(self) -> None:
        try:
            self.refresh()
        except Exception:
            logging.error(traceback.format_exc())
            self._setTrainingButtons(self._wasActive)

    def refresh(self) -> None:
        """Project summary, tables, model list and which buttons can act now."""
        isOpen = self.logic.isOpen
        self.ui.projectStatusLabel.text = Tables.statusText(self.logic.status() if isOpen else None)
        if isOpen:
            self._fillCases()
            self._fillVersions()
        pairs = len(self.logic.scenePairs())
        self.ui.scenePairsLabel.text = f"{pairs} volume + segmentation pair(s) in the scene"
        p = self._parameterNode
        for widget in (self.ui.dataCollapsibleButton, self.ui.trainCollapsibleButton,
                       self.ui.segmentCollapsibleButton, self.ui.correctCollapsibleButton,
                       self.ui.modelsCollapsibleButton):
            widget.enabled = isOpen
        self.ui.addLabeledScanButton.enabled = bool(p.inputVolume and p.inputSegmentation and
                                                    self.ui.inputSegmentComboBox.count)
        self.ui.segmentButton.enabled = bool(p.segmentVolume) and self.ui.modelVersionComboBox.count > 0
        self.ui.editButton.enabled = self.ui.acceptButton.enabled = bool(p.resultSegmentation)
        missing, outdated = missingModules(), outdatedModules()
        problems = (["missing: " + ", ".join(missing)] if missing else []) + (
            ["too old: " + ", ".join(outdated)] if outdated else [])
        self.ui.dependenciesLabel.text = "; ".join(problems) or \
            "torch, onnxruntime and the other packages are installed"
        self._setTrainingButtons(self._wasActive)

    def _setTrainingButtons(self, active: bool) -> None:
        self.ui.trainButton.enabled = self.logic.isOpen and not active
        self.ui.cancelButton.enabled = active

    def _fillCases(self) -> None:
        rows = [Tables.caseRow(c) for c in self.logic.caseRows()]
        rows += [Tables.scenePairRow(v.GetName(), s.GetName()) for v, s in self.logic.scenePairsToAdd()]
        _fillTable(self.ui.casesTableWidget, rows)

    def _fillVersions(self) -> None:
        versions = self.logic.versions()
        _fillTable(self.ui.versionsTableWidget, [Tables.versionRow(v) for v in versions])
        combo = self.ui.modelVersionComboBox
        combo.clear()
        if versions:
            combo.addItem("active version", None)
        for v in versions:
            combo.addItem(f"v{v.version}", v.version)

    def _show(self, volume, segmentation, probability) -> None:
        slicer.util.setSliceViewerLayers(background=volume, foreground=probability,
                                         foregroundOpacity=0.4 if probability is not None else 0.0, fit=True)
        if segmentation is not None:
            self._parameterNode.resultSegmentation = segmentation

    def _dependenciesReady(self) -> bool:
        if not self.installLogic.ensure():
            return False
        if self.installLogic.needsRestart:
            slicer.util.infoDisplay("The dependencies are installed; restart 3D Slicer to use them.",
                                    windowTitle=MODULE_NAME)
            return False
        return True

    def _log(self, message: str) -> None:
        logging.info(message)
        slicer.util.showStatusMessage(message, 5000)


def _fillTable(table, rows) -> None:
    table.setRowCount(len(rows))
    for r, values in enumerate(rows):
        for col, value in enumerate(values):
            table.setItem(r, col, qt.QTableWidgetItem(value))
