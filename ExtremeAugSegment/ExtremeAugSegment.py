"""3D Slicer module ExtremeAugSegment: train a segmentation model from one delineated scan, segment,
correct, retrain. The panel is ExtremeAugSegmentLib.Widget, the logic ExtremeAugSegmentLib.Logic, the
engine the `extremeaug` package shipped beside this file (also `pip install`-able for the command line)."""
import sys
import tempfile

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)


class ExtremeAugSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ExtremeAugSegment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["The ExtremeAugSegment authors"]
        self.parent.helpText = (
            "Delineate one scan in the Segment Editor, add it as a labeled scan and click <b>Train from "
            "labeled scans</b>: a residual U-Net learns from it with extreme augmentation (Gaonkar et al.) in a "
            "background process. <b>Segment</b> new scans, correct them in the Segment Editor, <b>Accept "
            "correction</b> and retrain: every label and model version is kept in the project folder. "
            "See <a href='https://github.com/ExtremeAugSegment/ExtremeAugSegment#use-it-in-3d-slicer'>the "
            "documentation</a>.")
        self.parent.acknowledgementText = (
            "Method: B. Gaonkar et al., \"Extreme Augmentation: Can deep learning based medical image "
            "segmentation be trained using a single manually delineated scan?\"")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    from ExtremeAugSegmentLib.PhantomSample import registerSampleData
    registerSampleData()


class ExtremeAugSegmentWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from ExtremeAugSegmentLib.Widget import Widget
        self.widget = Widget()
        self.logic = self.widget.logic   # what slicer.util.getModuleLogic returns
        self.layout.addWidget(self.widget)

    def enter(self):
        self.widget.enter()

    def exit(self):
        self.widget.exit()

    def cleanup(self):
        if getattr(self, "widget", None) is not None:
            self.widget.cleanup()

    def onReload(self):
        """Reload the library and the engine too, not only this file (Slicer's Reload re-imports one module)."""
        for name in [n for n in sys.modules if n.split(".")[0] in ("ExtremeAugSegmentLib", "extremeaug")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)


class ExtremeAugSegmentTest(ScriptedLoadableModuleTest):
    """The loop on the phantom through the Logic (SelfTest, which CI also runs) and clicked through the real
    panel (PanelTest). Needs torch and onnxruntime (the module installs them on first use)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from ExtremeAugSegmentLib.InstallLogic import missingModules
        missing = missingModules()
        if missing:   # skipTest would be reported as a failure by Reload and Test
            slicer.util.delayDisplay(f"ExtremeAugSegment self-test skipped: install the dependencies first "
                                     f"(missing: {', '.join(missing)})")
            return
        self.setUp()
        self.test_LogicLoop()
        self.setUp()
        self.test_PanelLoop()

    def test_LogicLoop(self):
        from ExtremeAugSegmentLib.Logic import ExtremeAugSegmentLogic
        from ExtremeAugSegmentLib.SelfTest import runLoop
        logic = ExtremeAugSegmentLogic(slicer.mrmlScene)
        with tempfile.TemporaryDirectory(prefix="ExtremeAugSegmentTest-") as workdir:
            try:   # the wait keeps the application responsive while the worker trains
                runLoop(logic, workdir, wait=lambda s: slicer.util.delayDisplay("training...", int(s * 1000)),
                        log=slicer.util.delayDisplay)
            finally:
                logic.closeProject()
        slicer.util.delayDisplay("ExtremeAugSegment loop through the Logic passed")

    def test_PanelLoop(self):
        from ExtremeAugSegmentLib.PanelTest import runPanelLoop
        with tempfile.TemporaryDirectory(prefix="ExtremeAugSegmentPanelTest-") as workdir:
            try:
                runPanelLoop(workdir, log=slicer.util.delayDisplay)
            finally:
                slicer.util.getModuleWidget("ExtremeAugSegment").widget.logic.closeProject()
        slicer.util.delayDisplay("ExtremeAugSegment loop through the panel passed")
