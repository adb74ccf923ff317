"""The `extremeaug` command line: train, segment, evaluate, demo, experiment, and the labeling project."""
from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from typing import List, Optional

from . import __version__
from .errors import ExtremeAugError


def _labels(text: Optional[str]) -> Optional[List[int]]:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ExtremeAugError(f"--label-values: expected integers such as 1,2,3, got {text!r}") from None


def _cases(images, labels, what: str):
    from .dataset import Case

    images, labels = images or [], labels or []
    if len(images) != len(labels):
        raise ExtremeAugError(f"{what}: {len(images)} image(s) but {len(labels)} label(s); give them in pairs")
    return [Case(i, m) for i, m in zip(images, labels)]


def cmd_train(a) -> int:
    from .train import RunOptions, TrainConfig, train

    cfg = TrainConfig(augment=a.augment, epochs=a.epochs, batch_size=a.batch_size, width=a.width, lr=a.lr,
                      loss=a.loss, plane=a.plane, seed=a.seed, label_values=_labels(a.label_values),
                      augmentation=not a.no_augmentation, augment_mode=a.augment_mode, threshold=a.threshold,
                      min_component_mm3=a.min_component_mm3)
    opts = RunOptions(device=a.device, time_budget_min=a.time_budget, resume=a.resume,
                      progress_file=a.progress_file, show_progress=not a.quiet,
                      checkpoint_minutes=a.checkpoint_minutes)
    if not a.resume and not a.image:
        raise ExtremeAugError("train: give at least one --image SCAN --label MASK pair (or --resume)")
    result = train(cfg, _cases(a.image, a.label, "train"), _cases(a.val_image, a.val_label, "validation"),
                   a.out, opts)
    last = result.history[-1] if result.history else {}
    print(f"{result.status}: {result.epochs_done:.2f} epoch(s), training Dice {last.get('train_dice', 0):.3f}"
          + (f", best validation Dice {result.best_val_dice:.3f}" if result.best_val_dice is not None else "")
          + f"; ONNX vs torch max abs diff {result.onnx_max_abs_diff:.1e}; model: {result.out_dir / 'model.onnx'}")
    return 0


def cmd_segment(a) -> int:
    from .infer import segment_file

    info = segment_file(a.model, a.image, a.out, a.probabilities, a.device, a.threshold, a.min_component_mm3)
    print(f"wrote {info['mask']}: {info['foreground_voxels']} voxels ({info['foreground_mm3']} mm3) "
          f"with {info['providers'][0]}")
    return 0


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate_files

    m = evaluate_files(a.prediction, a.reference, _labels(a.label_values))
    if a.json:
        print(json.dumps(_finite(m)))
    else:
        print(f"Dice {m['dice']:.4f}  HD95 {m['hd95_mm']:.2f} mm  ASSD {m['assd_mm']:.2f} mm  "
              f"structures found {m['found']}/{m['reference_structures']}, missed {m['missed']}, extra {m['extra']}")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    s = run_demo(a.workdir, a.time_budget, a.augment, a.device, not a.quiet)
    for name, m in s["scores"].items():
        print(f"{name}: Dice {m['dice']:.3f}  HD95 {m['hd95_mm']:.1f} mm  ASSD {m['assd_mm']:.2f} mm  "
              f"discs found {m['found']}/{m['reference_structures']}")
    print(f"mean Dice {s['mean_dice']:.3f} (trained on one phantom); figures: {s['files']['overlay']}, "
          f"{s['files']['training_curve']}")
    return 0


