"""The correction tools inside the module's panel: the segment to accept, and the Segment Editor itself,
so the loop is one panel: result -> edit -> accept -> next. Needs the Slicer application (Qt).

The embedded editor has a Segment Editor parameter node of its own (singleton tag EDITOR_SINGLETON): the
Segment Editor module's node ("SegmentEditor") is the clinician's selection in that module, and pointing
it at a result whenever this panel is entered would switch their segmentation and source volume and end
their active effect.
"""
from __future__ import annotations

import slicer

from .Panel import segmentToAccept
from .Results import VOLUME_ROLE

EDITOR_SINGLETON = "ExtremeAugSegment.SegmentEditor"


class EditorPanel:
    def __init__(self, formLayout, row: int):
        self.segmentSelector = slicer.qMRMLSegmentSelectorWidget()
        self.segmentSelector.setMRMLScene(slicer.mrmlScene)
        self.segmentSelector.segmentationNodeSelectorVisible = False
        self.segmentSelector.noneEnabled = True   # "none": Accept decides, and asks when it cannot tell
        formLayout.insertRow(row, "Segment to accept:", self.segmentSelector)
        self.editor = slicer.qMRMLSegmentEditorWidget()
        self.editor.setMRMLScene(slicer.mrmlScene)
        self.editor.segmentationNodeSelectorVisible = False
        self.editor.sourceVolumeNodeSelectorVisible = False
        self.editor.setMaximumNumberOfUndoStates(10)
        formLayout.insertRow(row + 1, self.editor)
        self.connectParameterNode()

    def connectParameterNode(self) -> None:
        """The scene's Segment Editor parameter node (created when missing, e.g. after a scene close)."""
        node = slicer.mrmlScene.GetSingletonNode(EDITOR_SINGLETON, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(EDITOR_SINGLETON)
            node = slicer.mrmlScene.AddNode(node)
        self.editor.setMRMLSegmentEditorNode(node)

    def follow(self, segmentationNode, structure=None) -> None:
        """Edit and accept the chosen result, on its own volume, starting on the segment Accept would take."""
        self.segmentSelector.setCurrentNode(segmentationNode)
        self.segmentSelector.setCurrentSegmentID(segmentToAccept(segmentationNode, structure) or "")
        self.editor.setSegmentationNode(segmentationNode)
        volume = segmentationNode.GetNodeReference(VOLUME_ROLE) if segmentationNode is not None else None
        if volume is not None:
            self.editor.setSourceVolumeNode(volume)

    def chosenSegment(self):
        return self.segmentSelector.currentSegmentID() or None

    def enter(self) -> None:
        self.connectParameterNode()
        self.editor.installKeyboardShortcuts()

    def exit(self) -> None:
        self.editor.setActiveEffect(None)
        self.editor.uninstallKeyboardShortcuts()
        self.editor.removeViewObservations()

    def sceneClosing(self) -> None:
        self.editor.setSegmentationNode(None)
        self.editor.removeViewObservations()
