"""The module's logic: the scene's volume and segmentation nodes <-> an extremeaug labeling project.

MRML only (no Qt), so it runs in 3D Slicer and in a bare MRML scene under pytest. It adds no project
behaviour of its own: every change goes through `extremeaug.project.Project` (the same API as
`extremeaug project ...`), which keeps the label history, the fixed validation split, the model versions
and the policy for what a label is. Node voxels go to the project as images, never as temporary files.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import SimpleITK as sitk
import slicer
import vtk

from extremeaug.common.errors import ExtremeAugError
from extremeaug.data.io import image_sha256
from extremeaug.project import (DEFAULT_STRUCTURE, Case, CaseInfo, Device, JobState, JobStatus, LabelKind, Plane,
                                Project, ProjectStatus, RunSpec, RunState, SegmentJob, Split, Suggestion, Version)

from . import Panel, Results, SceneIO, Session
from .Results import (CASE_ATTRIBUTE, LOADED_ATTRIBUTE, PREDICTION_ATTRIBUTE, PROJECT_ATTRIBUTE, SHOWN_ATTRIBUTE,
                      STORED_ATTRIBUTE, VERSION_ATTRIBUTE, VOLUME_ROLE)
from .TrainingMonitor import TrainingMonitor, TrainingState

BUSY_TIMEOUT_S = 1.0   # a busy database makes the GUI's poll skip a tick or a button report "busy", never freeze


@dataclass
class _RunningJob:
    job: SegmentJob
    volumes: Dict[str, object]   # case id -> the volume node whose result is shown when the job ends
    probabilities: bool
    suggestAfter: bool = False


@dataclass
class JobUpdate:
    """A background segmentation's progress; once it ended, the (volume, segmentation, probability) nodes
    it showed and, for Suggest, the suggestion."""
    state: JobState
    shown: List[tuple] = field(default_factory=list)
    suggestion: Optional[Suggestion] = None


class ExtremeAugSegmentLogic:
    def __init__(self, scene=None):
        self.scene = scene if scene is not None else slicer.mrmlScene
        self._project: Optional[Project] = None
        self.monitor: Optional[TrainingMonitor] = None
        self._digests: Dict[str, Tuple[tuple, str]] = {}   # node ID -> (voxels + geometry state, content hash)
        self._job: Optional[_RunningJob] = None
        self.settings = Session.ModuleSettings(self.scene, lambda: str(self._project.root) if self._project else None)

    # -- project -----------------------------------------------------------------------------------
    def openProject(self, folder: str, create: bool = False, plane: Plane = Plane.AUTO,
                    valFraction: float = 0.25) -> ProjectStatus:
        """Open a project folder, or create one in a new or empty folder."""
        self.closeProject()
        self._project = Project.create(folder, plane, valFraction) if create else Project.open(folder)
        self._project.busy_timeout(BUSY_TIMEOUT_S)
        self.monitor = TrainingMonitor(self._project, self.scene)
        return self.status()

    def closeProject(self) -> None:
        self.cancelJob()
        self._job = None
        if self._project is not None:
            self._project.close()
        self._project, self.monitor = None, None

    @property
    def isOpen(self) -> bool:
        return self._project is not None

    @property
    def project(self) -> Project:
        if self._project is None:
            raise ExtremeAugError("no project is open: choose or create a project folder first")
        return self._project

    def status(self) -> ProjectStatus:
        return self.project.status()

    def caseRows(self) -> List[CaseInfo]:
        return self.project.cases()

    def scenePairsToAdd(self, cases: Optional[List[CaseInfo]] = None) -> List[Tuple[object, object]]:
        """The scene's volume + segmentation pairs whose volume is not a case yet (what "Add labeled scan"
        would add), told by the tag the module puts on volumes it adds or loads (saved with the scene): the
        panel's refresh never hashes voxels on the GUI thread. An untagged copy of a known scan is listed,
        and Add finds its case by content."""
        root = str(self.project.root)
        known = {c.id for c in (self.project.cases() if cases is None else cases)}
        return [(v, s) for v, s in self.scenePairs()
                if v.GetAttribute(PROJECT_ATTRIBUTE) != root or v.GetAttribute(CASE_ATTRIBUTE) not in known]

    def scenePairs(self) -> List[Tuple[object, object]]:
        return Session.scenePairs(self.scene)

    # -- scene -> project --------------------------------------------------------------------------
    def caseIdOf(self, volumeNode) -> Optional[str]:
        """The project case holding this volume's scan: found by content (voxels and geometry), so the same
        scan loaded twice, or under another name, is one case; None for a scan the project does not hold."""
        if volumeNode.GetImageData() is None:
            return None
        caseId = self.project.case_with_scan(self._scanDigest(volumeNode))
        if caseId is not None:
            self._tag(volumeNode, caseId)
        return caseId

    def _scanDigest(self, volumeNode) -> str:
        """The content hash of a node's scan, computed again only when its voxels or geometry changed."""
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        state = (volumeNode.GetImageData().GetMTime(),
                 tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4)))
        cached = self._digests.get(volumeNode.GetID())
        if cached is None or cached[0] != state:
            cached = (state, image_sha256(SceneIO.imageFromVolumeNode(volumeNode)))
            self._digests[volumeNode.GetID()] = cached
        return cached[1]

    def addScan(self, volumeNode, caseId: Optional[str] = None) -> str:
        """Register a volume as a case (a copy of its voxels and geometry goes into the project); a scan the
        project holds already is its existing case."""
        known = self.caseIdOf(volumeNode)
        if known is not None:
            return known
        case = self.project.add(SceneIO.imageFromVolumeNode(volumeNode), case_id=caseId or self._newCaseId(volumeNode),
                                source=_sourceDescription(volumeNode))
        self._tag(volumeNode, case.id)
        return case.id

    def addLabeledScan(self, volumeNode, segmentationNode, segmentIds=None, caseId: Optional[str] = None,
                       split: Split = Split.AUTO, by: Optional[str] = None) -> Case:
        """The volume with segments delineated on it becomes a manually labeled case (training data): every
        segment (`segmentIds` None), or the chosen one(s), each its own structure, matched to the project's
        structures by name (in a one-structure project, one segment is that structure whatever its name)."""
        if volumeNode is None or segmentationNode is None:
            raise ExtremeAugError("choose a volume and the segmentation drawn on it first")
        ids = Results.chosenSegments(segmentationNode, segmentIds)
        table = self.project.structures()
        structures = [table[0]] if table and len(table) == 1 and len(ids) == 1 else Results.structuresOf(
            segmentationNode, ids)
        label = Results.labelImage(segmentationNode, ids, volumeNode, structures)
        known = self.caseIdOf(volumeNode)
        names = ", ".join(repr(Results.segmentName(segmentationNode, i)) for i in ids)
        source = f"{_sourceDescription(volumeNode)}, segment{'s' if len(ids) > 1 else ''} {names}"
        if known is not None:
            case = self.project.accept(known, label, split, kind=LabelKind.MANUAL, source=source, by=by)
        else:
            case = self.project.add(SceneIO.imageFromVolumeNode(volumeNode), label,
                                    caseId or self._newCaseId(volumeNode), split, source=source, by=by)
        if len(ids) == 1 and len(self.project.structures() or []) == 1:
            self.project.name_structure(Results.structureOf(segmentationNode, ids[0]))
        self._tag(volumeNode, case.id)
        segmentationNode.SetNodeReferenceID(VOLUME_ROLE, volumeNode.GetID())
        return case

    def acceptCorrection(self, segmentationNode, segmentId: Optional[str] = None, split: Split = Split.AUTO,
                         by: Optional[str] = None) -> Case:
        """Store a result as the case's label (earlier labels are kept). With several structures, every segment
        goes back to its structure by name (a structure without a segment is recorded as missing, a segment
        of no structure is refused). With one: `segmentId`, or the result's only segment, or the one named as
        the structure; with several candidates the clinician must choose. The project decides the label's
        kind (corrected over a prediction) and records what changed, how long after it was shown, and `by`
        whom (a web user; default: the login name)."""
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
        table = self.project.structures() or [DEFAULT_STRUCTURE]
        if len(table) > 1:
            ids = Results.chosenSegments(segmentationNode, None)
            structures = Results.structuresOf(segmentationNode, ids)
        else:
            ids = [segmentId or self._segmentToAccept(segmentationNode)]
            structures = table
        label = Results.labelImage(segmentationNode, ids, volumeNode, structures)
        prediction, shownAt = segmentationNode.GetAttribute(PREDICTION_ATTRIBUTE), segmentationNode.GetAttribute(
            SHOWN_ATTRIBUTE)
        names = ", ".join(repr(Results.segmentName(segmentationNode, i)) for i in ids)
        case = self.project.accept(caseId, label, split, source=f"3D Slicer segmentation "
                                   f"{segmentationNode.GetName()!r}, segment{'s' if len(ids) > 1 else ''} {names}",
                                   corrects=int(prediction) if prediction else None,
                                   seconds=time.time() - float(shownAt) if shownAt else None, by=by)
        whole = len(ids) == segmentationNode.GetSegmentation().GetNumberOfSegments()
        segmentationNode.SetAttribute(STORED_ATTRIBUTE, case.label if whole and len(ids) == len(table) else "")
        return case

    def _segmentToAccept(self, segmentationNode) -> str:
        chosen = Panel.segmentToAccept(segmentationNode, self.project.structure())
        if chosen is not None:
            return chosen
        segmentation = segmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        if not ids:
            raise ExtremeAugError(f"segmentation {segmentationNode.GetName()!r} has no segment")
        name = (self.project.structure() or DEFAULT_STRUCTURE).name
        named = [i for i in ids if Results.segmentName(segmentationNode, i) == name]
        raise ExtremeAugError(f"segmentation {segmentationNode.GetName()!r} has {len(ids)} segments"
                              + (f", {len(named)} named {name!r}" if named else "")
                              + ": choose the segment to accept")

    # -- training ----------------------------------------------------------------------------------
    def startTraining(self, spec: RunSpec) -> str:
        """Start the background worker on every human label of the training split; returns the run id."""
        return self.project.train(spec)

    def resumeTraining(self, device: Optional[Device] = None) -> str:
        """Continue the last cancelled, failed or dead run from its checkpoint (its own settings)."""
        return self.project.resume(device)

    def cancelTraining(self) -> RunState:
        """Ask the worker to stop (it checkpoints); returns at once, `poll` shows when it has stopped."""
        return self.project.cancel(wait_s=0)

    def poll(self) -> TrainingState:
        """What the widget's timer calls: the current run's state, with its new curve points read."""
        if self.monitor is None:
            return TrainingState()
        return self.monitor.poll()

    def updateTrainingPlot(self):
        return self.monitor.updatePlot() if self.monitor is not None else None

    # -- segment (in a child process), versions, next case -----------------------------------------
    def startSegment(self, volumeNode, version: Optional[int] = None, device: Device = Device.AUTO,
                     showProbabilities: bool = True) -> JobState:
        """Segment a volume with a model version (default: the active one) in a child process; `pollJob`
        shows the result when it is stored. The volume joins the project as a case, so its correction can
        be accepted."""
        if volumeNode is None:
            raise ExtremeAugError("choose the volume to segment first")
        self._refuseSecondJob()
        caseId = self.caseIdOf(volumeNode)
        if caseId is not None:
            job = self.project.start_segment([caseId], version, device)
        else:   # adding a new scan (checks, hash, compressed copy) takes seconds: the child does it too
            caseId = self._newCaseId(volumeNode)
            job = self.project.start_segment([], version, device, add=SceneIO.imageFromVolumeNode(volumeNode),
                                             add_id=caseId, source=_sourceDescription(volumeNode))
        return self._start(job, {caseId: volumeNode}, showProbabilities)

    def startSegmentUnlabeled(self, version: Optional[int] = None, device: Device = Device.AUTO) -> JobState:
        """Segment every case without a human label (what ranks them for Suggest) in a child process."""
        self._refuseSecondJob()
        cases = self.project.unlabeled()
        if not cases:
            raise ExtremeAugError("every case has a human label: add scans to segment")
        return self._start(self.project.start_segment(cases, version, device), {}, False)

    def startSuggest(self, device: Device = Device.AUTO) -> Optional[JobState]:
        """Suggest the case to correct next. Unlabeled cases the active model has not segmented are segmented
        first, in a child process (returns its state; `pollJob` loads the suggestion when it is done); with
        none, returns None and `suggestNext` can load the suggestion at once."""
        self._refuseSecondJob()
        active = self.project.status().active_version
        if active is None:
            return None
        pending = [c for c in self.project.unlabeled()
                   if getattr(self.project.latest_prediction(c), "model_version", None) != active]
        if not pending:
            return None
        return self._start(self.project.start_segment(pending, active, device), {}, True, suggestAfter=True)

    def pollJob(self) -> Optional[JobUpdate]:
        """What the widget's timer calls: the running job's progress; once it has ended, its results shown
        (and the suggestion loaded, for Suggest). None when no job runs."""
        if self._job is None:
            return None
        job = self._job
        state = job.job.poll()
        if state.active:
            return JobUpdate(state)
        self._job = None
        shown = []
        for r in state.results:
            volume = job.volumes.get(r.case_id)
            if volume is not None:
                self._tag(volume, r.case_id)
                shown.append((volume, *self.showResult(volume, r.case_id, r.mask,
                                                       r.probabilities if job.probabilities else None, r.version,
                                                       r.label, r.uncertainty_map if job.probabilities else None)))
        if job.suggestAfter and state.status == JobStatus.FINISHED:
            suggestion, *nodes = self.suggestNext()
            if nodes[0] is not None:
                shown.append(tuple(nodes))
            return JobUpdate(state, shown, suggestion)
        return JobUpdate(state, shown)

    def cancelJob(self) -> None:
        if self._job is not None:
            self._job.job.cancel()

    @property
    def jobRunning(self) -> bool:
        return self._job is not None

    def showResult(self, volumeNode, caseId: str, maskPath: str, probabilityPath: Optional[str], version: int,
                   labelId: Optional[int] = None, uncertaintyPath: Optional[str] = None):
        """Load a stored result into nodes aligned voxel for voxel with the volume, under its transform and in
        its study. The volume's result node is reused unless the clinician edited it: then the result goes
        into a new node and the edits stay. The overlay is the uncertainty map, or the probability map of a
        result stored before uncertainty maps."""
        name, structures = volumeNode.GetName(), self.project.structures() or [DEFAULT_STRUCTURE]
        segmentationNode = Results.resultSegmentation(
            self.scene, volumeNode, f"{name} segmentation",
            lambda node: Results.isEdited(node, volumeNode, self._labelImage, structures))
        Results.fillResult(segmentationNode, volumeNode, sitk.ReadImage(str(self.project.path(maskPath))), structures)
        for attribute, value in ((CASE_ATTRIBUTE, caseId), (VERSION_ATTRIBUTE, str(version)),
                                 (PREDICTION_ATTRIBUTE, str(labelId) if labelId is not None else ""),
                                 (STORED_ATTRIBUTE, maskPath),
                                 (SHOWN_ATTRIBUTE, repr(time.time()))):
            segmentationNode.SetAttribute(attribute, value)
        Results.followVolume(volumeNode, segmentationNode)
        overlay, what, shown = ((uncertaintyPath, "uncertainty", Results.WHERE_TO_LOOK) if uncertaintyPath else
                                (probabilityPath, "probability", Results.UNSURE))
        overlayNode = Results.overlayNode(self.scene, volumeNode, f"{name} {what}", sitk.ReadImage(
            str(self.project.path(overlay))), shown) if overlay else None
        if overlayNode is not None:
            Results.followVolume(volumeNode, overlayNode)
        return segmentationNode, overlayNode

    def loadCase(self, caseId: str):
        """A project case into the scene -> (volume node, its latest prediction's segmentation node and
        probability node, or None when it has not been segmented)."""
        volumeNode = self.caseVolume(caseId)
        auto = self.project.latest_prediction(caseId)
        if auto is None:
            return volumeNode, None, None
        return (volumeNode, *self.showResult(volumeNode, caseId, auto.path, auto.probabilities, auto.model_version,
                                             auto.id, auto.uncertainty_map))

    def caseVolume(self, caseId: str):
        """The case's scan as a volume node: the one the module loaded already, else loaded now."""
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute(CASE_ATTRIBUTE) == caseId and node.GetAttribute(PROJECT_ATTRIBUTE) == str(
                    self.project.root):
                return node
        node = SceneIO.addVolumeNode(self.scene, sitk.ReadImage(str(self.project.path(self.project.case(
            caseId).scan))), caseId)
        node.SetAttribute(LOADED_ATTRIBUTE, "1")
        self._tag(node, caseId)
        return node

    def releaseCase(self, volumeNode) -> int:
        """Remove what the module loaded for a case, unless a result holds unstored edits (Session.releaseCase)."""
        structures = self.project.structures() or [DEFAULT_STRUCTURE]
        return Session.releaseCase(self.scene, volumeNode,
                                   lambda node: Results.isEdited(node, volumeNode, self._labelImage, structures))

    def suggestNext(self):
        """The case the project recommends correcting next, loaded -> (suggestion, volume, segmentation,
        probability); the nodes are None when every case has a human label."""
        info = self.project.suggest()
        if info.case is None:
            return info, None, None, None
        return (info, *self.loadCase(info.case))

    def versions(self) -> List[Version]:
        """Model versions with the validation scores recorded when each was published (no scoring here:
        the GUI thread must not run inference; `extremeaug project models` rescores)."""
        return self.project.versions(rescore=False)

    def useVersion(self, version: int) -> int:
        return self.project.use(version)

    # -- helpers -----------------------------------------------------------------------------------
    def _tag(self, volumeNode, caseId: str) -> None:
        volumeNode.SetAttribute(CASE_ATTRIBUTE, caseId)
        volumeNode.SetAttribute(PROJECT_ATTRIBUTE, str(self.project.root))

    def _newCaseId(self, volumeNode) -> str:
        return self.project.new_case_id(volumeNode.GetName() or "scan")

    def _start(self, job: SegmentJob, volumes: Dict[str, object], probabilities: bool,
               suggestAfter: bool = False) -> JobState:
        self._job = _RunningJob(job, volumes, probabilities, suggestAfter)
        return job.poll()

    def _refuseSecondJob(self) -> None:
        if self._job is not None:
            raise ExtremeAugError("a segmentation is running: wait for it or cancel it first")

    def _labelImage(self, path: str) -> sitk.Image:
        return sitk.ReadImage(str(self.project.path(path)))


def _sourceDescription(volumeNode) -> str:
    storage = volumeNode.GetStorageNode()
    fileName = storage.GetFileName() if storage is not None else None
    return f"3D Slicer volume {volumeNode.GetName()!r}" + (f" ({fileName})" if fileName else "")