def _ints(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ExtremeAugError(f"{flag}: expected integers such as 1,2,3, got {text!r}") from None
    if not values or min(values) < 1:
        raise ExtremeAugError(f"{flag}: expected positive integers, got {text!r}")
    return values


def cmd_experiment(a) -> int:
    from .experiment import Settings, run_experiment

    modes = [m for m in a.augment_mode.replace(",", " ").split()]
    if not modes or set(modes) - {"fresh", "pool"}:
        raise ExtremeAugError(f"--augment-mode: choose fresh, pool or both (fresh,pool), got {a.augment_mode!r}")
    if a.match_steps and a.time_budget:
        raise ExtremeAugError("--match-steps sets epochs per level; it cannot be combined with --time-budget")
    s = Settings(epochs=a.epochs, time_budget_min=a.time_budget, plane=a.plane, device=a.device, width=a.width,
                 batch_size=a.batch_size, seed=a.seed, label_values=_labels(a.label_values))
    rows = run_experiment(a.data, a.out, _ints(a.scans, "--scans"), _ints(a.augment, "--augment"), modes, s,
                          [v for v in (a.val or "").replace(",", " ").split()], a.folds, a.match_steps, not a.quiet)
    print(f"{len(rows)} model(s); tables: {a.out}/results.md, {a.out}/results.csv; figures: {a.out}/fig_*.png")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extremeaug", description="Train a segmentation model from one labeled scan "
                                "with extreme augmentation (Gaonkar et al.), export ONNX, segment, evaluate.")
    p.add_argument("--version", action="version", version=f"extremeaug {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from labeled scans")
    t.add_argument("--image", action="append", help="training scan (repeat with --label)")
    t.add_argument("--label", action="append", help="its mask")
    t.add_argument("--val-image", action="append", help="validation scan (repeat with --val-label)")
    t.add_argument("--val-label", action="append")
    t.add_argument("--out", required=True, help="model folder (model.onnx, model.pt, checkpoint.pt, history.json)")
    t.add_argument("--augment", type=int, default=50, help="augmented presentations of every patch per epoch")
    t.add_argument("--augment-mode", default="fresh", choices=["fresh", "pool"],
                   help="fresh: a new random transform at every presentation; pool: the paper's N fixed "
                        "transforms per patch, reused every epoch (regenerated from the seed, never stored)")
    t.add_argument("--no-augmentation", action="store_true", help="present patches untransformed (baseline)")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop gracefully after this long")
    t.add_argument("--plane", default="auto", choices=["auto", "axial", "sagittal", "coronal"])
    t.add_argument("--width", type=int, help="filters of the first stage (default 16 on CUDA, 8 on CPU)")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (cosine decay to 5 %%)")
    t.add_argument("--loss", default="dice", choices=["dice", "dice+bce"])
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--label-values", help="mask labels that are foreground, e.g. 1,2 (default: all > 0)")
    t.add_argument("--threshold", type=float, default=0.5, help="probability threshold stored with the model")
    t.add_argument("--min-component-mm3", type=float, default=100.0,
                   help="connected components smaller than this are removed at segmentation (0 keeps all)")
    t.add_argument("--progress-file", help="append JSON-lines progress here")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0,
                   help="checkpoint (and, with validation scans, validate) this often within an epoch")
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("segment", help="segment a scan with an exported model")
    s.add_argument("--model", required=True, help="model.onnx written by train")
    s.add_argument("--image", required=True)
    s.add_argument("--out", required=True, help="output mask (same grid as the scan)")
    s.add_argument("--probabilities", help="also write the probability map here")
    s.add_argument("--threshold", type=float, help="default: the model's")
    s.add_argument("--min-component-mm3", type=float, help="default: the model's; 0 keeps every component")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.set_defaults(func=cmd_segment)

    e = sub.add_parser("evaluate", help="compare a mask with a reference")
    e.add_argument("--prediction", required=True)
    e.add_argument("--reference", required=True)
    e.add_argument("--label-values", help="reference labels that are foreground (default: all > 0)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train on one synthetic phantom, segment three others")
    d.add_argument("--workdir", default="extremeaug-demo")
    d.add_argument("--time-budget", type=float, default=2.5, metavar="MINUTES")
    d.add_argument("--augment", type=int, default=50)
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    x = sub.add_parser("experiment", help="the paper's grid: training scans x augmentation level")
    x.add_argument("--data", required=True, help="folder of ID_image/ID_mask pairs, or SPIDER's images/ + masks/")
    x.add_argument("--out", required=True, help="results folder (finished models are kept; reruns skip them)")
    x.add_argument("--scans", default="1", help="numbers of training scans, e.g. 1,3,5,9")
    x.add_argument("--augment", default="5,10,20,30,40,50", help="augmentation levels")
    x.add_argument("--augment-mode", default="fresh", help="fresh, pool or fresh,pool")
    x.add_argument("--epochs", type=int, default=100)
    x.add_argument("--time-budget", type=float, metavar="MINUTES", help="per model")
    x.add_argument("--match-steps", action="store_true",
                   help="give every level the optimiser steps of the highest (epochs x max(N) / N)")
    x.add_argument("--val", help="fixed validation scan ids (default: the scans not used for training)")
    x.add_argument("--folds", type=int, help="training sets per size when scans take turns (default: all)")
    x.add_argument("--plane", default="auto", choices=["auto", "axial", "sagittal", "coronal"])
    x.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    x.add_argument("--width", type=int)
    x.add_argument("--batch-size", type=int, default=16)
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--label-values", help="foreground labels (SPIDER layout: discs, >= 201, by default)")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_experiment)

    from .project.cli import add_parser
    add_parser(sub)
    return p


def _name(args) -> str:
    return f"{args.command} {args.project_command}" if args.command == "project" else args.command


def main(argv: Optional[List[str]] = None) -> int:
    from .interrupts import watch
    watch()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ExtremeAugError as e:
        print(f"extremeaug {_name(args)}: error: {e}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:   # a project database damaged after it was opened
        print(f"extremeaug {_name(args)}: error: the project database is damaged ({e})", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"extremeaug {_name(args)}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (during training, SIGINT stops cleanly)
        print(f"extremeaug {_name(args)}: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
