"""The module's logic: the scene's volume and segmentation nodes <-> an extremeaug labeling project.

MRML only (no Qt), so it runs in 3D Slicer and in a bare MRML scene under pytest. It adds no method of its
own: every project change goes through `extremeaug.project` (the same code as `extremeaug project ...`),
which keeps the label history, the fixed validation split and the model versions.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import SimpleITK as sitk
import slicer

from extremeaug.errors import ExtremeAugError
from extremeaug.io import write_image
from extremeaug.project import cases as projectCases
from extremeaug.project import runs, versions
from extremeaug.project import suggest as projectSuggest
from extremeaug.project.status import project_status
from extremeaug.project.store import Store

from . import SceneIO
from .TrainingMonitor import TrainingMonitor, TrainingState

CASE_ATTRIBUTE = "ExtremeAugSegment.CaseId"
PROJECT_ATTRIBUTE = "ExtremeAugSegment.Project"
VERSION_ATTRIBUTE = "ExtremeAugSegment.ModelVersion"
VOLUME_ROLE = "ExtremeAugSegment.Volume"
SEGMENT_NAME = "intervertebral disc"
SEGMENT_COLOR = (0.90, 0.62, 0.25)
PROBABILITY_COLORS = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"


class ExtremeAugSegmentLogic:
    def __init__(self, scene=None):
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.store: Optional[Store] = None
        self.monitor: Optional[TrainingMonitor] = None

    # -- project -----------------------------------------------------------------------------------
    def openProject(self, folder: str, create: bool = False, plane: str = "auto", valFraction: float = 0.25) -> dict:
        """Open a project folder, or create one in a new or empty folder."""
        self.closeProject()
        if create:
            if not 0 <= valFraction < 1:
                raise ExtremeAugError("the validation fraction must be in [0, 1)")
            self.store = Store.create(folder, plane=plane, val_fraction=valFraction)
        else:
            self.store = Store.open(folder)
        self.monitor = TrainingMonitor(self.store, self.scene)
        return self.status()

    def closeProject(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store, self.monitor = None, None

    @property
    def project(self) -> Store:
        if self.store is None:
            raise ExtremeAugError("no project is open: choose or create a project folder first")
        return self.store

    def status(self) -> dict:
        return project_status(self.project)

    def caseRows(self) -> List[dict]:
        return projectCases.list_cases(self.project)

    def trainingDataRows(self) -> List[dict]:
        """The project's cases, then the scene's volume + segmentation pairs not in the project yet (what
        "Add labeled scan" would add)."""
        rows = self.caseRows()
        for volume, segmentation in self.scenePairs():
            if self.caseIdOf(volume) is None:
                rows.append({"id": volume.GetName(), "state": f"in scene: {segmentation.GetName()}", "split": None,
                             "labels": 0, "auto_version": None, "uncertainty": None})
        return rows

    def scenePairs(self) -> List[Tuple[object, object]]:
        """(volume, segmentation) pairs of the scene: segmentations drawn on a volume, i.e. candidate
        training scans (what the Segment Editor creates when a volume is its source)."""
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        pairs = []
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            segmentationNode = self.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
            volume = segmentationNode.GetNodeReference(VOLUME_ROLE) or segmentationNode.GetNodeReference(role)
            if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA(
                    "vtkMRMLLabelMapVolumeNode"):
                pairs.append((volume, segmentationNode))
        return pairs

    # -- scene -> project --------------------------------------------------------------------------
    def caseIdOf(self, volumeNode) -> Optional[str]:
        """The project case a volume node holds: one this module loaded or added, or one added from the
        same file; None for a volume the project does not know."""
        caseId = volumeNode.GetAttribute(CASE_ATTRIBUTE)
        if caseId and volumeNode.GetAttribute(PROJECT_ATTRIBUTE) == str(self.project.root) and self._known(caseId):
            return caseId
        if _fileOf(volumeNode) is None:   # an unsaved volume is known by its tag only, never by its name
            return None
        row = self.project.conn.execute("SELECT id FROM cases WHERE source = ? ORDER BY added LIMIT 1",
                                        (_sourceDescription(volumeNode),)).fetchone()
        if row is not None:
            self._tag(volumeNode, row["id"])
            return row["id"]
        return None

    def addScan(self, volumeNode, caseId: Optional[str] = None) -> str:
        """Register a volume as an unlabeled case (a copy of its voxels and geometry goes into the project)."""
        known = self.caseIdOf(volumeNode)
        if known is not None:
            return known
        with tempfile.TemporaryDirectory(prefix="extremeaug-") as tmp:
            scan = write_image(SceneIO.imageFromVolumeNode(volumeNode), Path(tmp) / "scan.nrrd")
            summary = projectCases.add_case(self.project, str(scan), case_id=caseId or self._newCaseId(volumeNode),
                                            source=_sourceDescription(volumeNode))
        self._tag(volumeNode, summary["id"])
        return summary["id"]

    def addLabeledScan(self, volumeNode, segmentationNode, segmentId: str, caseId: Optional[str] = None,
                       split: str = "auto") -> dict:
        """The volume with a segment delineated on it becomes a manually labeled case (training data)."""
        if volumeNode is None or segmentationNode is None or not segmentId:
            raise ExtremeAugError("choose a volume, the segmentation drawn on it and its segment first")
        mask = SceneIO.segmentToImage(segmentationNode, segmentId, volumeNode)
        known = self.caseIdOf(volumeNode)
        with tempfile.TemporaryDirectory(prefix="extremeaug-") as tmp:
            label = str(write_image(mask, Path(tmp) / "label.nrrd"))
            source = f"{_sourceDescription(volumeNode)}, segment {_segmentName(segmentationNode, segmentId)!r}"
            if known is not None:
                summary = projectCases.accept(self.project, known, label, split, kind="manual", source=source)
            else:
                scan = write_image(SceneIO.imageFromVolumeNode(volumeNode), Path(tmp) / "scan.nrrd")
                summary = projectCases.add_case(self.project, str(scan), label, caseId or self._newCaseId(volumeNode),
                                                split, source=_sourceDescription(volumeNode))
        self._tag(volumeNode, summary["id"])
        segmentationNode.SetNodeReferenceID(VOLUME_ROLE, volumeNode.GetID())
        return summary

    def acceptCorrection(self, segmentationNode, segmentId: Optional[str] = None, split: str = "auto") -> dict:
        """Store the (edited) segment of a result as the case's corrected label; earlier labels are kept."""
        if segmentationNode is None:
            raise ExtremeAugError("choose the result segmentation to accept first")
        volumeNode = segmentationNode.GetNodeReference(VOLUME_ROLE)
        if volumeNode is None or segmentationNode.GetAttribute(CASE_ATTRIBUTE) is None:
            raise ExtremeAugError(f"segmentation {segmentationNode.GetName()!r} is not a result of this module: "
                                  "segment the volume first, or use 'Add labeled scan'")
        caseId = self.caseIdOf(volumeNode)
        if caseId is None or caseId != segmentationNode.GetAttribute(CASE_ATTRIBUTE):
            raise ExtremeAugError(f"segmentation {segmentationNode.GetName()!r} belongs to case "
                                  f"{segmentationNode.GetAttribute(CASE_ATTRIBUTE)!r}, which is not in this project")
        segmentId = segmentId or _firstSegmentId(segmentationNode)
        mask = SceneIO.segmentToImage(segmentationNode, segmentId, volumeNode)
        kind = "corrected" if self.project.latest_label(caseId, ("auto",)) is not None else "manual"
        with tempfile.TemporaryDirectory(prefix="extremeaug-") as tmp:
            label = str(write_image(mask, Path(tmp) / "label.nrrd"))
            return projectCases.accept(self.project, caseId, label, split, kind=kind,
                                       source=f"3D Slicer segmentation {segmentationNode.GetName()!r}")

    # -- training ----------------------------------------------------------------------------------
    def startTraining(self, augment: int = 50, epochs: int = 100, timeBudgetMinutes: Optional[float] = None,
                      width: Optional[int] = None, device: str = "auto", **train) -> str:
        """Start the background worker on every human label of the training split; returns the run id."""
        config = runs.new_config(self.project, device, timeBudgetMinutes, augment=augment, epochs=epochs,
                                 width=width, **train)
        return runs.start(self.project, config)

    def cancelTraining(self) -> dict:
        """Ask the worker to stop (it checkpoints); returns at once, `poll` shows when it has stopped."""
        return runs.cancel(self.project, wait_s=0)

    def poll(self) -> TrainingState:
        """What the widget's timer calls: the current run's state, with its new curve points read."""
        if self.monitor is None:
            return TrainingState()
        return self.monitor.poll()

    def updateTrainingPlot(self):
        return self.monitor.updatePlot() if self.monitor is not None else None

    # -- segment, versions, next case --------------------------------------------------------------
    def segmentVolume(self, volumeNode, version: Optional[int] = None, showProbabilities: bool = True,
                      device: str = "auto"):
        """Segment a volume with a model version (default: the active one) -> (segmentation node,
        probability node or None, the project's result). The volume joins the project as a case, so
        its correction can be accepted."""
        if volumeNode is None:
            raise ExtremeAugError("choose the volume to segment first")
        caseId = self.addScan(volumeNode)
        result = projectSuggest.segment_cases(self.project, [caseId], version, device)[0]
        segmentationNode, probabilityNode = self.showResult(volumeNode, caseId, result["mask"],
                                                            result["probabilities"] if showProbabilities else None,
                                                            result["version"])
        return segmentationNode, probabilityNode, result

    def showResult(self, volumeNode, caseId: str, maskPath: str, probabilityPath: Optional[str], version: int):
        """Load a stored result into nodes aligned voxel for voxel with the volume (reusing this volume's
        result nodes, so re-segmenting does not pile up nodes)."""
        name = volumeNode.GetName()
        segmentationNode = self._resultNode("vtkMRMLSegmentationNode", volumeNode, f"{name} segmentation")
        segmentationNode.CreateDefaultDisplayNodes()
        mask = sitk.ReadImage(str(self.project.path(maskPath)))
        SceneIO.setSegmentFromImage(segmentationNode, mask, volumeNode, SEGMENT_NAME, SEGMENT_COLOR,
                                    _firstSegmentId(segmentationNode, required=False))
        segmentationNode.SetAttribute(CASE_ATTRIBUTE, caseId)
        segmentationNode.SetAttribute(VERSION_ATTRIBUTE, str(version))
        probabilityNode = None
        if probabilityPath:
            probabilityNode = self._resultNode("vtkMRMLScalarVolumeNode", volumeNode, f"{name} probability")
            SceneIO.updateVolumeNodeFromImage(probabilityNode, sitk.ReadImage(str(self.project.path(probabilityPath))))
            probabilityNode.CopyOrientation(volumeNode)
            probabilityNode.CreateDefaultDisplayNodes()
            display = probabilityNode.GetDisplayNode()
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            colors = self.scene.GetNodeByID(PROBABILITY_COLORS)
            if colors is not None:
                display.SetAndObserveColorNodeID(colors.GetID())
        return segmentationNode, probabilityNode

    def loadCase(self, caseId: str):
        """A project case into the scene -> (volume node, its latest prediction's segmentation node and
        probability node, or None when it has not been segmented)."""
        case = self.project.case(caseId)
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute(CASE_ATTRIBUTE) == caseId and node.GetAttribute(PROJECT_ATTRIBUTE) == str(
                    self.project.root):
                volumeNode = node
                break
        else:
            volumeNode = SceneIO.addVolumeNode(self.scene, sitk.ReadImage(str(self.project.path(case["scan"]))), caseId)
            self._tag(volumeNode, caseId)
        auto = self.project.latest_label(caseId, ("auto",))
        if auto is None:
            return volumeNode, None, None
        return (volumeNode, *self.showResult(volumeNode, caseId, auto["path"], auto["probabilities"],
                                             auto["model_version"]))

    def suggestNext(self):
        """The case the project recommends correcting next, loaded -> (suggestion, volume, segmentation,
        probability); the nodes are None when every case has a human label."""
        info = projectSuggest.suggest(self.project)
        if info["case"] is None:
            return info, None, None, None
        return (info, *self.loadCase(info["case"]))

    def versions(self) -> List[dict]:
        """Model versions with the validation scores recorded when each was published (no scoring here:
        the GUI thread must not run inference; `extremeaug project models` rescores)."""
        return versions.list_versions(self.project, rescore=False)

    def useVersion(self, version: int) -> int:
        return versions.use(self.project, version)

    # -- helpers -----------------------------------------------------------------------------------
    def _known(self, caseId: str) -> bool:
        return self.project.conn.execute("SELECT 1 FROM cases WHERE id = ?", (caseId,)).fetchone() is not None

    def _tag(self, volumeNode, caseId: str) -> None:
        volumeNode.SetAttribute(CASE_ATTRIBUTE, caseId)
        volumeNode.SetAttribute(PROJECT_ATTRIBUTE, str(self.project.root))

    def _newCaseId(self, volumeNode) -> str:
        base = projectCases.default_id(volumeNode.GetName() or "scan")
        caseId, n = base, 1
        while self._known(caseId):
            n += 1
            caseId = f"{base}_{n}"
        return caseId

    def _resultNode(self, className: str, volumeNode, name: str):
        for i in range(self.scene.GetNumberOfNodesByClass(className)):
            node = self.scene.GetNthNodeByClass(i, className)
            if node.GetNodeReference(VOLUME_ROLE) is volumeNode and node.GetName() == name:
                return node
        node = self.scene.AddNewNodeByClass(className, name)
        node.SetNodeReferenceID(VOLUME_ROLE, volumeNode.GetID())
        return node


def _fileOf(volumeNode) -> Optional[str]:
    storage = volumeNode.GetStorageNode()
    return (storage.GetFileName() or None) if storage is not None else None


def _sourceDescription(volumeNode) -> str:
    fileName = _fileOf(volumeNode)
    return f"3D Slicer volume {volumeNode.GetName()!r}" + (f" ({fileName})" if fileName else "")


def _segmentName(segmentationNode, segmentId: str) -> str:
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    return segment.GetName() if segment is not None else segmentId


def _firstSegmentId(segmentationNode, required: bool = True) -> Optional[str]:
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        if required:
            raise ExtremeAugError(f"segmentation {segmentationNode.GetName()!r} has no segment")
        return None
    return segmentation.GetNthSegmentID(0)
