"""The end of a run: the final weights (the last, the best validated or their average over the run's second half),
the ONNX model with its metadata (what segmentation needs, and how the model was trained), and history.json."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .. import __version__
from ..common.files import write_bytes
from ..networks.export import export_onnx
from .checkpoint import HISTORY, ONNX_FILE, WEIGHTS, load, save


@dataclass
class TrainResult:
    status: str                      # finished, time_budget, stopped, max_steps
    out_dir: Path
    epochs_done: float
    history: list = field(default_factory=list)
    best_val_dice: Optional[float] = None
    onnx_max_abs_diff: float = 0.0
    curve: list = field(default_factory=list)
    val_curve: list = field(default_factory=list)
    rank: int = 0                    # under torchrun, rank 0 alone writes the model
    unlabeled: dict = field(default_factory=dict)   # with unlabeled scans: SelfTraining.summary()


def choose_weights(t) -> dict:
    """Load the weights to export into `t.net` and say which they are: the average of the run's second half
    (`--average-weights`) and the best validated weights compete on the validation scans (without any, the average
    is exported); without an average, the best validated, else the last."""
    chosen = {"weights": "last"}
    if t.average is not None and t.average.count:
        t.net.load_state_dict(t.average.weights())
        chosen = {"weights": "average", "averaged_steps": t.average.count, "averaged_val_dice": t.validate()}
    if t.best is not None and (t.out / "best.pt").exists() and (
            chosen["weights"] == "last" or chosen["averaged_val_dice"] < t.best["val_dice"]):
        t.net.load_state_dict(load(t.out / "best.pt"))
        chosen["weights"] = "best"
    return chosen


def publish(trainer, status: str, elapsed: float) -> TrainResult:
    """Write the model of `trainer` (a `train.Trainer` at its end) and say what was written."""
    t, cfg = trainer, trainer.cfg
    chosen = choose_weights(t)
    weights = {k: v.detach().cpu() for k, v in t.net.state_dict().items()}
    done = t.step / t.steps_per_epoch
    unlabeled = t.selftraining.summary() if t.selftraining else {}
    meta = {"engine_version": __version__, "width": cfg.width, "preprocessing": t.prep.to_dict(),
            "threshold": cfg.threshold, "union": cfg.union, "tta": cfg.tta, "smooth_slices": cfg.smooth_slices,
            "min_component_mm3": cfg.min_component_mm3,
            "keep_largest": cfg.keep_largest, "min_relative_size": cfg.min_relative_size,
            "labels": [lab.to_dict() for lab in t.labels], "merge_labels": cfg.merge_labels,
            "training_cases": [c.name for c in t.train_cases],
            "validation_cases": [c.name for c in t.val_cases],
            "augment": cfg.augment, "augmentation": cfg.augmentation,
            "intensity": cfg.intensity, "scale_each_axis": cfg.scale_each_axis, "elastic": cfg.elastic,
            "scale_range": list(cfg.scale_range), "context": cfg.context,
            "average_weights": cfg.average_weights, **chosen,
            "augment_mode": cfg.augment_mode, "epochs_planned": cfg.epochs,
            "epochs_done": round(done, 4), "status": status, "loss": cfg.loss, "seed": cfg.seed,
            "label_values": cfg.label_values, "best_val_dice": t.best["val_dice"] if t.best else None,
            "last_epoch": t.history[-1] if t.history else None,
            "training_seconds": round(t.elapsed_before + elapsed, 1), "device": str(t.device),
            "device_kind": torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else "cpu",
            "processes": t.world.size, "global_batch": cfg.batch_size,   # how it was trained
            **({"pseudo_rounds": cfg.pseudo_rounds, "pseudo_weight": cfg.pseudo_weight,
                "pseudo_margin_mm": cfg.pseudo_margin_mm, **unlabeled}
               if unlabeled else {})}
    save({"state_dict": weights, "width": cfg.width, "metadata_json": json.dumps(meta)}, t.out / WEIGHTS)
    diff = export_onnx(t.net, t.out / ONNX_FILE, meta)
    write_bytes(json.dumps({"metadata": meta, "history": t.history, "curve": t.curve,
                            "val_curve": t.val_curve, "onnx_max_abs_diff": diff}, indent=1).encode(),
                t.out / HISTORY)
    return TrainResult(status, t.out, done, t.history, t.best["val_dice"] if t.best else None, diff, t.curve,
                       t.val_curve, unlabeled=unlabeled)
