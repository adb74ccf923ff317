"""The module panel: a thin Qt layer over ExtremeAugSegmentLogic.

Nothing long runs on the GUI thread: training runs in the project's worker process, segmentation and the
segmenting behind Suggest in a child process, and one 1-second QTimer polls both (each poll reads a row
and a few new lines; a busy database skips the tick). Every action goes through `Slots.action`, which shows an
error's message and always refreshes the buttons afterwards: a failed step never leaves the panel stuck.
The loop is one panel: result -> edit (embedded Segment Editor) -> accept -> next case. What can be
decided without Qt (which buttons act, the segment to accept, a failed poll) is in Panel.py; handlers read
the selectors themselves, never the parameter node (see Panel.py for why).
"""
from __future__ import annotations

import logging
import traceback
from pathlib import Path

import qt
import slicer

from extremeaug.project import RunSpec, TrainConfig

from . import Panel, Results, Session, Tables
from .EditorPanel import EditorPanel
from .InstallLogic import InstallLogic, Purpose, missingModules, outdatedModules
from .Logic import ExtremeAugSegmentLogic
from .Parameter import ExtremeAugSegmentParameterNode
from .Slots import MODULE_NAME, action, confirmWithoutWaitCursor, fillTable, withoutWaitCursor

POLL_MS = 1000


