"""The module's GUI state, kept in the scene's parameter node (saved with the scene, restored on load).

Every field connected to a widget has the same name as that widget's `SlicerParameterName` property in
Resources/UI/ExtremeAugSegment.ui (a test checks both ways). The project folder is not connected: opening
a project is an action (it can fail), so the widget writes it here only once the project is open.
No `from __future__ import annotations` here: the wrapper reads the annotations as types, not strings.
"""
from typing import Annotated

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper


@parameterNodeWrapper
class ExtremeAugSegmentParameterNode:
    projectFolder: str = ""
    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    augment: Annotated[int, WithinRange(1, 200)] = 50
    epochs: Annotated[int, WithinRange(1, 1000)] = 100
    timeBudgetMinutes: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0
    width: Annotated[str, Choice(["auto", "8", "16", "32"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu"])] = "auto"
    segmentVolume: vtkMRMLScalarVolumeNode
    showProbabilities: bool = True
    resultSegmentation: vtkMRMLSegmentationNode
