"""Result nodes in the scene: where a prediction is shown, and the guard that keeps a clinician's edits.

MRML only (no Qt, no project). A result is a segmentation node referencing its volume (VOLUME_ROLE) and
carrying the case, the model version and the stored label it shows. It follows the volume: same parent
transform (a segmentation exported on a transformed volume's grid is resampled through both transforms,
so a result outside the volume's transform would come back shifted on Accept) and the same study in the
subject hierarchy. The uncertainty overlay shows only where the model is unsure, and gives the slice
views' foreground back as it found it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from extremeaug.common.errors import ExtremeAugError
from extremeaug.project import Project, Structure

from . import SceneIO

CASE_ATTRIBUTE = "ExtremeAugSegment.CaseId"
PROJECT_ATTRIBUTE = "ExtremeAugSegment.Project"
VERSION_ATTRIBUTE = "ExtremeAugSegment.ModelVersion"
PREDICTION_ATTRIBUTE = "ExtremeAugSegment.PredictionLabel"   # the auto label a result shows
STORED_ATTRIBUTE = "ExtremeAugSegment.StoredLabel"           # the stored label file it equals until edited
SHOWN_ATTRIBUTE = "ExtremeAugSegment.ShownAt"                # when it was shown (for the correction's seconds)
VOLUME_ROLE = "ExtremeAugSegment.Volume"
LOADED_ATTRIBUTE = "ExtremeAugSegment.LoadedFromProject"   # a volume the module loaded (it may remove it again)
PROBABILITY_COLORS = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
UNSURE = (0.05, 0.95)   # a probability overlay (results from before uncertainty maps) shows this range only
WHERE_TO_LOOK = (0.1, 1.0)   # an uncertainty overlay shows this range: 0.1 is p = 0.05 or 0.95 for one structure


def resultSegmentation(scene, volumeNode, name: str, isEdited: Callable[[object], bool]):
    """The volume's result node to (re)use for a new result: the existing one unless the clinician edited it
    (then a new node: the edits stay, unaccepted, in theirs)."""
    existing = _referencing(scene, "vtkMRMLSegmentationNode", volumeNode, name)
    if existing is not None and not isEdited(existing):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name) if existing else name)
    node.SetNodeReferenceID(VOLUME_ROLE, volumeNode.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def draftSegmentation(scene, volumeNode, caseId: str, structures: Sequence[Structure]):
    """A result to draw on for a case no model has segmented: one empty segment per structure (accepting it
    stores a manual label). The volume's draft is reused, with whatever was drawn on it."""
    name = f"{volumeNode.GetName()} segmentation"
    node = _referencing(scene, "vtkMRMLSegmentationNode", volumeNode, name)
    if node is None:
        node = resultSegmentation(scene, volumeNode, name, lambda existing: True)
        for structure in structures:
            segment = node.GetSegmentation().GetSegment(node.GetSegmentation().AddEmptySegment("", structure.name,
                                                                                                structure.color))
            segment.SetName(structure.name)
        for attribute, value in ((CASE_ATTRIBUTE, caseId), (VERSION_ATTRIBUTE, ""), (PREDICTION_ATTRIBUTE, ""),
                                 (STORED_ATTRIBUTE, ""), (SHOWN_ATTRIBUTE, "")):
            node.SetAttribute(attribute, value)
        followVolume(volumeNode, node)
    return node


def isEdited(segmentationNode, volumeNode, stored: Callable[[str], sitk.Image],
             structures: Sequence[Structure]) -> bool:
    """Whether a result differs from the stored label map it showed: a segment added, removed, renamed or
    painted (each segment is compared with its structure's voxels in the stored file)."""
    labelPath = segmentationNode.GetAttribute(STORED_ATTRIBUTE)
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not labelPath:   # it holds nothing stored (a partial accept): edited if anything is drawn
        return any(_segmentVoxels(segmentationNode, i, volumeNode) for i in ids)
    values = {s.name: s.value for s in structures}
    names = [segmentation.GetSegment(i).GetName() for i in ids]
    if len(structures) == 1 and len(ids) == 1:   # one structure: a renamed segment is still that structure
        names = [structures[0].name]
    if sorted(names) != sorted(values):
        return True
    label = sitk.GetArrayFromImage(stored(labelPath))
    def shown(segmentId):   # a copy, not a view: the image is a temporary
        return sitk.GetArrayFromImage(SceneIO.segmentToImage(segmentationNode, segmentId, volumeNode)) > 0
    return any(not np.array_equal(shown(i), label == values[name]) for i, name in zip(ids, names))


def fillResult(segmentationNode, volumeNode, labelmap: sitk.Image, structures: Sequence[Structure]) -> List[str]:
    """The label map as one segment per structure (an empty one too, to draw in), named and coloured as
    trained; returns the segment IDs in the structures' order."""
    segmentation = segmentationNode.GetSegmentation()
    byName = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
              for i in range(segmentation.GetNumberOfSegments())}
    for name, segmentId in byName.items():
        if name not in {s.name for s in structures}:
            segmentation.RemoveSegment(segmentId)
    ids = []
    for structure in structures:
        mask = sitk.Cast(labelmap == structure.value, sitk.sitkUInt8)
        segmentId = SceneIO.setSegmentFromImage(segmentationNode, mask, volumeNode, structure.name, structure.color,
                                                byName.get(structure.name))
        if structure.terminology:
            segment = segmentation.GetSegment(segmentId)
            segment.SetTag(segment.GetTerminologyEntryTagName(), structure.terminology)
        ids.append(segmentId)
    return ids


