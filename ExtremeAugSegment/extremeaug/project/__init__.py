"""The labeling project: the bootstrap loop (label one scan, train, segment, correct, retrain) as a
crash-safe store (SQLite registry + files) with a background training worker.

Front ends use `Project` and the records and choices below, nothing else from this package:
records -> schema -> store (all SQL) -> cases, jobs, runs, versions, suggest -> api (`Project`) -> cli, worker.
"""
from ..common.config import Compile, Device, Plane, RunOptions, TrainConfig
from ..common.portable import login_name
from .api import Project
from .jobs import SegmentJob
from .records import (DEFAULT_STRUCTURE, Case, CaseInfo, CaseState, Correction, CorrectionSummary, EpochSummary,
                      ImageInput, JobState, JobStatus, Label, LabelKind, Phase, Progress, ProjectStatus, RunSpec,
                      RunState, RunStatus, Scores, SegmentResult, Settings, Split, Structure, Suggestion, Version)

__all__ = ["Project", "login_name", "DEFAULT_STRUCTURE", "ImageInput", "Case", "CaseInfo", "CaseState", "Compile", "Correction",
           "CorrectionSummary", "Device", "EpochSummary", "JobState", "JobStatus", "Label", "LabelKind", "Phase",
           "Plane", "Progress", "ProjectStatus", "RunOptions", "RunSpec", "RunState", "RunStatus", "Scores",
           "SegmentJob", "SegmentResult", "Settings", "Split", "Structure", "Suggestion", "TrainConfig", "Version"]
