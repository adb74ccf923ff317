"""What the project API takes and returns: typed records and the project's choices.

Front ends (the command line, the worker, the Slicer module) read these fields, never a database row or a
JSON key string, so a renamed field fails where it is used instead of showing "-" forever.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from ..common.config import RUN_DEFAULTS, Choice, Compile, Device, RunOptions, TrainConfig, check_global_batch
from ..common.errors import ExtremeAugError
from ..common.structures import Structure, default_structure
from ..evaluation.stats import Mean

ImageInput = Union[str, os.PathLike, "SimpleITK.Image"]   # a file, a DICOM folder, or an image in memory


class RunStatus(Choice):
    STARTING = "starting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DIED = "died"

    @property
    def active(self) -> bool:
        return self in (RunStatus.STARTING, RunStatus.RUNNING)

    @property
    def resumable(self) -> bool:
        return self in (RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.DIED)


class Phase(Choice):
    QUEUED = "queued"
    PREPARING = "preparing"
    TRAINING = "training"
    SCORING = "scoring"
    DONE = "done"


class LabelKind(Choice):
    MANUAL = "manual"        # delineated from scratch
    CORRECTED = "corrected"  # a prediction corrected by a person
    AUTO = "auto"            # predicted by a model version

    @property
    def human(self) -> bool:
        return self is not LabelKind.AUTO


class Split(Choice):
    AUTO = "auto"            # a request only: the project's policy decides
    TRAIN = "train"
    VALIDATION = "validation"


class CaseState(Choice):
    UNLABELED = "unlabeled"
    AUTO = "auto"
    MANUAL = "manual"
    CORRECTED = "corrected"


DEFAULT_STRUCTURE = default_structure()   # a project whose labels came without a name


@dataclass(frozen=True)
class Settings:
    plane: str
    val_fraction: float
    label_values: Optional[List[int]]
    active_version: Optional[int]
    merge_labels: bool = False        # masks are learned as one structure (their union)
    structures: Optional[List[Structure]] = None   # the label table: fixed at init or by the first human label

    @property
    def structure(self) -> Optional[Structure]:
        """A one-structure project's structure (None before the table is fixed, or with several)."""
        return self.structures[0] if self.structures and len(self.structures) == 1 else None


@dataclass(frozen=True)
class Correction:
    """What a person changed when a human label replaced a prediction."""
    auto_label: int                 # the id of the prediction that was corrected
    model_version: Optional[int]    # the version that predicted it
    voxels_added: Optional[int]     # None (with the two below): unknown, the prediction file was unreadable
    voxels_removed: Optional[int]
    dice: Optional[float]           # between the prediction and the accepted label
    seconds: Optional[float] = None  # from the prediction being shown to the accept (when the front end knows)

    @property
    def voxels_changed(self) -> Optional[int]:
        return None if self.voxels_added is None else self.voxels_added + self.voxels_removed

    def describe(self) -> str:
        """What the correction changed, in words, for the command line and the front ends' case views."""
        changed = ("what it changed is unknown (the prediction's file could not be read)" if self.dice is None else
                   f"+{self.voxels_added} / -{self.voxels_removed} voxels, Dice {self.dice:.3f}")
        return f"corrected v{self.model_version}: {changed}" + (
            f", {self.seconds:.0f} s" if self.seconds is not None else "")


@dataclass(frozen=True)
class Label:
    id: int
    case_id: str
    kind: LabelKind
    path: str                       # relative to the project folder
    sha256: str
    voxels: int
    created: float
    source: Optional[str] = None
    model_version: Optional[int] = None    # auto labels: the version that predicted it
    probabilities: Optional[str] = None    # auto labels: the probability map
    uncertainty: Optional[float] = None    # auto labels: mean of the uncertainty map near the prediction (0..1)
    correction: Optional[Correction] = None
    missing: List[str] = field(default_factory=list)   # human labels: the structures it left out
    uncertainty_map: Optional[str] = None  # auto labels: the voxel-wise uncertainty (data.decision.uncertainty_map)
    accepted_by: Optional[str] = None      # human labels: who stored it (a web user, or the login name)


@dataclass(frozen=True)
class CaseInfo:
    """One row of the case list."""
    id: str
    state: CaseState
    split: Optional[Split]
    scan: str
    labels: int
    auto_version: Optional[int]
    uncertainty: Optional[float]


@dataclass(frozen=True)
class Case(CaseInfo):
    """A case with its whole label history (oldest first)."""
    scan_sha256: Optional[str] = None
    source: str = ""
    label: Optional[str] = None     # the label that counts: the newest human one, else the newest prediction
    history: List[Label] = field(default_factory=list)
    existing: bool = False          # `add` found the scan already in the project


@dataclass(frozen=True)
class Progress:
    step: int
    steps_total: int
    epoch: int
    loss: float
    dice: float
    patches_per_s: float
    eta_s: Optional[float]
    time: float


