"""What the panel decides without Qt: which buttons can act, the segment Accept starts from, and how the
timer treats a failed poll. The widget only copies these answers into its widgets, so they are tested on a
real MRML scene under pytest, where Qt is not available.

The buttons are decided from what the selectors show at the moment (`Selection`), never from the
parameter node: after a scene close or a .mrb load the parameterNodeWrapper's own GUI connections are
made again, after the module's, so in a `currentNodeChanged` handler the parameter node still holds the
previous node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from extremeaug.project import DEFAULT_STRUCTURE, RunState, Structure

from . import Results


@dataclass(frozen=True)
class Selection:
    """What the panel's selectors show now."""
    inputVolume: object = None
    inputSegmentation: object = None
    segmentChoices: int = 0      # entries in the "segment to add" combo box
    segmentVolume: object = None
    result: object = None
    haveModel: bool = False


def buttonStates(isOpen: bool, selection: Selection, jobRunning: bool, run: Optional[RunState]) -> Dict[str, bool]:
    """Widget name -> enabled."""
    active = bool(run and run.active)
    hasResult = selection.result is not None
    states = {name: isOpen for name in ("dataCollapsibleButton", "trainCollapsibleButton", "segmentCollapsibleButton",
                                        "correctCollapsibleButton", "modelsCollapsibleButton")}
    states.update(
        addLabeledScanButton=bool(selection.inputVolume is not None and selection.inputSegmentation is not None
                                  and selection.segmentChoices),
        segmentButton=jobRunning or (selection.segmentVolume is not None and selection.haveModel),
        segmentUnlabeledButton=selection.haveModel and not jobRunning,
        suggestButton=selection.haveModel and not jobRunning,
        editButton=hasResult, acceptButton=hasResult, acceptNextButton=hasResult,
        trainButton=isOpen and not active, cancelButton=active, resumeButton=bool(run and run.resumable))
    return states


def segmentToAccept(segmentationNode, structure: Optional[Structure]) -> Optional[str]:
    """The segment the "Segment to accept" selector starts on: the only one, or the one named as the
    project's structure; None (the selector shows none, and Accept asks) when it cannot tell."""
    if segmentationNode is None:
        return None
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if len(ids) == 1:
        return ids[0]
    name = (structure or DEFAULT_STRUCTURE).name
    named = [i for i in ids if Results.segmentName(segmentationNode, i) == name]
    return named[0] if len(named) == 1 else None


class PollErrors:
    """A failed poll (the project folder briefly unreachable, a network share that hiccups) is reported
    once and polling goes on, so progress comes back by itself when the cause goes away; the next
    success says so. Returns the text to show, or None."""

    def __init__(self):
        self.failing: Optional[str] = None

    def failed(self, error: BaseException) -> Optional[str]:
        first = self.failing is None
        self.failing = str(error) or type(error).__name__
        return f"cannot follow the project for now ({self.failing}); retrying every second" if first else None

    def succeeded(self) -> Optional[str]:
        if self.failing is None:
            return None
        self.failing = None
        return "following the project again"
