"""The clinician's loop on a synthetic phantom, through the Logic and the real background worker:
add a labeled scan -> train -> wait (polling as the widget's timer does) -> segment -> correct -> accept.

Slicer's self-test (ExtremeAugSegmentTest) runs it in the application's scene; the pytest suite runs the
same function in a bare MRML scene, so the code Slicer's test runner executes is also tested in CI.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from extremeaug.project import CaseState, JobStatus, RunSpec, Split, TrainConfig

from . import SceneIO
from .Logic import ExtremeAugSegmentLogic, JobUpdate
from .PhantomSample import STRUCTURES, loadPhantomSample
from .TrainingMonitor import TrainingState

TINY_TRAINING = RunSpec(TrainConfig(augment=3, epochs=1, width=4), device="cpu")


def waitForTraining(logic: ExtremeAugSegmentLogic, wait: Callable[[float], None] = time.sleep,
                    timeout_s: float = 900.0, interval_s: float = 1.0) -> TrainingState:
    """Poll until the run is no longer active, as the widget's QTimer does (never a blocking call)."""
    deadline = time.monotonic() + timeout_s
    state = logic.poll()
    while state.active:
        if time.monotonic() > deadline:
            logic.cancelTraining()
            raise AssertionError(f"training did not finish within {timeout_s:.0f} s: {state.text}")
        wait(interval_s)
        state = logic.poll()
    return state


def waitForJob(logic: ExtremeAugSegmentLogic, wait: Callable[[float], None] = time.sleep,
               timeout_s: float = 300.0, interval_s: float = 0.5) -> JobUpdate:
    """Poll a background segmentation until it has ended and its results are shown, as the widget's timer
    does."""
    deadline = time.monotonic() + timeout_s
    update = logic.pollJob()
    while update is not None and update.state.active:
        if time.monotonic() > deadline:
            logic.cancelJob()
            raise AssertionError(f"segmentation did not finish within {timeout_s:.0f} s")
        wait(interval_s)
        update = logic.pollJob()
    _check(update is not None and update.state.status == JobStatus.FINISHED,
           f"segmentation ended {update.state if update else None}")
    return update


def runLoop(logic: ExtremeAugSegmentLogic, workdir: str | Path, wait: Callable[[float], None] = time.sleep,
            log: Callable[[str], None] = print, training: RunSpec = TINY_TRAINING) -> dict:
    workdir = Path(workdir)
    scene = logic.scene
    labeled, delineation, unseen = loadPhantomSample(scene, workdir / "phantoms")   # what Sample Data loads
    logic.openProject(str(workdir / "project"), create=True)
    case = logic.addLabeledScan(labeled, delineation)   # all three segments, each its own structure
    _check(case.state == CaseState.MANUAL and case.split == Split.TRAIN, f"labeled scan added as {case}")
    _check([s.name for s in logic.project.structures()] == [s.name for s in STRUCTURES],
           f"the project's structures are {logic.project.structures()}")
    log(f"added labeled scan {case.id}; training {training}")

    logic.startTraining(training)
    waits = []
    state = waitForTraining(logic, lambda seconds: (wait(seconds), waits.append(seconds)))
    polls = len(waits) + 1
    _check(state.status == "finished" and state.version == 1, f"training ended {state.status}: {state.message}")
    _check(len(state.curve) > 0, "no training curve points were read")
    chart = logic.updateTrainingPlot()
    log(f"trained model v{state.version} ({len(state.curve)} curve points, {polls} polls)")

    logic.startSegment(unseen, device="cpu")
    update = waitForJob(logic, wait)
    _check(len(update.shown) == 1 and update.shown[0][0] is unseen, f"shown: {update.shown}")
    _, segmentationNode, overlayNode = update.shown[0]
    result = update.state.results[0]
    _check(segmentationNode.GetName() == "phantom_1 segmentation", segmentationNode.GetName())
    segmentation = segmentationNode.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    _check([(s.GetName(), tuple(np.round(s.GetColor(), 3))) for s in segments] ==
           [(s.name, tuple(np.round(s.color, 3))) for s in STRUCTURES],
           f"the result's segments are {[(s.GetName(), s.GetColor()) for s in segments]}, not named and coloured "
           "as trained")
    _check(overlayNode.GetName() == "phantom_1 uncertainty", f"the overlay is {overlayNode.GetName()}")
    prediction = _labelMap(segmentationNode, unseen)
    log(f"segmented {result.case_id} with v{result.version}: {result.voxels} voxels, "
        f"uncertainty {result.uncertainty:.3f}")

    _check(logic.startSuggest("cpu") is None, "the active model has segmented every unlabeled case already")
    suggestion, suggestedVolume, suggestedSegmentation, _ = logic.suggestNext()
    _check(suggestion.case == result.case_id and suggestedVolume is unseen and
           suggestedSegmentation is segmentationNode, f"suggested {suggestion}")   # loaded nodes are reused

    # the "correction": what the clinician draws in the editor, each structure in its own segment
    truth = sitk.ReadImage(str(workdir / "phantoms" / "phantom_1_mask.nii.gz"))
    for i, structure in enumerate(STRUCTURES):
        SceneIO.setSegmentFromImage(segmentationNode, truth == structure.value, unseen, structure.name,
                                    structure.color, segmentation.GetNthSegmentID(0))   # the others shift down
    accepted = logic.acceptCorrection(segmentationNode)
    _check(accepted.state == CaseState.CORRECTED, f"accepted as {accepted.state}")
    _check(accepted.history[-1].correction is not None and accepted.history[-1].correction.auto_label == result.label,
           "the correction was not recorded against the prediction shown")
    stored = sitk.ReadImage(str(logic.project.path(accepted.label)))
    _check(np.array_equal(sitk.GetArrayViewFromImage(stored), sitk.GetArrayViewFromImage(truth)),
           "the accepted label differs from the edited segments")
    log(f"accepted the correction of {accepted.id}")
    return {"case": case, "state": state, "chart": chart, "segmentation": segmentationNode,
            "overlay": overlayNode, "prediction": prediction, "result": result, "accepted": accepted,
            "polls": polls, "volume": unseen}


def _labelMap(segmentationNode, volumeNode) -> sitk.Image:
    """The result's segments as one label map with the structures' values."""
    segmentation = segmentationNode.GetSegmentation()
    values = {s.name: s.value for s in STRUCTURES}
    out = None
    for i in range(segmentation.GetNumberOfSegments()):
        mask = SceneIO.segmentToImage(segmentationNode, segmentation.GetNthSegmentID(i), volumeNode)
        layer = sitk.Cast(mask, sitk.sitkUInt8) * values[segmentation.GetNthSegment(i).GetName()]
        out = layer if out is None else sitk.Maximum(out, layer)
    return out


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
