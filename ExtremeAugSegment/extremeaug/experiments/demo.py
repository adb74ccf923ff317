"""The built-in default: train on ONE synthetic phantom, segment others, report Dice, draw figures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..common.config import DEMO_MINUTES, RUN_DEFAULTS, TRAIN_DEFAULTS
from ..common.errors import ExtremeAugError
from ..common.files import write_bytes
from ..data.io import read_binary, read_scan, write_image
from ..data.phantom import write_phantoms
from ..evaluation.metrics import evaluate
from ..inference.segmenter import Segmenter
from ..training.dataset import Case
from ..training.train import RunOptions, TrainConfig, train
from .figures import overlay_png, training_curve_png

DEMO_PHANTOMS = 4
MARKER = ".extremeaug-demo"   # in a folder the demo made: the only kind whose files it replaces


def _own_workdir(work: Path) -> Path:
    """The demo writes (and replaces what it wrote before) only in a folder that is new, empty, or one it made
    itself: it never deletes or overwrites a user's files."""
    if work.exists() and not work.is_dir():
        raise ExtremeAugError(f"--workdir {work}: is a file; name a new or empty folder")
    if work.is_dir() and not (work / MARKER).is_file() and any(work.iterdir()):
        raise ExtremeAugError(f"--workdir {work}: holds files the demo did not write; name a new or empty folder "
                              "(the demo replaces its own output there)")
    work.mkdir(parents=True, exist_ok=True)
    write_bytes(b"a folder of extremeaug demo output; a new demo run here replaces it\n", work / MARKER)
    return work


def run_demo(workdir: str | Path = "extremeaug-demo", time_budget_min: float = DEMO_MINUTES,
             augment: int = TRAIN_DEFAULTS.augment, device: str = RUN_DEFAULTS.device, show_progress: bool = True,
             epochs: int = TRAIN_DEFAULTS.epochs, seed: int = TRAIN_DEFAULTS.seed) -> dict:
    """Phantom 0 trains, phantom 1 validates (best epoch kept), phantoms 2.. are segmented and scored."""
    work = _own_workdir(Path(workdir))
    pairs = write_phantoms(work / "data", DEMO_PHANTOMS)
    model_dir = work / "model"
    shutil.rmtree(model_dir, ignore_errors=True)  # the demo's own output from an earlier run (checked above)
    (work / "progress.jsonl").unlink(missing_ok=True)
    result = train(TrainConfig(augment=augment, epochs=epochs, seed=seed),
                   [Case(str(pairs[0][0]), str(pairs[0][1]))], [Case(str(pairs[1][0]), str(pairs[1][1]))],
                   model_dir, RunOptions(device=device, time_budget_min=time_budget_min, show_progress=show_progress,
                                         progress_file=str(work / "progress.jsonl"),
                                         checkpoint_minutes=time_budget_min / 5))   # validate 5 times
    training_curve_png(result.history, result.curve, work / "training_curve.png",
                       f"trained on phantom 0, {augment}x on-the-fly augmentation; validation on phantom 1",
                       result.val_curve)
    segmenter = Segmenter(model_dir / "model.onnx", device)
    scores = {}
    for i, (image, mask) in enumerate(pairs[2:], start=2):
        scan, ref = read_scan(image), read_binary(mask)
        pred, _ = segmenter.segment(scan)
        write_image(pred, work / f"phantom_{i}_prediction.nii.gz")
        scores[f"phantom_{i}"] = evaluate(pred, ref)
        if i == 2:
            overlay_png(scan, pred, work / "overlay.png", ref, segmenter.prep.plane,
                        f"phantom {i}: Dice {scores[f'phantom_{i}']['dice']:.3f} (model trained on phantom 0)")
    summary = {"training": {"status": result.status, "epochs_done": result.epochs_done,
                            "best_val_dice": result.best_val_dice}, "scores": scores,
               "mean_dice": sum(s["dice"] for s in scores.values()) / len(scores),
               "files": {"model": str(model_dir / "model.onnx"), "overlay": str(work / "overlay.png"),
                         "training_curve": str(work / "training_curve.png")}}
    write_bytes(json.dumps(summary, indent=1).encode(), work / "summary.json")
    return summary
