"""Learning from unlabeled scans: self-training with pseudo-labels.

Once the labeled scans have trained for half the run, the model segments the unlabeled scans as `segment` would
(averaged over poses with `tta`, `data.poses`; the model's threshold and clean-up, `data.decision`) on the slice
grid training uses, and each voxel whose uncertainty (`data.decision.uncertainty_map`) is at most MAX_UNCERTAINTY
becomes a pseudo-label; the other voxels weigh nothing, and so, with `--pseudo-margin-mm`, does the background near
the segmented structures (where a one-scan model misses what it never saw, sure that it is background). From then on
half of every batch is pseudo-labeled patches (a step costs what it did), their voxels weighted `--pseudo-weight`.
The pseudo-labels are made again `--pseudo-rounds` times over the run's second half, each time by a better model, all
within the run's time budget. They are training material only: kept in the run's folder for an exact resume
(pseudo-N.pt), never written as anyone's label.

A round does not replace a scan's pseudo-label with one whose volume differs from it by more than MAX_CHANGE: a model
trained on its own pseudo-labels drifts one way, round after round, and learns the drift. With a loss that counts
misses above extra voxels (Tversky) they grow (docs/results.md §15: 1.02 -> 1.20 -> 1.26 of the labeled volume over
three rounds on the hippocampus, and the models then over-segment scans they never saw); on the discs they shrank
(0.82 -> 0.62 -> 0.57 of the labeled volume on a scan whose discs hold 0.96 of it, and the model then under-segmented).

A scan is left out, with the reason, when its anatomy would appear on the slice grid at a scale the augmentation
never showed the model (another field of view, or another anatomy: checked before training), or when a round's
segmentation of it holds a structure volume far from the labeled scans' (another anatomy, or a scan the model
cannot segment yet: checked at every round).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from ..common.config import SCALE_RANGE, TrainConfig
from ..common.errors import ExtremeAugError
from ..common.structures import Structure
from ..data.decision import across_slices, clean_structures, label_array, uncertainty_map
from ..data.io import read_scan
from ..data.poses import averaged_over_poses
from ..data.preprocess import Preprocessing, scan_to_slices, with_context
from .augment import patch_table
from .dataset import Case, PreparedCase, SliceSet

MAX_UNCERTAINTY = 0.2        # at most this uncertain to be a pseudo-label: p >= 0.9 or <= 0.1 with one structure
VOLUME_RANGE = (0.25, 4.0)   # a scan's segmented volume against the labeled scans' mean, for its pseudo-labels to count
MAX_CHANGE = 0.1             # a round keeps a scan's pseudo-label in use when its new one's volume differs from it by
                             # more than this share, either way
MIN_CONFIDENT = 0.9          # the share of a scan's voxels the model must be sure of (a model still unsure of most of
                             # it, background included, would teach from a biased few)
BATCH_SLICES = 8


def pseudo_file(folder: Path, round_: int) -> Path:
    """A round's pseudo-labels, named by round so that a checkpoint always finds the ones it was written with."""
    return folder / f"pseudo-{round_}.pt"


@dataclass
class UnlabeledScan:
    case: Case
    inputs: torch.Tensor          # [n, C, S, S] network inputs on the training device
    spacing: tuple                # the slice grid's, mm


@dataclass
class InUse:
    """A scan's pseudo-label in use and its volume against the labeled scans' (`SelfTraining.reference_mm3`)."""
    map: np.ndarray               # [n, K + 1, S, S] uint8: the structures, then the voxels left out (uncertain)
    volume_ratio: float


@dataclass
class Mixed:
    """The human-labeled slices followed by the pseudo-labeled ones, as one stack the training step cuts from."""
    inputs: torch.Tensor          # [n, C, S, S]
    masks: torch.Tensor           # [n, K + 1, S, S] uint8: the structures, then the voxels left out (uncertain)
    slice_weight: torch.Tensor    # [n]: 1 for a human label, --pseudo-weight for a pseudo-label
    patches: torch.Tensor         # [m, 3]: the pseudo-labeled slices' patches (slice, y0, x0) in this stack


def scale_problem(spacing: Sequence[float], labeled: Sequence[Sequence[float]], axis: int,
                  scales: Tuple[float, float] = SCALE_RANGE) -> Optional[str]:
    """Why a scan whose slice grid has `spacing` cannot be pseudo-labeled by a model trained on slice grids of the
    `labeled` spacings (the plane's `axis` is the slice axis), or None when it can: its anatomy must appear at a
    scale within the augmentation's range (`scales`, the run's --scale-range) of a labeled scan's."""
    for a in (a for a in range(3) if a != axis):
        low, high = min(s[a] for s in labeled) / scales[1], max(s[a] for s in labeled) / scales[0]
        if not low <= spacing[a] <= high:
            shown = float(np.mean([s[a] for s in labeled]))
            return (f"on the model's slice grid its pixels are {spacing[a]:.3g} mm, the labeled scans' {shown:.3g} mm: "
                    f"its anatomy would appear {shown / spacing[a]:.2f} times as large, outside the {scales[0]:g}-"
                    f"{scales[1]:g} times training showed the model (another field of view, or another anatomy)")
    return None


