"""The module's state in the scene across Close Scene, and what the scene gives back after a case.

MRML only. `vtkMRMLScene::Clear` keeps singleton nodes but empties their parameters, so after Close Scene
the module's parameter node would forget the training settings and the open project's folder (a .mrb
saved then would not reopen its project): `ModuleSettings` keeps them over the close, with the folder of
the project that is still open. Every case *Accept and next case* moves past would leave its volume,
overlay and result in the scene (about 0.7 GB for a 512 x 512 x 400 CT); `releaseCase` removes the nodes
the module made for a case once nothing in them is unstored.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import slicer

from .Results import LOADED_ATTRIBUTE, VOLUME_ROLE

MODULE_NAME = "ExtremeAugSegment"
PROJECT_FOLDER = "projectFolder"   # the parameter node field Parameter.py names so


def parameterNode(scene):
    """The scene's singleton parameter node of the module (created when missing)."""
    node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)   # CreateNodeByClass returns a reference Python would otherwise leak
        node.SetSingletonTag(MODULE_NAME)
        node.SetName(MODULE_NAME)
        node = scene.AddNode(node)
    node.SetAttribute("ModuleName", MODULE_NAME)
    return node


class ModuleSettings:
    """Keeps the parameter node's values over a scene close: `keep` at its start, `restore` at its end,
    before the widget reconnects to the node. (The widget's own scene observers call them: an observer
    held here would outlive a scene that is garbage-collected.)"""

    def __init__(self, scene, openFolder: Callable[[], Optional[str]]):
        self.scene, self.openFolder = scene, openFolder
        self._kept: Dict[str, str] = {}

    def keep(self) -> None:
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        self._kept = {name: node.GetParameter(name) for name in node.GetParameterNames()} if node else {}

    def restore(self) -> None:
        folder = self.openFolder()
        if not self._kept and folder is None:
            return
        node = parameterNode(self.scene)
        for name, value in self._kept.items():
            node.SetParameter(name, value)
        if folder is not None:
            node.SetParameter(PROJECT_FOLDER, folder)
        else:
            node.UnsetParameter(PROJECT_FOLDER)
        self._kept = {}


def releaseCase(scene, volumeNode, isEdited: Callable[[object], bool]) -> int:
    """Remove what the module loaded for a case: the volume (only when the module loaded it from the
    project), its overlays and its results. While any of its results holds edits not stored (`isEdited`),
    everything stays. Returns the number of nodes removed."""
    if volumeNode is None or volumeNode.GetScene() is not scene or not volumeNode.GetAttribute(LOADED_ATTRIBUTE):
        return 0
    dependents = []
    for className in ("vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode"):
        for i in range(scene.GetNumberOfNodesByClass(className)):
            node = scene.GetNthNodeByClass(i, className)
            if node is not volumeNode and node.GetNodeReference(VOLUME_ROLE) is volumeNode:
                dependents.append(node)
    if any(isEdited(n) for n in dependents if n.IsA("vtkMRMLSegmentationNode")):
        return 0   # the clinician's work stays in the scene
    for node in dependents + [volumeNode]:
        scene.RemoveNode(node)
    return len(dependents) + 1


def scenePairs(scene) -> List[Tuple[object, object]]:
    """(volume, segmentation) pairs of the scene: segmentations drawn on a volume, i.e. candidate training
    scans (what the Segment Editor creates when a volume is its source)."""
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    pairs = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        segmentationNode = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        volume = segmentationNode.GetNodeReference(VOLUME_ROLE) or segmentationNode.GetNodeReference(role)
        if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
            pairs.append((volume, segmentationNode))
    return pairs
