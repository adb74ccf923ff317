"""The paper's experiment grid: number of training scans x augmentation level (x augmentation mode).

Each cell trains a model from scratch, records the training Dice of its last epoch (the paper's
Table I) and the mean validation Dice, HD95 and ASSD on validation scans (Table II). A cell's result
is written when it is complete, so a rerun skips finished cells and resumes an interrupted one.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..common.config import RunOptions, TrainConfig
from ..common.errors import ExtremeAugError
from ..common.files import write_bytes

SPIDER_DISC_LABELS = list(range(201, 300))   # SPIDER: vertebrae 1-25, canal 100, discs 201+
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class Scan:
    id: str
    image: str
    label: str


@dataclass(frozen=True)
class Cell:
    train: Tuple[str, ...]
    val: Tuple[str, ...]
    augment: int
    mode: str
    epochs: int

    @property
    def name(self) -> str:
        return f"n{len(self.train)}-{'+'.join(self.train)}-{self.mode}-{self.augment}x-e{self.epochs}"


def discover(data_dir: str | Path) -> Tuple[List[Scan], Optional[List[int]]]:
    """Scan/mask pairs in the shared data's naming (ID_image.*, ID_mask.*) or SPIDER's layout
    (images/ID_t2.mha, masks/ID_t2.mha; discs are the labels >= 201)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise ExtremeAugError(f"{d}: no such folder")
    if (d / "images").is_dir() and (d / "masks").is_dir():
        scans = [Scan(p.name[:-len("_t2.mha")], str(p), str(d / "masks" / p.name))
                 for p in sorted((d / "images").glob("*_t2.mha")) if (d / "masks" / p.name).is_file()]
        if scans:
            return scans, SPIDER_DISC_LABELS
    scans = []
    for p in sorted(d.iterdir()):
        for ext in IMAGE_EXTENSIONS:
            if p.name.endswith("_image" + ext) and (d / p.name.replace("_image", "_mask")).is_file():
                scans.append(Scan(p.name[:-len("_image" + ext)], str(p), str(d / p.name.replace("_image", "_mask"))))
    if not scans:
        raise ExtremeAugError(f"{d}: no scan/mask pairs found; expected ID_image.nii.gz + ID_mask.nii.gz, or "
                              "SPIDER's images/ID_t2.mha + masks/ID_t2.mha")
    return scans, None