def labelImage(segmentationNode, segmentIds: Sequence[str], volumeNode, structures: Sequence[Structure]):
    """Segments (one per structure, in order) as the labeled image a project takes, on the volume's grid."""
    masks = [SceneIO.segmentToImage(segmentationNode, i, volumeNode) for i in segmentIds]
    return Project.segmentation_image(masks, structures)


def structuresOf(segmentationNode, segmentIds: Sequence[str]) -> List[Structure]:
    """The segments as structures numbered 1, 2, ... in their order."""
    return [replace(structureOf(segmentationNode, i), value=n) for n, i in enumerate(segmentIds, start=1)]


def structureOf(segmentationNode, segmentId: str) -> Structure:
    """A segment's name, colour and terminology (what the project names its results after)."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    terminology = vtk.mutable("")
    hasTerminology = segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
    return Structure(segment.GetName(), tuple(float(c) for c in segment.GetColor()),
                     str(terminology) if hasTerminology and str(terminology) else None)


def overlayNode(scene, volumeNode, name: str, image: sitk.Image, shown: Tuple[float, float] = WHERE_TO_LOOK):
    """The uncertainty map (or an older result's probability map) as a volume drawn only within `shown`
    (elsewhere transparent): where a correction may be needed, not a tint over the whole slice."""
    node = _referencing(scene, "vtkMRMLScalarVolumeNode", volumeNode, name)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        node.SetNodeReferenceID(VOLUME_ROLE, volumeNode.GetID())
    SceneIO.updateVolumeNodeFromImage(node, image)
    node.CopyOrientation(volumeNode)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetLowerThreshold(shown[0])
    display.SetUpperThreshold(shown[1])
    display.ApplyThresholdOn()
    colors = scene.GetNodeByID(PROBABILITY_COLORS)
    if colors is not None:
        display.SetAndObserveColorNodeID(colors.GetID())
    return node


def followVolume(volumeNode, node) -> None:
    """Put a result under the volume's parent transform and in the volume's study (subject hierarchy)."""
    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
    volumeItem = hierarchy.GetItemByDataNode(volumeNode) if hierarchy is not None else 0
    if not volumeItem:
        return
    parent = hierarchy.GetItemParent(volumeItem)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


class SliceLayers:
    """Shows a volume with its probability overlay in every slice view, and puts back each view's own
    foreground when the overlay is taken away. The zoom is the caller's: `show` says whether any view
    changed volume (a new case, which may lie elsewhere in space: fit the views then)."""

    def __init__(self, scene):
        self.scene = scene
        self._saved: Dict[str, Tuple[Optional[str], float]] = {}   # composite node ID -> (foreground, opacity)

    def show(self, volumeNode, probabilityNode=None, opacity: float = 0.4) -> bool:
        changed = False
        for composite in self._composites():
            changed |= composite.GetBackgroundVolumeID() != volumeNode.GetID()
            composite.SetBackgroundVolumeID(volumeNode.GetID())
        if probabilityNode is not None:
            self.showOverlay(probabilityNode, opacity)
        return changed

    def showOverlay(self, probabilityNode, opacity: float = 0.4) -> None:
        for composite in self._composites():
            self._saved.setdefault(composite.GetID(), (composite.GetForegroundVolumeID(),
                                                       composite.GetForegroundOpacity()))
            composite.SetForegroundVolumeID(probabilityNode.GetID())
            composite.SetForegroundOpacity(opacity)

    def hideOverlay(self) -> None:
        for composite in self._composites():
            if composite.GetID() in self._saved:
                foreground, opacity = self._saved.pop(composite.GetID())
                composite.SetForegroundVolumeID(foreground)
                composite.SetForegroundOpacity(opacity)

    def forget(self) -> None:
        """The scene is closing: its slice views' settings go with it."""
        self._saved.clear()

    def _composites(self):
        return [self.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def _referencing(scene, className: str, volumeNode, name: str):
    """The newest node of the class that references the volume and has the name (or its unique variants)."""
    found = None
    for i in range(scene.GetNumberOfNodesByClass(className)):
        node = scene.GetNthNodeByClass(i, className)
        if node.GetNodeReference(VOLUME_ROLE) is volumeNode and (node.GetName() or "").startswith(name):
            found = node
    return found


def _segmentVoxels(segmentationNode, segmentId: str, volumeNode) -> int:
    mask = SceneIO.segmentToImage(segmentationNode, segmentId, volumeNode)
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def chosenSegments(segmentationNode, segmentIds) -> List[str]:
    """A segment ID, a list of them, or None for every segment of the node."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentIds is None or segmentIds == "":
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    else:
        ids = [segmentIds] if isinstance(segmentIds, str) else list(segmentIds)
    if not ids:
        raise ExtremeAugError(f"segmentation {segmentationNode.GetName()!r} has no segment")
    return ids


def segmentName(segmentationNode, segmentId: str) -> str:
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    return segment.GetName() if segment is not None else segmentId