def near_structures(labels: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """The background voxels within `margin_mm` of any structure of a label array [z, y, x] (`spacing` x, y, z)."""
    if not labels.any():
        return np.zeros(labels.shape, bool)
    foreground = sitk.GetImageFromArray((labels > 0).astype(np.uint8))
    foreground.SetSpacing(tuple(float(s) for s in spacing))
    outside = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(foreground, insideIsPositive=False,
                                                                  squaredDistance=False, useImageSpacing=True))
    return (outside > 0) & (outside <= margin_mm)


class SelfTraining:
    """The unlabeled scans of a run, their pseudo-labels and the rounds that make them.

    Args:
        cases: the unlabeled scans (`Case` with label None).
        labeled: the prepared training cases (their slice grids and structure volumes are the reference).
        train_set: the training slices on the device; `labels` the structures learned."""

    def __init__(self, cases: Sequence[Case], prep: Preprocessing, labeled: Sequence[PreparedCase],
                 train_set: SliceSet, labels: Sequence[Structure], cfg: TrainConfig, device: torch.device):
        self.cases, self.prep, self.train_set, self.labels, self.cfg = list(cases), prep, train_set, list(labels), cfg
        self.reference_mm3 = float(np.mean([c.masks.any(axis=1).sum() * np.prod(c.spacing) for c in labeled]))
        training = {str(Path(c.case.image).resolve()) for c in labeled}
        self.scans: List[UnlabeledScan] = []
        self.left_out: List[dict] = []   # scans refused before training, with the reason
        for case in self.cases:
            reason = "it is also a labeled training scan" if str(Path(case.image).resolve()) in training else None
            if reason is None:
                images, grid = scan_to_slices(read_scan(case.image), prep)
                reason = scale_problem(grid.GetSpacing(), [c.spacing for c in labeled], prep.axis, cfg.scale_range)
            if reason:
                self.left_out.append({"name": case.name, "used": False, "reason": reason})
                continue
            inputs = torch.from_numpy(with_context(images, cfg.context)).to(device)
            self.scans.append(UnlabeledScan(case, inputs, grid.GetSpacing()))
        if not self.scans:
            raise ExtremeAugError("no unlabeled scan can be used: " + "; ".join(f"{s['name']}: {s['reason']}"
                                                                                for s in self.left_out))
        for row in self.left_out:
            print(f"extremeaug: warning: unlabeled scan {row['name']} is not used: {row['reason']}", file=sys.stderr)
        self.rounds: List[dict] = []     # what each round did with every scan
        self.mixed: Optional[Mixed] = None   # None until pseudo-labels join the training
        self._in_use: Dict[str, InUse] = {}   # the used scans' pseudo-labels, by scan name, in `self.scans` order

    def due(self, progress: float) -> bool:
        """Whether the next round is due at this share of the run (halfway, then evenly over the second half)."""
        done, total = len(self.rounds), self.cfg.pseudo_rounds
        return done < total and progress >= 0.5 + 0.5 * done / total

    @torch.no_grad()
    def label(self, net: torch.nn.Module, step: int) -> dict:
        """One round: pseudo-label every unlabeled scan with `net`; returns the round's report."""
        net.eval()
        rows, in_use = [], {}
        for scan in self.scans:
            masks, left_out, row = self.pseudo_labels(self._probabilities(net, scan), scan)
            rows.append(row)
            if not row["used"]:
                continue
            name, previous = scan.case.name, self._in_use.get(scan.case.name)
            change = row["volume_ratio"] / previous.volume_ratio if previous is not None else 1.0
            if abs(change - 1) > MAX_CHANGE:
                row["kept"] = (f"its new pseudo-label holds {change:.2f} times the one in use (outside "
                               f"{1 - MAX_CHANGE:g}-{1 + MAX_CHANGE:g}): that one is kept")
                in_use[name] = previous
            else:
                in_use[name] = InUse(np.concatenate([masks, left_out], axis=1), row["volume_ratio"])
            row["pseudo_volume_ratio"] = in_use[name].volume_ratio
        net.train()
        report = {"round": len(self.rounds) + 1, "step": step, "scans": rows}
        self.rounds.append(report)
        self._in_use = in_use
        self._mix()
        return report

    def _probabilities(self, net: torch.nn.Module, scan: UnlabeledScan) -> np.ndarray:
        """The network's probabilities [n, K, S, S] of a scan's slices, averaged over poses and tied across slices
        as `segment` would."""
        inputs = scan.inputs
        def predict(slices) -> np.ndarray:   # a pose's warped slices (numpy), or the inputs as they are (on device)
            out, device = [], inputs.device
            for s in range(0, len(slices), BATCH_SLICES):
                x = torch.as_tensor(slices[s:s + BATCH_SLICES], device=device)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    out.append(torch.sigmoid(net(x).float()).cpu())
            return torch.cat(out).numpy()

        probs = averaged_over_poses(inputs.cpu().numpy(), predict) if self.cfg.tta else predict(inputs)
        return across_slices(probs, scan.spacing[self.prep.axis]) if self.cfg.smooth_slices else probs

    def pseudo_labels(self, probs: np.ndarray, scan: UnlabeledScan):
        """Slices' probabilities [n, K, S, S] -> pseudo-label masks [n, K, S, S], the voxels left out [n, 1, S, S]
        and the scan's report. The decision runs on the slice grid as a volume (its own spacing), so the clean-up's
        mm3 mean what they mean in `segment`."""
        to_volume = 3 - self.prep.axis   # where the slice index goes in a [K, z, y, x] volume of the slice grid
        volume = np.moveaxis(probs.transpose(1, 0, 2, 3), 1, to_volume)
        labelmap = sitk.GetImageFromArray(label_array(volume, self.labels, self.cfg.threshold, self.cfg.union))
        labelmap.SetSpacing(scan.spacing)
        cleaned = sitk.GetArrayFromImage(clean_structures(labelmap, self.labels, self.cfg.min_component_mm3,
                                                          self.cfg.keep_largest, self.cfg.min_relative_size))
        unsure = uncertainty_map(volume) > MAX_UNCERTAINTY
        ratio = float((cleaned > 0).sum() * np.prod(scan.spacing) / self.reference_mm3)
        confident = float(1 - unsure.mean())
        if self.cfg.pseudo_margin_mm > 0:
            unsure |= near_structures(cleaned, scan.spacing, self.cfg.pseudo_margin_mm)
        row = {"name": scan.case.name, "used": True, "volume_ratio": round(ratio, 3), "confident": round(confident, 3)}
        if not VOLUME_RANGE[0] <= ratio <= VOLUME_RANGE[1]:
            row.update(used=False, reason=f"its segmentation holds {ratio:.2f} times the labeled scans' structure volume "
                       f"(outside {VOLUME_RANGE[0]:g}-{VOLUME_RANGE[1]:g}): another anatomy, or a scan this model cannot "
                       "segment yet")
        elif confident < MIN_CONFIDENT:
            row.update(used=False, reason=f"the model is sure of {confident:.0%} of its voxels (under "
                       f"{MIN_CONFIDENT:.0%}): too early to learn from its guesses")
        masks = np.stack([cleaned == lab.value for lab in self.labels]).astype(np.uint8)
        to_slices = np.moveaxis(masks, to_volume, 1).transpose(1, 0, 2, 3)
        return to_slices, np.moveaxis(unsure, 2 - self.prep.axis, 0)[:, None].astype(np.uint8), row

    def _mix(self) -> None:
        """The stack the training step cuts from: human slices, then the used scans' pseudo-labeled slices."""
        if not self._in_use:
            self.mixed = None
            return
        human, by_name = self.train_set, {s.case.name: s for s in self.scans}
        device, n = human.masks.device, len(human.inputs)
        maps = torch.from_numpy(np.concatenate([kept.map for kept in self._in_use.values()])).to(device)
        inputs = torch.cat([human.inputs] + [by_name[name].inputs for name in self._in_use])
        masks = torch.cat([torch.cat([human.masks, torch.zeros_like(human.masks[:, :1])], dim=1), maps])
        weight = torch.cat([torch.ones(n, device=device),
                            torch.full((len(maps),), self.cfg.pseudo_weight, device=device)])
        patches = patch_table(len(maps), human.slice_size, human.patch, human.patch // 2).to(device)
        patches[:, 0] += n
        self.mixed = Mixed(inputs, masks, weight, patches)

    def state_dict(self) -> dict:
        maps = [torch.from_numpy(kept.map) for kept in self._in_use.values()]
        return {"rounds": self.rounds, "used": list(self._in_use), "maps": torch.cat(maps) if maps else None}

    def load_state_dict(self, state: dict) -> None:
        """The pseudo-labels a checkpoint was written with (`pseudo_file`), exactly as they were."""
        self.rounds = state["rounds"]
        rows = {row["name"]: row for row in self.rounds[-1]["scans"]} if self.rounds else {}
        sizes = {s.case.name: len(s.inputs) for s in self.scans}
        maps = state["maps"].numpy() if state["maps"] is not None else None
        self._in_use, start = {}, 0
        for name in state["used"]:   # a round written before the guard has no pseudo_volume_ratio: it used its own
            ratio = rows[name].get("pseudo_volume_ratio", rows[name]["volume_ratio"])
            self._in_use[name] = InUse(maps[start:start + sizes[name]], ratio)
            start += sizes[name]
        self._mix()

    def summary(self) -> dict:
        """For the model's metadata and history: which scans the run was given, and what each round used."""
        return {"unlabeled_cases": [c.name for c in self.cases], "unlabeled_left_out": self.left_out,
                "pseudo_labels": self.rounds}
