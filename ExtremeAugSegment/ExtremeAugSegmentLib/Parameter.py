"""The module's GUI state, kept in the scene's parameter node (saved with the scene, restored on load).

Every field connected to a widget has the same name as that widget's `SlicerParameterName` property in
Resources/UI/ExtremeAugSegment.ui (a test checks both ways). Training settings carry the names and
defaults of the engine's one definition (extremeaug.common.config). The project folder is not connected: opening
a project is an action (it can fail), so the widget writes it here only once the project is open.
No `from __future__ import annotations` here: the wrapper reads the annotations as types, not strings.
"""
from typing import Annotated

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from extremeaug.common.config import RUN_DEFAULTS, TRAIN_DEFAULTS, Device
from extremeaug.project import RunSpec


@parameterNodeWrapper
class ExtremeAugSegmentParameterNode:
    projectFolder: str = ""
    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    augment: Annotated[int, WithinRange(1, 200)] = TRAIN_DEFAULTS.augment
    epochs: Annotated[int, WithinRange(1, 1000)] = TRAIN_DEFAULTS.epochs
    # the spin box cannot hold "no budget" (RUN_DEFAULTS.time_budget_min is None): 0 stands for it
    time_budget_min: Annotated[float, WithinRange(0.0, 10000.0)] = RUN_DEFAULTS.time_budget_min or 0.0
    width: Annotated[str, Choice(["auto", "8", "16", "32"])] = "auto"
    device: Annotated[str, Choice([Device.AUTO.value, Device.CPU.value])] = RUN_DEFAULTS.device.value
    unlabeled: bool = RunSpec.unlabeled
    segmentVolume: vtkMRMLScalarVolumeNode
    showProbabilities: bool = True
    resultSegmentation: vtkMRMLSegmentationNode