def training_sets(ids: Sequence[str], counts: Sequence[int], val: Sequence[str] = (),
                  folds: Optional[int] = None) -> List[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """(training ids, validation ids) per number of scans. With fixed validation scans, the first n
    of the others train; without, the scans take turns: n consecutive ones (cyclically) train and the
    rest validate, for `folds` turns (default: every scan starts one)."""
    unknown = [v for v in val if v not in ids]
    if unknown:
        raise ExtremeAugError(f"--val: unknown scan id(s) {', '.join(unknown)}; scans: {', '.join(ids)}")
    sets = []
    if val:
        pool = [i for i in ids if i not in val]
        for n in counts:
            if n > len(pool):
                raise ExtremeAugError(f"--scans {n}: only {len(pool)} scans are not validation scans")
            sets.append((tuple(pool[:n]), tuple(val)))
        return sets
    for n in counts:
        if not 1 <= n < len(ids):
            raise ExtremeAugError(f"--scans {n}: needs 1 to {len(ids) - 1} of the {len(ids)} scans (the rest validate)")
        for start in range(min(folds or len(ids), len(ids))):
            train = tuple(ids[(start + j) % len(ids)] for j in range(n))
            sets.append((train, tuple(i for i in ids if i not in train)))
    return list(dict.fromkeys(sets))


def grid(sets, augments: Sequence[int], modes: Sequence[str], epochs: int, match_steps: bool) -> List[Cell]:
    """With match_steps every level gets the optimiser steps of the highest one (epochs x max(N) / N)."""
    top = max(augments)
    return [Cell(train, val, a, mode, math.ceil(epochs * top / a) if match_steps else epochs)
            for train, val in sets for a in augments for mode in modes]


def shard(cells: Sequence[Cell], text: Optional[str]) -> List[Cell]:
    """The cells of shard "I/N" (I = 0..N-1): every N-th cell from the I-th, so N GPUs or cluster jobs (e.g. a
    Slurm array, I = $SLURM_ARRAY_TASK_ID) split the grid without overlap; each writes only its cells' folders."""
    if not text:
        return list(cells)
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ExtremeAugError(f"--shard {text}: expected I/N, e.g. 0/4 for the first of 4 shards") from None
    if not 0 <= i < n:
        raise ExtremeAugError(f"--shard {text}: I must be 0 to N-1 (shards are numbered from 0)")
    return [c for k, c in enumerate(cells) if k % n == i]


def run_cell(cell: Cell, scans: Dict[str, Scan], out: Path, base: TrainConfig, opts: RunOptions) -> dict:
    from ..data.io import read_binary, read_scan
    from ..evaluation.metrics import evaluate, evaluate_files
    from ..evaluation.stats import mean
    from ..inference.segmenter import Segmenter
    from ..training.dataset import Case
    from ..training.train import train

    folder = out / "cells" / cell.name
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = replace(base, augment=cell.augment, epochs=cell.epochs, augment_mode=cell.mode)
    resume = (folder / "model" / "checkpoint.pt").is_file()
    result = train(cfg, [Case(scans[i].image, scans[i].label, id=i) for i in cell.train], [], folder / "model",
                   replace(opts, resume=resume, progress_file=str(folder / "progress.jsonl")))
    segmenter = Segmenter(folder / "model" / "model.onnx", opts.device)
    val = {}
    for i in cell.val:
        pred, _ = segmenter.segment(read_scan(scans[i].image))
        if base.merge_labels:
            val[i] = evaluate(pred, read_binary(scans[i].label, base.label_values))
        else:   # each structure too, by label value
            val[i] = evaluate_files(pred, scans[i].label, base.label_values)
    history = json.loads((folder / "model" / "history.json").read_text())
    means = {k: mean([m[k] for m in val.values()]) for k in ("dice", "hd95_mm", "assd_mm")}
    rows = [r for m in val.values() for r in m.get("structures", []) if r["reference_voxels"]]
    structures = {name: mean([r["dice"] for r in rows if r["name"] == name]).value
                  for name in dict.fromkeys(r["name"] for r in rows)}
    row = {**asdict(cell), "name": cell.name, "n_train": len(cell.train), "status": result.status,
           "epochs_done": round(result.epochs_done, 4), "steps": history["history"][-1]["step"],
           "seconds": history["metadata"]["training_seconds"], "device": history["metadata"]["device"],
           "width": history["metadata"]["width"], "train_dice": history["history"][-1]["train_dice"],
           "val": val, **{f"val_{k}": m.value for k, m in means.items()}, "val_structures": structures,
           **{f"val_{k}_undefined": m.undefined for k, m in means.items()},
           "curve": [{"epochs_done": h["epochs_done"], "step": h["step"], "train_dice": h["train_dice"]}
                     for h in history["history"]],
           "window_curve": history["curve"]}
    write_bytes(json.dumps(row, indent=1).encode(), done)
    return row


def run_experiment(data: str, out: str | Path, counts: Sequence[int], augments: Sequence[int],
                   modes: Sequence[str], base: TrainConfig, opts: RunOptions, val: Sequence[str] = (),
                   folds: Optional[int] = None, match_steps: bool = False, show_progress: bool = True,
                   shard_of: Optional[str] = None) -> List[dict]:
    """Every cell of the grid (scans x augmentation x mode), or those of one shard ("I/N"): `base` gives the settings
    the cells share. The report covers every finished cell in `out`, whichever shard trained it."""
    from tqdm import tqdm

    from .report import write_report

    scans, label_values = discover(data)
    if base.label_values is None:
        base = replace(base, label_values=label_values)
    by_id = {sc.id: sc for sc in scans}
    cells = shard(grid(training_sets([sc.id for sc in scans], counts, val, folds), augments, modes, base.epochs,
                       match_steps), shard_of)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "invocations.jsonl", "a", encoding="utf-8") as f:   # what each run of the command asked
        settings = {"train": base.to_dict(), "device": opts.device.value, "time_budget_min": opts.time_budget_min}
        f.write(json.dumps({"time": time.time(), "data": str(Path(data).resolve()), "settings": settings,
                            "cells": [c.name for c in cells], "match_steps": match_steps}) + "\n")
    rows = []
    with tqdm(cells, desc="experiment", unit="model", disable=not show_progress) as bar:
        for cell in bar:
            bar.set_postfix_str(cell.name)
            rows.append(run_cell(cell, by_id, out, base, opts))
            # the report covers every finished model in the folder, from this and earlier invocations
            write_report([json.loads(p.read_text()) for p in sorted(out.glob("cells/*/result.json"))], out)
    return rows
