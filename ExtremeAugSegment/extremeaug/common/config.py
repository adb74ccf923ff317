"""The one definition of every training setting and its default, and the choices the settings take.

`TrainConfig` (what is learned: stored with the checkpoint and the model) and `RunOptions` (how one run
goes) feed the command line (`add_arguments` builds the flags from the fields), the labeling project's
run spec and the Slicer module's parameter node, so a default is written once. Torch-free, so front ends
import it before torch is installed.
"""
from __future__ import annotations

import argparse
import difflib
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Iterable, List, Optional, Sequence, Tuple, Type, TypeVar

from .errors import ExtremeAugError
from .output import plain

C = TypeVar("C", bound="Choice")
MAX_CONTEXT = 5   # --context: neighbouring slices on each side
SCALE_RANGE = (0.8, 1.2)   # the augmentation's random scale of a patch's content (the paper's)
WARP_POINTS = 5            # --elastic: control points a side of the patch's smooth random displacement
WARP_MAX = 0.04            # their largest displacement, a fraction of the patch's side


class Choice(str, Enum):
    """A setting with a fixed set of values: compares, hashes and JSON-encodes as its value (a `str` enum
    that also works on Python 3.9, which has no StrEnum)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> List[str]:
        return [m.value for m in cls]

    @classmethod
    def parse(cls: Type[C], value) -> C:
        """The member for `value`; an unknown value is refused with the closest valid one suggested."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            what = re.sub(r"(?<!^)([A-Z])", r" \1", cls.__name__).lower()
            close = difflib.get_close_matches(str(value), cls.values(), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ExtremeAugError(f"unknown {what} {value!r}{hint} (choose {', '.join(cls.values())})") from None


class Device(Choice):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Compile(Choice):
    """Whether training runs the network through torch.compile (fused kernels; the first compilation takes 1-2
    minutes on 2 CPU cores, seconds when inductor's on-disk cache holds it)."""
    AUTO = "auto"   # on CUDA only: a short CPU run would spend more on compiling than it gains
    ON = "on"       # on the CPU too: pays off in long runs, and in repeated ones on one machine
    OFF = "off"

    def applies(self, device_type: str) -> bool:
        return self == Compile.ON or (self == Compile.AUTO and device_type == "cuda")


class Plane(Choice):
    AUTO = "auto"
    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    AXIAL = "axial"


class AugmentMode(Choice):
    FRESH = "fresh"   # a new random transform at every presentation
    POOL = "pool"     # the paper's N fixed transforms per patch, reused every epoch


class SliceGrid(Choice):
    """How many pixels a side each slice gets for the network (stored with the model as its slice size)."""
    PAPER = "paper"   # 256 x 256 whatever the scan, 128-pixel patches at stride 64 (the paper's set-up)
    FIT = "fit"       # the scan's own in-plane voxel count, rounded up to a multiple of 32 (64 to 512)


class Loss(Choice):
    DICE = "dice"
    DICE_BCE = "dice+bce"
    TVERSKY = "tversky"   # a missed voxel weighs 0.7, an extra one 0.3 (training.losses.TVERSKY_MISS)


# The paper's set-up where it differs from today's defaults: what the experiment grid reproduces, and what a model
# stored before these settings existed was trained with (docs/results.md section 15 says why the defaults moved).
PAPER_SETUP = {"slice_grid": SliceGrid.PAPER, "loss": Loss.DICE, "tta": False, "union": False,
               "smooth_slices": False}


def int_list(text: str) -> List[int]:
    """`1,2,3` or `1 2 3` -> [1, 2, 3]: an argparse `type=` (its error becomes argparse's message)."""
    try:
        values = [int(v) for v in str(text).replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 1,2,3, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers such as 1,2,3, got {text!r}")
    return values


def positive_int_list(text: str) -> List[int]:
    values = int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def finite_float(text: str) -> float:
    """A number, refused at parse time when it is NaN or infinite (`float("nan")` would pass)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def probability(text: str) -> float:
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def non_negative(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return value


def scale_pair(text: str) -> Tuple[float, float]:
    """`0.7,1.4` -> (0.7, 1.4): the augmentation's scale range, the lower bound at most 1 and the upper at least 1
    (an argparse `type=`)."""
    try:
        low, high = (finite_float(v) for v in str(text).replace(",", " ").split())
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected two scales LOW,HIGH such as 0.8,1.2, got {text!r}") from None
    if not 0.0 < low <= 1.0 <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= 1 <= HIGH, such as 0.8,1.2, got {text!r}")
    return low, high


def _setting(default, help: str, type=None, flag: Optional[str] = None, metavar: Optional[str] = None):
    """A field with what its command-line flag needs: help text, value type (an int, float, Choice
    or parser) and, when they differ from --field-name and FIELD_NAME, the flag and its metavar."""
    return field(default=default, metadata={"help": help, "type": type, "flag": flag, "metavar": metavar})


@dataclass
class TrainConfig:
    """What a model learns from: stored in its checkpoint, so a resumed run keeps it."""
    augment: int = _setting(50, "augmented presentations of every patch per epoch (the paper: 5 to 50)", int)
    epochs: int = _setting(100, "training epochs (each shows every patch --augment times)", int)
    batch_size: Optional[int] = _setting(
        None, "patches per optimiser step, over all GPUs (default 256 on CUDA, 16 on CPU); with --resume, a new "
        "size continues the run at that size (after GPU out of memory, say)", int)
    width: Optional[int] = _setting(None, "filters of the first stage (default 16 on CUDA, 8 on CPU)", int)
    lr: float = _setting(3e-3, "Adam learning rate (cosine decay to 5 %%)", finite_float)
    loss: Loss = _setting(Loss.TVERSKY, "training loss; tversky counts a missed voxel 0.7 and an extra one "
                          "0.3, which undoes soft Dice's under-segmentation; dice is the paper's", Loss)
    plane: Plane = _setting(Plane.AUTO, "slicing plane (auto: the acquisition plane)", Plane)
    slice_grid: SliceGrid = _setting(
        SliceGrid.FIT, "the slices' size for the network; fit: each slice resampled to the scan's own in-plane size "
        "rounded up to a multiple of 32 (a 35 x 51 crop trains on 64 x 64, not on 37 times its pixels); paper: to "
        "256 x 256 whatever the scan; patches are 128 pixels, or the whole slice when it is smaller", SliceGrid)
    seed: int = _setting(0, "random seed (initialisation, transforms, patch order)", int)
    label_values: Optional[List[int]] = _setting(
        None, "mask label values to learn, e.g. 1,2 (default: every value > 0, each its own structure)", int_list)
    merge_labels: bool = _setting(False, "learn the labels' union as one structure (the paper's binary set-up)", bool)
    label_names: Optional[str] = _setting(
        None, "name the structures, NAME=VALUE,... (e.g. L5-S1=1,L4-L5=2); a mask value not listed is an error "
        "(default: the mask's names, or 'label N')", str, metavar="NAME=VALUE,...")
    augmentation: bool = _setting(True, "present patches untransformed (a baseline)", bool, "--no-augmentation")
    augment_mode: AugmentMode = _setting(
        AugmentMode.FRESH, "fresh: a new random transform at every presentation; pool: the paper's N fixed "
        "transforms per patch, reused every epoch (regenerated from the seed, never stored)", AugmentMode)
    context: int = _setting(0, "neighbouring slices on each side given to the network as extra input channels "
                            "(2.5D; 0 is the paper's 2D)", int)
    scale_each_axis: bool = _setting(
        False, "draw the augmentation's scale for each in-plane axis of the slice on its own (within the same range), "
        "so training also sees the structure taller or flatter than the labeled scan's, not only larger or smaller",
        bool)
    scale_range: Tuple[float, float] = _setting(
        SCALE_RANGE, "the range of the augmentation's random scale of a patch's content, LOW,HIGH: training shows the "
        "structure from LOW to HIGH times its size in the labeled scan (the paper's 0.8,1.2)", scale_pair,
        metavar="LOW,HIGH")
    elastic: bool = _setting(
        False, f"also bend each patch by a smooth random displacement ({WARP_POINTS} x {WARP_POINTS} control points, up "
        f"to {WARP_MAX * 100:.0f} %% of the patch), "
        "so training sees the structure's outline and thickness vary as between patients, not only its pose", bool)
    average_weights: bool = _setting(
        False, "export the mean of the weights over the run's second half (stochastic weight averaging) instead of "
        "the last ones; with validation scans, the better validated of the two", bool)
    intensity: bool = _setting(False, "also vary each patch's intensities on the device: gamma, contrast, "
                               "brightness, a smooth bias field and noise", bool)
    pseudo_rounds: int = _setting(
        3, "with unlabeled scans: how often the model pseudo-labels them, the first time halfway through the run, "
        "then evenly over its second half", int)
    pseudo_weight: float = _setting(
        0.5, "with unlabeled scans: the loss weight of a pseudo-labeled voxel (a human-labeled one weighs 1)",
        finite_float)
    pseudo_margin_mm: float = _setting(
        0.0, "with unlabeled scans: background within this many mm of a pseudo-labeled structure weighs nothing, as "
        "uncertain voxels do (a one-scan model's misses lie at its structures' rims and sides, where it is sure of "
        "background; 0 leaves out the uncertain voxels only)", non_negative, metavar="MM")
    tta: bool = _setting(
        True, "segment with one pass of the network instead of averaging it over five poses of the augmentation's "
        "family (test-time augmentation, about 5x the network's time; stored with the model, used by `segment`, the "
        "project and the pseudo-labels)", bool, "--no-tta")
    smooth_slices: bool = _setting(
        True, "segment each slice on its own instead of averaging its probabilities with its neighbours' (a Gaussian "
        "of 2 mm full width at half maximum; stored with the model, used by `segment`, the project and the "
        "pseudo-labels)", bool, "--no-smooth-slices")
    threshold: float = _setting(0.5, "probability threshold stored with the model", probability)
    union: bool = _setting(
        True, "with several structures, make a voxel foreground only where its likeliest structure's probability "
        "passes the threshold, not where the probability that it belongs to any of them does (stored with the model)",
        bool, "--no-union")
    min_component_mm3: float = _setting(
        100.0, "connected components smaller than this are removed at segmentation (0 keeps all)", non_negative)
    keep_largest: bool = _setting(False, "keep only the largest connected component of each structure at "
                                  "segmentation (anatomy with one instance per label)", bool)
    min_relative_size: float = _setting(
        0.0, "at segmentation, drop each structure's components smaller than this share of its largest "
        "(look-alikes and specks; 0 keeps all)", non_negative, metavar="F")

    def __post_init__(self):
        self.loss, self.plane = Loss.parse(self.loss), Plane.parse(self.plane)
        self.slice_grid = SliceGrid.parse(self.slice_grid)
        self.scale_range = tuple(self.scale_range)   # a list once it has been through JSON
        self.augment_mode = AugmentMode.parse(self.augment_mode)
        if self.label_values is not None:
            self.label_values = [int(v) for v in self.label_values]

    @classmethod
    def stored(cls, settings: dict) -> "TrainConfig":
        """The config a checkpoint or run spec stored: a setting it lacks predates that setting, so it takes the
        value the run trained with (the paper's), not today's default."""
        return cls(**{**PAPER_SETUP, **settings})

    def check(self) -> None:
        if self.augment < 1 or self.epochs < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ExtremeAugError("--augment, --epochs and --batch-size must be at least 1")
        if not 0 <= self.context <= MAX_CONTEXT:
            raise ExtremeAugError(f"--context must be 0 to {MAX_CONTEXT} slices on each side")
        if self.width is not None and self.width < 1:
            raise ExtremeAugError("--width must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ExtremeAugError("--lr must be a positive number")
        if not 0.0 < self.threshold < 1.0 or not self.min_component_mm3 >= 0:   # `not >=` also catches NaN
            raise ExtremeAugError("--threshold must be between 0 and 1 and --min-component-mm3 0 or more")
        if self.pseudo_rounds < 1 or not 0.0 < self.pseudo_weight <= 1.0 or not 0.0 <= self.pseudo_margin_mm < math.inf:
            raise ExtremeAugError("--pseudo-rounds must be at least 1, --pseudo-weight above 0 and at most 1, and "
                                  "--pseudo-margin-mm 0 or more")
        try:   # the project's run spec and the Slicer module do not come through argparse
            scale_pair(",".join(map(str, self.scale_range)))
        except argparse.ArgumentTypeError as e:
            raise ExtremeAugError(f"--scale-range: {e}") from None
        if not 0.0 <= self.min_relative_size <= 1.0:
            raise ExtremeAugError("--min-relative-size must be 0 to 1 (a share of the largest component)")
        self.table()

    def table(self):
        """The structures named by --label-names, or None (the first mask names them)."""
        from .structures import parse_table
        return parse_table(self.label_names, "--label-names") if self.label_names else None

    def to_dict(self) -> dict:
        """Plain values only (what JSON and a weights_only checkpoint hold)."""
        return plain(self)


@dataclass
class RunOptions:
    """How one training run goes; none of it changes what is learned."""
    device: Device = _setting(Device.AUTO, "where to train", Device)
    time_budget_min: Optional[float] = _setting(None, "stop gracefully after this many minutes", finite_float,
                                                "--time-budget", "MINUTES")
    checkpoint_minutes: float = _setting(2.0, "checkpoint (and, with validation scans, validate) this often "
                                         "within an epoch, so a stopped run loses minutes, not an epoch",
                                         finite_float)
    compile: Compile = _setting(Compile.AUTO, "torch.compile the network: auto on CUDA only; on also on the CPU "
                                "(steps 1.2x faster; the first compilation on a machine takes 1-2 minutes, later "
                                "runs reuse inductor's cache); off trains eagerly", Compile)
    retry_smaller_batch: bool = _setting(
        True, "stop at out of memory instead of trying again at half the batch (from the last checkpoint when "
        "there is one)", bool, "--no-retry-smaller-batch")
    resume: bool = False
    progress_file: Optional[str] = None
    show_progress: bool = True
    max_steps: Optional[int] = None     # stop after this many steps in this run (benchmarks, tests)
    stop_file: Optional[str] = None     # stop cleanly once this file exists (a cancel that works on Windows too)

    def __post_init__(self):
        self.device, self.compile = Device.parse(self.device), Compile.parse(self.compile)

    def check(self) -> None:
        if self.time_budget_min is not None and not (self.time_budget_min > 0 and math.isfinite(self.time_budget_min)):
            raise ExtremeAugError("--time-budget must be positive (minutes)")
        if not (self.checkpoint_minutes > 0 and math.isfinite(self.checkpoint_minutes)):
            raise ExtremeAugError("--checkpoint-minutes must be positive")


def check_global_batch(batch_size: Optional[int], processes: int) -> None:
    """--batch-size is the batch over all processes (torchrun's, or `project train --gpus`'s): each needs a patch."""
    if batch_size is not None and batch_size < processes:
        raise ExtremeAugError(f"--batch-size {batch_size} is the batch over all {processes} processes: give at least "
                              "one patch to each")


def add_arguments(parser: argparse.ArgumentParser, cls: type, names: Iterable[str], **defaults) -> None:
    """Flags for the named fields of TrainConfig or RunOptions, with the fields' defaults (or those given,
    for a command whose own default differs on purpose, such as the demo's short time budget)."""
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        f = by_name[name]
        kind, flag = f.metadata["type"], flag_of(cls, name)
        default = defaults.get(name, f.default if f.default is not MISSING else None)
        if kind is bool:   # a flag that turns the default off
            parser.add_argument(flag, dest=name, action="store_false" if default else "store_true",
                                help=f.metadata["help"])
        elif isinstance(kind, type) and issubclass(kind, Choice):
            parser.add_argument(flag, dest=name, default=kind(default).value, choices=kind.values(),
                                help=f.metadata["help"] + " (default: %(default)s)")
        else:
            parser.add_argument(flag, dest=name, type=kind, default=default, metavar=f.metadata["metavar"],
                                help=f.metadata["help"] + ("" if default is None else " (default: %(default)s)"))


def flag_of(cls: type, name: str) -> str:
    """The command-line flag of a TrainConfig or RunOptions field."""
    return next(f.metadata["flag"] for f in fields(cls) if f.name == name) or "--" + name.replace("_", "-")


def changed_settings(cls: type, asked, own, names: Iterable[str]) -> List[str]:
    """`--flag value (the run's: value)` for each named setting (fields of `cls`, TrainConfig or RunOptions) that
    `asked` sets away from its default and from the run's `own`: what a resume, which continues a run with its own
    settings, refuses rather than ignores (the run's own command again is no change)."""
    default, changed = cls(), []
    for name in names:
        value, theirs = getattr(asked, name), getattr(own, name)
        if getattr(default, name) != value != theirs:
            shown = [str(getattr(v, "value", "default" if v is None else v)) for v in (value, theirs)]
            changed.append(f"{flag_of(cls, name)} (the run's: without it)" if isinstance(value, bool) else
                           f"{flag_of(cls, name)} {shown[0]} (the run's: {shown[1]})")
    return changed


def from_arguments(cls: type, args: argparse.Namespace, names: Sequence[str], **extra):
    """The dataclass built from the parsed flags `add_arguments` made (plus `extra` fields)."""
    return cls(**{n: getattr(args, n) for n in names}, **extra)


TRAIN_DEFAULTS = TrainConfig()
RUN_DEFAULTS = RunOptions()
DEMO_MINUTES = 2.5   # the demo's time budget: short enough for a first look on a laptop CPU