class Widget(qt.QWidget):
    def __init__(self, logic: ExtremeAugSegmentLogic = None, parent=None):
        super().__init__(parent)
        self.logic = logic or ExtremeAugSegmentLogic()
        self.layers = Results.SliceLayers(slicer.mrmlScene)
        self.installLogic = InstallLogic(confirm=confirmWithoutWaitCursor, log=self._installLog)
        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        uiWidget = slicer.util.loadUI(str(Path(__file__).parent.parent / "Resources" / "UI" / f"{MODULE_NAME}.ui"))
        uiWidget.setMRMLScene(slicer.mrmlScene)
        layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.correction = EditorPanel(self.ui.correctCollapsibleButton.layout(), 1)
        self._shownProbability, self._pollErrors, self._entered, self._unseen = None, Panel.PollErrors(), False, []
        self._parameterNode, self._guiTag = None, None
        self._connectParameterNode()
        scene = slicer.mrmlScene
        self._sceneObservers = [scene.AddObserver(scene.StartCloseEvent, lambda *_: self.onSceneStartClose()),
                                scene.AddObserver(scene.EndCloseEvent, lambda *_: self.onSceneEndClose()),
                                scene.AddObserver(scene.EndImportEvent, lambda *_: self.onSceneEndImport())]
        self.ui.openProjectButton.clicked.connect(lambda: self.onOpenProject(False))
        self.ui.createProjectButton.clicked.connect(lambda: self.onOpenProject(True))
        self.ui.inputSegmentationSelector.currentNodeChanged.connect(self.fillSegments)
        for selector in (self.ui.inputVolumeSelector, self.ui.segmentVolumeSelector):
            selector.currentNodeChanged.connect(lambda *_: self.safeRefresh())
        self.ui.resultSegmentationSelector.currentNodeChanged.connect(self.onResultChanged)
        self.ui.showProbabilitiesCheckBox.toggled.connect(self.onShowProbabilities)
        for button, slot in ((self.ui.addLabeledScanButton, self.onAddLabeledScan), (self.ui.trainButton, self.onTrain),
                             (self.ui.cancelButton, self.onCancel), (self.ui.resumeButton, self.onResume),
                             (self.ui.showPlotButton, self.onShowPlot), (self.ui.segmentButton, self.onSegment),
                             (self.ui.segmentUnlabeledButton, self.onSegmentUnlabeled),
                             (self.ui.editButton, self.onEdit), (self.ui.acceptButton, self.onAccept),
                             (self.ui.acceptNextButton, self.onAcceptAndNext),
                             (self.ui.useVersionButton, self.onUseVersion), (self.ui.suggestButton, self.onSuggest),
                             (self.ui.installButton, self.onInstall)):
            button.clicked.connect(slot)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onTimer)
        self._reopenSavedProject()
        self.safeRefresh()

    def _connectParameterNode(self) -> None:
        """The scene's singleton parameter node (created when missing, e.g. after the scene was closed)."""
        if self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
        self._parameterNode = ExtremeAugSegmentParameterNode(Session.parameterNode(slicer.mrmlScene))
        self._guiTag = self._parameterNode.connectGui(self.ui)

    def enter(self) -> None:
        self._entered = True
        self.correction.enter()
        self.fillSegments()
        self.onResultChanged(self.ui.resultSegmentationSelector.currentNode())
        for message in self._unseen:   # what went wrong while another module was shown
            slicer.util.errorDisplay(message, windowTitle=MODULE_NAME)
        self._unseen = []

    def exit(self) -> None:
        self._entered = False
        self.correction.exit()

    def onSceneEndClose(self) -> None:
        self.logic.settings.restore()   # Clear emptied the parameter node; the project is still open
        self._connectParameterNode()

    def onSceneStartClose(self) -> None:
        self.logic.settings.keep()
        self.logic.cancelJob()   # its volumes are going away
        self.correction.sceneClosing()
        self.layers.forget()
        self._shownProbability = None

    def onSceneEndImport(self) -> None:
        """A loaded scene (.mrb) brings its own parameter node: reopen the project it names."""
        self._connectParameterNode()
        self.correction.connectParameterNode()
        self._reopenSavedProject()

    def _reopenSavedProject(self) -> None:
        folder = self._parameterNode.projectFolder
        if folder and (not self.logic.isOpen or Path(folder).resolve() != self.logic.project.root):
            self.ui.projectPathLineEdit.currentPath = folder
            self.onOpenProject(False)

    def cleanup(self) -> None:
        self.timer.stop()
        self.correction.exit()   # its keyboard shortcuts live on the main window, not in this panel
        for observer in self._sceneObservers:
            slicer.mrmlScene.RemoveObserver(observer)
        if self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
        self.logic.closeProject()

    # -- actions -------------------------------------------------------------------------------
    @action
    def onOpenProject(self, create: bool) -> None:
        folder = self.ui.projectPathLineEdit.currentPath
        if not folder:
            raise ValueError("choose a project folder first")
        self.logic.openProject(folder, create=create)
        self._parameterNode.projectFolder = folder
        self.ui.projectPathLineEdit.addCurrentPathToHistory()
        self.timer.start()

    @action
    def onAddLabeledScan(self) -> None:
        case = self.logic.addLabeledScan(self.ui.inputVolumeSelector.currentNode(),
                                         self.ui.inputSegmentationSelector.currentNode(),
                                         self.ui.inputSegmentComboBox.currentData)
        self._log(f"added {case.id}: {case.state.value} label, {case.split.value} split")

    @action
    def onTrain(self) -> None:
        if not self._dependenciesReady(Purpose.TRAIN):
            return
        p = self._parameterNode
        runId = self.logic.startTraining(RunSpec(
            TrainConfig(augment=p.augment, epochs=p.epochs, width=None if p.width == "auto" else int(p.width)),
            device=p.device, time_budget_min=p.time_budget_min or None, unlabeled=p.unlabeled))
        self._log(f"training run {runId} started in the background")
        self.onShowPlot()

    @action
    def onResume(self) -> None:
        if self._dependenciesReady(Purpose.TRAIN):
            self._log(f"training run {self.logic.resumeTraining(self._parameterNode.device)} resumed")

    @action
    def onCancel(self) -> None:
        self.logic.cancelTraining()

    @action
    def onShowPlot(self) -> None:
        chart = self.logic.updateTrainingPlot()
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    @action
    def onSegment(self) -> None:
        if self.logic.jobRunning:   # the button reads "Cancel" while a segmentation runs
            self.logic.cancelJob()
            return
        if self._dependenciesReady(Purpose.SEGMENT):
            p = self._parameterNode
            self._jobStarted(self.logic.startSegment(self.ui.segmentVolumeSelector.currentNode(),
                                                     self.ui.modelVersionComboBox.currentData, p.device,
                                                     p.showProbabilities))

    @action
    def onSegmentUnlabeled(self) -> None:
        if self._dependenciesReady(Purpose.SEGMENT):
            self._jobStarted(self.logic.startSegmentUnlabeled(self.ui.modelVersionComboBox.currentData,
                                                              self._parameterNode.device))

    @action
    def onEdit(self) -> None:
        segmentation = self.ui.resultSegmentationSelector.currentNode()
        if segmentation is None:
            raise ValueError("choose a result segmentation first")
        self.ui.correctCollapsibleButton.collapsed = False
        self.onResultChanged(segmentation)

    @action
    def onAccept(self) -> None:
        self._accept()

    @action
    def onAcceptAndNext(self) -> None:
        done = self._accept()   # raises when the correction could not be stored: then no next case
        self._suggest()
        if done is not self.ui.resultSegmentationSelector.currentNode():   # moved on: its memory back
            self.logic.releaseCase(done.GetNodeReference(Results.VOLUME_ROLE))

    def _accept(self):
        result = self.ui.resultSegmentationSelector.currentNode()
        case = self.logic.acceptCorrection(result, self.correction.chosenSegment())
        self._log(f"stored the {case.state.value} label of {case.id} ({case.split.value} split); "
                  "train again to learn from it")
        return result

    @action
    def onUseVersion(self) -> None:
        row = self.ui.versionsTableWidget.currentRow()
        if row < 0:
            raise ValueError("select a model version in the table first")
        version = self.logic.useVersion(int(self.ui.versionsTableWidget.item(row, 0).text()))
        self._log(f"model version {version} is active")

    @action
    def onSuggest(self) -> None:
        self._suggest()

    def _suggest(self) -> None:
        if not self._dependenciesReady(Purpose.SEGMENT):
            return
        state = self.logic.startSuggest(self._parameterNode.device)
        if state is not None:   # cases to segment first: the suggestion follows when the job ends
            self._jobStarted(state)
            return
        self._showSuggestion(*self.logic.suggestNext())

    @action
    def onInstall(self) -> None:
        self._dependenciesReady(Purpose.TRAIN)

    def onShowProbabilities(self, show: bool) -> None:
        if not show:
            self.layers.hideOverlay()
        elif self._shownProbability is not None:
            self.layers.showOverlay(self._shownProbability)

    def onResultChanged(self, node) -> None:
        """The accept selector, the embedded editor and Show 3D follow the chosen result."""
        self.correction.follow(node, self.logic.project.structure() if self.logic.isOpen else None)
        self.ui.show3DButton.setSegmentationNode(node)
        self.safeRefresh()

    # -- polling -------------------------------------------------------------------------------
    def onTimer(self) -> None:
        """Training and segmentation progress. A notification comes last, from a state already recorded, so
        the timer firing again inside its dialog's event loop does not announce the same thing twice."""
        try:
            state = self.logic.poll()
        except Exception as e:   # e.g. the project folder unreachable for a while: said once, polling goes on
            message = self._pollErrors.failed(e)
            if message:
                self._log(message)
                self.ui.trainingStatusLabel.text = message
            return
        if self._pollErrors.failing is not None:
            self._log(self._pollErrors.succeeded())
        try:
            update, jobError = self.logic.pollJob(), None
        except Exception as e:   # showing an ended job's result failed: the job is gone, training is still followed
            update, jobError = None, e
        if not state.skipped:
            self.ui.trainingProgressBar.value = int(round(100 * state.fraction))
            self.ui.trainingStatusLabel.text = state.text
            if state.active or state.ended:
                self.logic.updateTrainingPlot()
        if update is not None:
            self.ui.segmentProgressBar.value = int(round(100 * update.state.fraction))
            self.ui.segmentStatusLabel.text = Tables.jobText(update.state)
        if state.ended or (update is not None and not update.state.active):
            self.safeRefresh()
        if update is not None and not update.state.active:
            self._jobEnded(update)
        if jobError is not None:
            self._announce(f"The segmentation could not be shown: {jobError}")
        if state.ended and state.status in ("failed", "died"):
            self._announce(f"Training {state.status}: {state.message}")

    def _announce(self, message: str) -> None:
        """A dialog while the panel is shown; in another module the status bar, and the dialog on return."""
        if self._entered:
            slicer.util.errorDisplay(message, windowTitle=MODULE_NAME)
        else:
            self._log(message)
            self._unseen.append(message)

    def _jobStarted(self, state) -> None:
        self.ui.segmentProgressBar.value = 0
        self.ui.segmentStatusLabel.text = Tables.jobText(state)

    def _jobEnded(self, update) -> None:
        for volume, segmentation, probability in update.shown:
            self._show(volume, segmentation, probability)
        if update.suggestion is not None:
            self.ui.suggestionLabel.text = Tables.suggestionText(update.suggestion)
        if update.state.status.value == "failed":
            self._announce(f"Segmentation failed: {update.state.message}")

    def _showSuggestion(self, info, volume, segmentation, probability) -> None:
        self.ui.suggestionLabel.text = Tables.suggestionText(info)
        if volume is not None:
            self._show(volume, segmentation, probability)

    # -- display -------------------------------------------------------------------------------
    def fillSegments(self, node=None) -> None:
        """The chosen segmentation's segments (called on selection and on entering the module, so segments
        drawn meanwhile in the Segment Editor are listed)."""
        combo, node = self.ui.inputSegmentComboBox, node or self.ui.inputSegmentationSelector.currentNode()
        current = combo.currentData
        combo.clear()
        if node is not None:
            segmentation = node.GetSegmentation()
            if segmentation.GetNumberOfSegments() > 1:
                combo.addItem("All segments (one structure each)", "")
            for i in range(segmentation.GetNumberOfSegments()):
                combo.addItem(segmentation.GetNthSegment(i).GetName(), segmentation.GetNthSegmentID(i))
        combo.setCurrentIndex(max(0, combo.findData(current)))
        self.safeRefresh()

    def safeRefresh(self) -> None:
        try:
            self.refresh()
        except Exception:
            logging.error(traceback.format_exc())

    def refresh(self) -> None:
        """Project summary, tables, model list and which buttons can act now."""
        isOpen = self.logic.isOpen
        status = self.logic.status() if isOpen else None
        self.ui.projectStatusLabel.text = Tables.statusText(status)
        if isOpen:
            self._fillCases()
            self._fillVersions()
        self.ui.scenePairsLabel.text = f"{len(self.logic.scenePairs())} volume + segmentation pair(s) in the scene"
        selection = Panel.Selection(
            self.ui.inputVolumeSelector.currentNode(), self.ui.inputSegmentationSelector.currentNode(),
            self.ui.inputSegmentComboBox.count, self.ui.segmentVolumeSelector.currentNode(),
            self.ui.resultSegmentationSelector.currentNode(), self.ui.modelVersionComboBox.count > 0)
        for name, enabled in Panel.buttonStates(isOpen, selection, self.logic.jobRunning,
                                                status.run if status else None).items():
            getattr(self.ui, name).enabled = enabled
        self.ui.segmentButton.text = "Cancel segmentation" if self.logic.jobRunning else "Segment"
        missing, outdated = missingModules(), outdatedModules()
        problems = (["missing: " + ", ".join(missing)] if missing else []) + (
            ["too old: " + ", ".join(outdated)] if outdated else [])
        self.ui.dependenciesLabel.text = "; ".join(problems) or \
            "torch, onnxruntime and the other packages are installed"

    def _fillCases(self) -> None:
        cases = self.logic.caseRows()
        rows = [Tables.caseRow(c) for c in cases]
        rows += [Tables.scenePairRow(v.GetName(), s.GetName()) for v, s in self.logic.scenePairsToAdd(cases)]
        fillTable(self.ui.casesTableWidget, rows)

    def _fillVersions(self) -> None:
        versions = self.logic.versions()
        fillTable(self.ui.versionsTableWidget, [Tables.versionRow(v) for v in versions])
        combo = self.ui.modelVersionComboBox
        chosen = combo.currentData
        combo.clear()
        if versions:
            combo.addItem("active version", None)
        for v in versions:
            combo.addItem(f"v{v.version}", v.version)
        combo.setCurrentIndex(max(0, combo.findData(chosen)))   # the user's choice survives a refresh

    def _show(self, volume, segmentation, probability) -> None:   # views fitted to a new volume only
        self._shownProbability = probability
        if self.layers.show(volume, probability if self._parameterNode.showProbabilities else None):
            slicer.util.resetSliceViews()
        if segmentation is not None:
            self.ui.resultSegmentationSelector.setCurrentNode(segmentation)

    def _dependenciesReady(self, purpose: Purpose) -> bool:
        self.setEnabled(False)   # no second click while pip runs (under the slot's wait cursor)
        try:
            ready = self.installLogic.ensure(purpose)
        finally:
            self.setEnabled(True)
        if self.installLogic.needsRestart:
            withoutWaitCursor(slicer.util.infoDisplay, "The dependencies are installed; restart 3D Slicer to use "
                              "them.", windowTitle=MODULE_NAME)
            return False
        return ready

    def _installLog(self, message: str) -> None:
        self.ui.dependenciesCollapsibleButton.collapsed = False
        self.ui.installLogTextEdit.appendPlainText(message)
        slicer.app.processEvents()   # the log shows while pip runs
        self._log(message)

    def _log(self, message: str) -> None:
        logging.info(message)
        slicer.util.showStatusMessage(message, 5000)