@dataclass(frozen=True)
class EpochSummary:
    epoch: int
    loss: float
    train_dice: float
    elapsed_s: float


@dataclass(frozen=True)
class RunState:
    id: str
    status: RunStatus
    phase: Optional[Phase]
    pid: Optional[int]
    message: Optional[str]          # how it ended; while it trains, a retry at a smaller batch (out of memory)
    version: Optional[int]
    heartbeat_age_s: Optional[float]
    resumable: bool
    progress: Optional[Progress] = None
    last_epoch: Optional[EpochSummary] = None

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def fraction(self) -> float:
        if self.progress is None or not self.progress.steps_total:
            return 0.0
        return min(1.0, self.progress.step / self.progress.steps_total)


@dataclass
class RunSpec:
    """What `train` is asked to do: the engine's settings (the project's plane is applied) and how to run."""
    train: TrainConfig = field(default_factory=TrainConfig)
    device: Device = RUN_DEFAULTS.device
    time_budget_min: Optional[float] = RUN_DEFAULTS.time_budget_min
    checkpoint_minutes: float = RUN_DEFAULTS.checkpoint_minutes
    gpus: int = 1        # > 1: the worker starts one training process per GPU (CPU processes on --device cpu)
    compile: Compile = RUN_DEFAULTS.compile
    unlabeled: bool = False   # also learn from the project's unlabeled cases (pseudo-labels, never stored as labels)

    def __post_init__(self):
        self.device, self.compile = Device.parse(self.device), Compile.parse(self.compile)

    def to_dict(self) -> dict:
        return {"train": self.train.to_dict(), "device": self.device.value, "time_budget_min": self.time_budget_min,
                "checkpoint_minutes": self.checkpoint_minutes, "gpus": self.gpus, "compile": self.compile.value,
                "unlabeled": self.unlabeled}

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(TrainConfig.stored(d["train"]), d["device"], d["time_budget_min"], d["checkpoint_minutes"],
                   d.get("gpus", 1), d.get("compile", RUN_DEFAULTS.compile), d.get("unlabeled", False))

    def check(self) -> None:
        """Refuse, before a worker starts, what the engine or its processes would refuse."""
        self.train.check()
        self.to_options().check()
        if self.gpus < 1:
            raise ExtremeAugError("--gpus must be at least 1")
        check_global_batch(self.train.batch_size, self.gpus)

    def to_options(self, **engine) -> RunOptions:
        """The engine's options for this spec (`engine`: the worker's files and flags)."""
        return RunOptions(device=self.device, time_budget_min=self.time_budget_min,
                          checkpoint_minutes=self.checkpoint_minutes, compile=self.compile, **engine)


@dataclass(frozen=True)
class Scores:
    """A version's validation scores on a set of validation labels."""
    cases: int                      # validation labels in the set
    scored: int                     # of which have a score (a front end that must not block skips scoring)
    dice: Mean
    hd95_mm: Mean
    assd_mm: Mean
    per_case: Dict[str, float] = field(default_factory=dict)   # Dice by case id
    per_structure: Dict[str, Mean] = field(default_factory=dict)   # Dice by structure (several structures)


@dataclass(frozen=True)
class CorrectionSummary:
    """How much fixing a version's predictions needed: the curve that shows what a retrain buys."""
    corrections: int
    voxels_changed: Mean
    dice: Mean
    seconds: Mean


@dataclass(frozen=True)
class Version:
    version: int
    run: str
    created: float
    path: str
    active: bool
    training_scans: int
    status: str
    epochs_done: float
    augment: int
    seconds: float
    device: str
    width: int
    train_dice: Optional[float]
    loss: Optional[float]
    val_then: Scores                # on the validation labels when it was trained
    val_now: Scores                 # on today's validation labels
    corrections: CorrectionSummary
    unlabeled_scans: int = 0        # unlabeled cases its last pseudo-label round learned from


@dataclass(frozen=True)
class SegmentResult:
    case_id: str
    label: int                      # the auto label's id
    version: int
    mask: str
    probabilities: str
    voxels: int
    uncertainty: float
    state: CaseState
    provider: str = ""              # where onnxruntime actually ran it (session.get_providers()[0])
    uncertainty_map: str = ""       # where to look when correcting (data.decision.uncertainty_map)


class JobStatus(Choice):
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class JobState:
    """A background segmentation job: how far it is, and the results stored so far."""
    status: JobStatus
    done: int
    total: int
    results: List[SegmentResult] = field(default_factory=list)
    message: str = ""

    @property
    def active(self) -> bool:
        return self.status == JobStatus.RUNNING

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True)
class Suggestion:
    case: Optional[str]
    reason: str
    score: Optional[float] = None
    version: Optional[int] = None
    candidates: int = 0
    not_segmented_by_active: int = 0


@dataclass(frozen=True)
class ProjectStatus:
    project: str
    cases: int
    states: Dict[str, int]
    splits: Dict[str, int]
    versions: int
    active_version: Optional[int]
    settings: Settings
    run: Optional[RunState]
