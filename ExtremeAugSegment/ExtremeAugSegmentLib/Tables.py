"""What the panel's tables and labels show, as text: built from the project's typed records without Qt,
so the fields a clinician sees are tested on a real project (Testing/test_contract.py) and the Qt widget
only copies strings into cells. Column titles match Resources/UI/ExtremeAugSegment.ui (a test checks)."""
from __future__ import annotations

from typing import Optional, Tuple

from extremeaug.common.events import format_eta
from extremeaug.project import (CaseInfo, JobState, JobStatus, Phase, ProjectStatus, RunState, RunStatus, Suggestion,
                                Version)

CLI_RESUME_HINT = "`extremeaug project train --resume` continues it"   # the panel has a Resume button instead
CASE_COLUMNS = ("Case", "State", "Split", "Model", "Uncertainty")
VERSION_COLUMNS = ("Version", "Training scans", "Validation Dice", "HD95 (mm)", "Mean correction (voxels)", "Active")


def caseRow(case: CaseInfo) -> Tuple[str, ...]:
    return (case.id, case.state.value, case.split.value if case.split else "-",
            f"v{case.auto_version}" if case.auto_version else "-",
            f"{case.uncertainty:.3f}" if case.uncertainty is not None else "-")


def scenePairRow(volumeName: str, segmentationName: str) -> Tuple[str, ...]:
    """A volume + segmentation pair of the scene that is not in the project yet (what 'Add labeled scan'
    would add)."""
    return (volumeName, f"in scene: {segmentationName}", "-", "-", "-")


def versionRow(v: Version) -> Tuple[str, ...]:
    """The validation scores recorded when the version was trained (listing them runs no inference)."""
    fixes = v.corrections
    return (str(v.version), scansText(v), v.val_then.dice.format(".3f"), v.val_then.hd95_mm.format(".2f"),
            f"{fixes.voxels_changed.format('.0f')} (n={fixes.corrections})" if fixes.corrections else "-",
            "yes" if v.active else "")


def scansText(v: Version) -> str:
    """The scans a version learned from: `2`, or `2 + 3 unlabeled` when its run pseudo-labeled some."""
    return str(v.training_scans) + (f" + {v.unlabeled_scans} unlabeled" if v.unlabeled_scans else "")


def statusText(status: Optional[ProjectStatus]) -> str:
    if status is None:
        return "No project open: choose a folder, then Open or Create."
    states = ", ".join(f"{n} {s}" for s, n in status.states.items() if n)
    return (f"{status.cases} case(s) ({states or 'none yet'}); "
            f"model v{status.active_version or '-'} active")


def runText(run: Optional[RunState]) -> str:
    """One line on the background run, for the progress bar's label."""
    if run is None:
        return "no training run"
    progress = run.progress
    if run.status == RunStatus.FINISHED:
        return f"finished: model version {run.version} is active"
    if not run.active:
        message = (run.message or "").replace(CLI_RESUME_HINT, "").strip("; ")
        text = run.status.value if message in ("", run.status.value) else f"{run.status.value}: {message}"
        return text + ("; Resume continues it" if run.resumable else "")
    if run.phase == Phase.SCORING:
        return "training done; scoring on the validation cases..."
    note = f" · {run.message}" if run.message else ""   # while training: a retry at a smaller batch
    if progress is None:
        return f"{(run.phase or run.status).value}...{note}"
    return (f"epoch {progress.epoch} · step {progress.step}/{progress.steps_total} · loss {progress.loss:.3f} · "
            f"Dice {progress.dice:.3f} · ETA {format_eta(progress.eta_s)}{note}")


def jobText(job: JobState) -> str:
    """One line on a background segmentation."""
    if job.status == JobStatus.RUNNING:
        return f"segmenting: {job.done} of {job.total} case(s) done..."
    if job.status == JobStatus.FINISHED:
        providers = sorted({r.provider.replace("ExecutionProvider", "") for r in job.results if r.provider})
        return f"segmented {job.done} case(s)" + (f" on {', '.join(providers)}" if providers else "")
    return f"{job.status.value}: {job.message}"


def suggestionText(suggestion: Suggestion) -> str:
    return f"{suggestion.case or 'nothing to correct'}: {suggestion.reason}"
