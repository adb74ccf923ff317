"""The correction tools inside the module's panel: the segment to accept, and the Segment Editor itself
(sharing the Segment Editor module's singleton parameter node, as MONAI Label and SlicerNNInteractive do),
so the loop is one panel: result -> edit -> accept -> next. Needs the Slicer application (Qt)."""
from __future__ import annotations

import slicer

from .Results import VOLUME_ROLE

EDITOR_SINGLETON = "SegmentEditor"


class EditorPanel:
    def __init__(self, formLayout, row: int):
        self.segmentSelector = slicer.qMRMLSegmentSelectorWidget()
        self.segmentSelector.setMRMLScene(slicer.mrmlScene)
        self.segmentSelector.segmentationNodeSelectorVisible = False
        self.segmentSelector.noneEnabled = False
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

    def follow(self, segmentationNode) -> None:
        """Edit and accept the chosen result, on its own volume."""
        self.segmentSelector.setCurrentNode(segmentationNode)
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
