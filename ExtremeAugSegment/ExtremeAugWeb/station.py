"""The labeling station: what the page's buttons do, on the module's scene logic over one project.

Every project change goes through `ExtremeAugSegmentLogic` (the Slicer module's MRML-only Logic, here on
trame-slicer's real MRML scene) and so through `extremeaug.project.Project`: this file holds no project
logic, only what to show. Long work runs where the module runs it, in the project's background processes
(the training worker, segmentation jobs); the server's event loop only starts them and polls them.
Every browser tab shares the one trame state and scene: two tabs, or two clinicians, see the same thing.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, List, Optional

from extremeaug.common.errors import ExtremeAugError
from extremeaug.project import (DEFAULT_STRUCTURE, Case, Device, LabelKind, RunSpec, TrainConfig, Version)

from ExtremeAugSegmentLib import Results, Tables
from ExtremeAugSegmentLib.Logic import ExtremeAugSegmentLogic

POLL_S = 0.5   # how often the page's training and segmentation progress is read
log = logging.getLogger(__name__)


def caseRow(case: Case) -> dict:
    """A case-list row: the module's columns plus the correction effort of its newest correction."""
    fixes = [lab.correction for lab in case.history if lab.correction is not None]
    fix = fixes[-1] if fixes else None
    effort = "-" if fix is None or fix.voxels_changed is None else f"{fix.voxels_changed} voxels" + (
        f", {fix.seconds:.0f} s" if fix.seconds is not None else "")
    return dict(zip(("id", "state", "split", "model", "uncertainty"), Tables.caseRow(case)), effort=effort)


def historyRow(case: Case) -> List[dict]:
    """The selected case's label history, newest first, with who stored each human label."""
    return [{"id": lab.id, "text": f"label {lab.id}: {lab.kind.value}" + (
        f" by v{lab.model_version}" if lab.model_version else "") + (
        f" by {lab.accepted_by}" if lab.accepted_by else "")
        + (f"; {lab.correction.describe()}" if lab.correction else "")} for lab in reversed(case.history)]


def versionRow(v: Version) -> dict:
    row = dict(zip(("version", "scans", "dice", "hd95", "effort", "active"), Tables.versionRow(v)))
    row["structures"] = ", ".join(f"{name} {mean.format('.3f')}" for name, mean in v.val_then.per_structure.items())
    return row


class Station:
    """The page's actions. `state` is the trame state (shared by every tab); `who` names the user of the
    request being handled; `show` puts a volume and its result in the views and the segment editor."""

    def __init__(self, logic: ExtremeAugSegmentLogic, state, who: Callable[[], str],
                 show: Callable[[object, Optional[object], Optional[object]], None]):
        self.logic, self.state, self.who, self._show = logic, state, who, show
        self.nodes = {"volume": None, "segmentation": None, "overlay": None}
        self._task: Optional[asyncio.Task] = None
        state.update({"ea_cases": [], "ea_case": None, "ea_history": [], "ea_message": "", "ea_error": "",
                      "ea_train_text": "", "ea_train_fraction": 0, "ea_training": False, "ea_resumable": False,
                      "ea_loss": [], "ea_dice": [], "ea_job_text": "", "ea_job_running": False,
                      "ea_versions": [], "ea_overlay": True, "ea_has_overlay": False,
                      "ea_augment": TrainConfig().augment, "ea_epochs": TrainConfig().epochs, "ea_minutes": 0,
                      "ea_unlabeled": RunSpec.unlabeled,
                      "ea_device": Device.AUTO.value, "ea_devices": [d.value for d in Device]})
        state.change("ea_overlay")(lambda ea_overlay, **_: self._overlay(ea_overlay))
        self.refresh()

    # -- the page's buttons -------------------------------------------------------------------------
    def select(self, caseId: str) -> None:
        """Show a case: its newest human label if that is what counts, else its newest prediction, else an
        empty result to draw on (accepting it stores a manual label)."""
        self._guard(lambda: self._select(caseId))

    def accept(self, next_: bool = False) -> None:
        def run():
            case = self.logic.acceptCorrection(self._segmentation(), by=self.who())
            self.say(f"stored {case.state.value} label of {case.id} for {self.who()} "
                      f"({len(case.history)} label(s) in its history)")
            self.refresh()
            if next_:
                self._suggest()
        self._guard(run)

    def suggest(self) -> None:
        self._guard(self._suggest)

    def train(self) -> None:
        def run():
            s = self.state
            minutes = float(s.ea_minutes or 0)
            spec = RunSpec(TrainConfig(augment=int(s.ea_augment), epochs=int(s.ea_epochs)), device=s.ea_device,
                           time_budget_min=minutes if minutes > 0 else None, unlabeled=bool(s.ea_unlabeled))
            self.say(f"training started (run {self.logic.startTraining(spec)})")
        self._guard(run)

    def cancel(self) -> None:
        self._guard(lambda: (self.logic.cancelTraining(), self.say("cancel asked: the worker checkpoints and stops")))

    def resume(self) -> None:
        self._guard(lambda: self.say(f"resumed run {self.logic.resumeTraining()}"))

    def segment(self) -> None:
        def run():
            if self.nodes["volume"] is None:
                raise ExtremeAugError("select a case to segment first")
            self.logic.startSegment(self.nodes["volume"], device=self.state.ea_device)
        self._guard(run)

    def segmentUnlabeled(self) -> None:
        self._guard(lambda: self.logic.startSegmentUnlabeled(device=self.state.ea_device))

    def useVersion(self, version: int) -> None:
        self._guard(lambda: (self.say(f"model v{self.logic.useVersion(int(version))} is active"), self.refresh()))

    # -- what the page shows ------------------------------------------------------------------------
    def refresh(self) -> None:
        project = self.logic.project
        self.state.ea_cases = [caseRow(project.case(c.id)) for c in self.logic.caseRows()]
        self.state.ea_versions = [versionRow(v) for v in self.logic.versions()]
        if self.state.ea_case:
            self.state.ea_history = historyRow(project.case(self.state.ea_case))
        self._poll()

    def _poll(self) -> None:
        """Read the run and the job now, and keep reading while either is active."""
        training = self.logic.poll()
        if not training.skipped:
            s = self.state
            s.ea_train_text, s.ea_train_fraction = training.text, round(100 * training.fraction, 1)
            s.ea_training = training.active
            s.ea_resumable = bool(training.run and training.run.resumable)
            s.ea_loss = [round(p[1], 4) for p in training.curve][-200:]
            s.ea_dice = [round(p[2], 4) for p in training.curve][-200:]
            if training.ended:
                self.state.ea_versions = [versionRow(v) for v in self.logic.versions()]
        update = self.logic.pollJob()
        if update is not None:
            self.state.ea_job_text, self.state.ea_job_running = Tables.jobText(update.state), update.state.active
            if not update.state.active:
                self.state.ea_cases = [caseRow(self.logic.project.case(c.id)) for c in self.logic.caseRows()]
                for volume, segmentation, overlay in update.shown:
                    self._display(volume, segmentation, overlay)

    def start(self) -> None:
        """Poll for as long as the server runs (called once it does): a run started anywhere, from this page,
        the command line or the Slicer module, shows its progress here."""
        self._task = asyncio.get_running_loop().create_task(self._keepPolling())

    async def _keepPolling(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            with self.state:
                self._guard(self._poll)

    # -- helpers ----------------------------------------------------------------------------------
    def _select(self, caseId: str) -> None:
        case = self.logic.project.case(caseId)   # an unknown id is refused here, with its message
        previous = self.nodes["volume"]
        newest = case.history[-1] if case.history else None
        if newest is not None and newest.kind != LabelKind.AUTO:
            volume = self.logic.caseVolume(caseId)
            segmentation, overlay = self.logic.showResult(volume, caseId, newest.path, None, 0)
        else:
            volume, segmentation, overlay = self.logic.loadCase(caseId)
            if segmentation is None:
                segmentation = Results.draftSegmentation(self.logic.scene, volume, caseId,
                                                         self.logic.project.structures() or [DEFAULT_STRUCTURE])
        if previous is not None and previous is not volume:
            self.logic.releaseCase(previous)   # an edited result stays in the scene, as in the module
        self.state.ea_case, self.state.ea_history = caseId, historyRow(case)
        self._display(volume, segmentation, overlay)
        self.say(f"{caseId}: {case.state.value}" + (f", {case.split.value} split" if case.split else ""))

    def _suggest(self) -> None:
        suggestion = self.logic.project.suggest()
        self.say(f"suggested {Tables.suggestionText(suggestion)}")
        if suggestion.case is not None:
            self._select(suggestion.case)

    def _display(self, volume, segmentation, overlay) -> None:
        self.nodes = {"volume": volume, "segmentation": segmentation, "overlay": overlay}
        self.state.ea_has_overlay = overlay is not None
        self._show(volume, segmentation, overlay if self.state.ea_overlay else None)

    def _overlay(self, on: bool) -> None:
        if self.nodes["volume"] is not None:
            self._show(self.nodes["volume"], self.nodes["segmentation"], self.nodes["overlay"] if on else None)

    def _segmentation(self):
        if self.nodes["segmentation"] is None:
            raise ExtremeAugError("select a case and correct its result first")
        return self.nodes["segmentation"]

    def say(self, message: str) -> None:
        self.state.ea_message, self.state.ea_error = message, ""

    def _guard(self, action: Callable[[], object]) -> None:
        """A refused action is shown on the page, in the project's words; the server keeps running."""
        try:
            action()
        except ExtremeAugError as error:
            self.state.ea_error = str(error)
        except Exception as error:   # the page must answer every click; the log has the traceback
            log.exception("action failed")
            self.state.ea_error = f"{type(error).__name__}: {error}"
