"""The `extremeaug` command line: train, segment, evaluate, demo, experiment, and the labeling project."""
from __future__ import annotations

import argparse
import re
import sqlite3
import sys
from dataclasses import fields
from typing import List, Optional

from .. import __version__
from ..common.config import (DEMO_MINUTES, PAPER_SETUP, AugmentMode, RunOptions, TrainConfig, add_arguments,
                             from_arguments, int_list, non_negative, positive_int_list, probability)
from ..common.errors import ExtremeAugError, Interrupted
from ..common.files import WRITTEN, database_error_text, os_error_text
from ..common.output import json_text

TRAIN_FLAGS = [f.name for f in fields(TrainConfig)]
RUN_FLAGS = ("device", "time_budget_min", "checkpoint_minutes", "compile", "retry_smaller_batch")


def _cases(images, labels, what: str):
    from ..training.dataset import Case

    images, labels = images or [], labels or []
    if len(images) != len(labels):
        raise ExtremeAugError(f"{what}: {len(images)} image(s) but {len(labels)} label(s); give them in pairs")
    return [Case(i, m) for i, m in zip(images, labels)]


def cmd_train(a) -> int:
    from ..training.train import train

    cfg = from_arguments(TrainConfig, a, TRAIN_FLAGS)
    opts = from_arguments(RunOptions, a, RUN_FLAGS, resume=a.resume, progress_file=a.progress_file,
                          show_progress=not a.quiet)
    if not a.resume and not a.image:
        raise ExtremeAugError("train: give at least one --image SCAN --label MASK pair (or --resume)")
    from ..training.dataset import Case

    result = train(cfg, _cases(a.image, a.label, "train"), _cases(a.val_image, a.val_label, "validation"),
                   a.out, opts, unlabeled=[Case(path, None) for path in a.unlabeled or []])
    if result.rank:   # torchrun: rank 0 speaks for the run
        return 0
    last = result.history[-1] if result.history else {}
    print(f"{result.status}: {result.epochs_done:.2f} epoch(s), training Dice {last.get('train_dice', 0):.3f}"
          + (f", best validation Dice {result.best_val_dice:.3f}" if result.best_val_dice is not None else "")
          + _pseudo_summary(result.unlabeled)
          + f"; ONNX vs torch max abs diff {result.onnx_max_abs_diff:.1e}; model: {result.out_dir / 'model.onnx'}")
    return 0


def _pseudo_summary(unlabeled: dict) -> str:
    """`, pseudo-labels of N of M unlabeled scans (K rounds)`, or nothing without unlabeled scans."""
    if not unlabeled:
        return ""
    rounds = unlabeled["pseudo_labels"]
    used = sum(row["used"] for row in rounds[-1]["scans"]) if rounds else 0
    return (f", pseudo-labels of {used} of {len(unlabeled['unlabeled_cases'])} unlabeled scan(s) in {len(rounds)} "
            "round(s)")


def cmd_segment(a) -> int:
    from ..inference.segmenter import segment_file

    info = segment_file(a.model, a.image, a.out, a.probabilities, a.device, a.threshold, a.min_component_mm3,
                        a.keep_largest, a.seg_nrrd, a.uncertainty, a.tta, a.min_relative_size, a.slice_size,
                        smooth=a.smooth_slices)
    print(f"wrote {info['mask']}: {info['foreground_voxels']} voxels ({info['foreground_mm3']} mm3) "
          f"with {info['providers'][0]}" + (f" on {a.slice_size} x {a.slice_size} slices" if a.slice_size else "")
          + (", averaged over poses (--no-tta: one pass)" if info["tta"] else "")
          + (", each slice averaged with its neighbours (--no-smooth-slices: on its own)" if info["smooth_slices"]
             else ""))
    if len(info["structures"]) > 1:
        print("; ".join(f"{s['value']} {s['name']}: {s['voxels']} voxels" for s in info["structures"]))
    return 0


def cmd_evaluate(a) -> int:
    from ..evaluation.metrics import evaluate_files

    m = evaluate_files(a.prediction, a.reference, a.label_values)
    for warning in m["warnings"]:
        print(f"extremeaug evaluate: warning: {warning}", file=sys.stderr)
    if a.json:
        print(json_text(m))
    else:
        print(f"Dice {m['dice']:.4f}  HD95 {m['hd95_mm']:.2f} mm  ASSD {m['assd_mm']:.2f} mm  "
              f"structures found {m['found']}/{m['reference_structures']}, missed {m['missed']}, extra {m['extra']}")
        for r in m.get("structures", []):
            others = {k: v for k, v in r["predicted_as"].items() if k != r["name"]}
            print(f"  {r['value']} {r['name']}: Dice {r['dice']:.4f}  HD95 {r['hd95_mm']:.2f} mm  ASSD "
                  f"{r['assd_mm']:.2f} mm  found {r['found']}/{r['reference_structures']}"
                  + (f"  predicted as another structure: {others}" if others else ""))
        if "mean_dice" in m:
            print(f"  mean Dice over structures {m['mean_dice']:.4f} ({m['compared']})")
    return 0


def cmd_demo(a) -> int:
    from ..experiments.demo import run_demo

    s = run_demo(a.workdir, a.time_budget_min, a.augment, a.device, not a.quiet)
    for name, m in s["scores"].items():
        print(f"{name}: Dice {m['dice']:.3f}  HD95 {m['hd95_mm']:.1f} mm  ASSD {m['assd_mm']:.2f} mm  "
              f"discs found {m['found']}/{m['reference_structures']}")
    print(f"mean Dice {s['mean_dice']:.3f} (trained on one phantom); figures: {s['files']['overlay']}, "
          f"{s['files']['training_curve']}")
    return 0


def cmd_experiment(a) -> int:
    from ..experiments.grid import run_experiment

    try:
        modes = [AugmentMode.parse(m) for m in a.augment_mode.replace(",", " ").split()]
    except ExtremeAugError as e:
        raise ExtremeAugError(f"--augment-mode: {e}") from None
    if not modes:
        raise ExtremeAugError(f"--augment-mode: choose fresh, pool or both (fresh,pool), got {a.augment_mode!r}")
    if a.match_steps and a.time_budget_min:
        raise ExtremeAugError("--match-steps sets epochs per level; it cannot be combined with --time-budget")
    base = from_arguments(TrainConfig, a, EXPERIMENT_TRAIN_FLAGS, merge_labels=not a.labels,
                          **{k: v for k, v in PAPER_SETUP.items() if k not in EXPERIMENT_TRAIN_FLAGS})
    opts = from_arguments(RunOptions, a, ("device", "time_budget_min"), show_progress=False)
    rows = run_experiment(a.data, a.out, a.scans, a.augment, modes, base, opts,
                          [v for v in (a.val or "").replace(",", " ").split()], a.folds, a.match_steps, not a.quiet,
                          a.shard)
    print(f"{len(rows)} model(s); tables: {a.out}/results.md, {a.out}/results.csv; figures: {a.out}/fig_*.png")
    return 0


EXPERIMENT_TRAIN_FLAGS = ("epochs", "plane", "width", "batch_size", "lr", "loss", "slice_grid", "context", "intensity",
                          "seed", "label_values")


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2, like every other bad input; a command's one-line
    `help` is also the first line of its own --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_subparsers(self, **kwargs):
        action = super().add_subparsers(**kwargs)
        add = action.add_parser

        def add_parser(name, **options):
            if options.get("help") and "description" not in options:
                options["description"] = options["help"][0].upper() + options["help"][1:] + "."
            return add(name, **options)

        action.add_parser = add_parser
        return action


def parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole command line; given the command about to run (the first argument), without the project's
    commands unless it is one of them: importing the project package would add 0.06-0.09 s to every `segment`."""
    p = OneLineParser(prog="extremeaug", description="Train a segmentation model from one labeled scan with "
                      "extreme augmentation (Gaonkar et al.), export ONNX, segment, evaluate.")
    p.add_argument("--version", action="version", version=f"extremeaug {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from labeled scans")
    t.add_argument("--image", action="append", help="training scan (repeat with --label)")
    t.add_argument("--label", action="append", help="its mask")
    t.add_argument("--val-image", action="append", help="validation scan (repeat with --val-label)")
    t.add_argument("--val-label", action="append")
    t.add_argument("--unlabeled", nargs="+", action="extend", metavar="SCAN", help="scans without a label to learn "
                   "from too: from halfway through the run the model pseudo-labels their confident voxels, which "
                   "then train beside the labels at --pseudo-weight (the scans it used are in history.json)")
    t.add_argument("--out", required=True, help="model folder (model.onnx, model.pt, checkpoint.pt, history.json)")
    add_arguments(t, TrainConfig, TRAIN_FLAGS)
    add_arguments(t, RunOptions, RUN_FLAGS)
    t.add_argument("--progress-file", help="append JSON-lines progress here")
    t.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("segment", help="segment a scan with an exported model")
    s.add_argument("--model", required=True, metavar="MODEL.onnx", help="model.onnx written by train")
    s.add_argument("--image", required=True)
    s.add_argument("--out", required=True, help="output label map (same grid as the scan; the model's label values)")
    s.add_argument("--probabilities", help="also write, per voxel, the highest structure probability here")
    s.add_argument("--seg-nrrd", metavar="OUT.seg.nrrd", help="also write a 3D Slicer segmentation: one named, "
                   "coloured segment per structure")
    s.add_argument("--uncertainty", metavar="OUT", help="also write the voxel-wise uncertainty (0..1: 1 - the margin "
                   "between the two most likely classes) here: where to look when correcting")
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average the model over rotations and scales of the training's family "
                   "(about 5x the model time; default: the model's, on for models trained with the defaults)")
    s.add_argument("--smooth-slices", action=argparse.BooleanOptionalAction, default=None,
                   help="average each slice's probabilities with its neighbours' (a Gaussian of 2 mm full width at half "
                   "maximum: on 1 mm slices [1, 2, 1] / 4, on slices 3 mm or more apart next to nothing; default: the "
                   "model's, on for models trained with the defaults)")
    s.add_argument("--threshold", type=probability, help="default: the model's")
    s.add_argument("--min-component-mm3", type=non_negative, help="default: the model's; 0 keeps every component")
    s.add_argument("--min-relative-size", type=non_negative, metavar="F",
                   help="drop components smaller than F times their structure's largest (default: the model's; "
                   "0 keeps all)")
    s.add_argument("--keep-largest", action="store_true", default=None,
                   help="keep only the largest component of each structure (default: as trained)")
    s.add_argument("--slice-size", type=int, metavar="N", help="resample each slice to N x N pixels for the model "
                   "(default: the size it was trained on, 256); 224 takes about 0.77 of the model's time for 0.003 "
                   "less held-out Dice on average on the real scans (docs/results.md section 2); a multiple of 32 "
                   "within 0.8-1.2x the training size")
    add_arguments(s, RunOptions, ["device"])
    s.set_defaults(func=cmd_segment)

    e = sub.add_parser("evaluate", help="compare a mask with a reference")
    e.add_argument("--prediction", required=True)
    e.add_argument("--reference", required=True)
    e.add_argument("--label-values", type=int_list, help="reference labels that are foreground (default: all > 0)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train on one synthetic phantom (another validates), segment two others and score them")
    d.add_argument("--workdir", default="extremeaug-demo")
    add_arguments(d, RunOptions, ("time_budget_min", "device"), time_budget_min=DEMO_MINUTES)
    add_arguments(d, TrainConfig, ["augment"])
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    x = sub.add_parser("experiment", help="the paper's grid: training scans x augmentation level")
    x.add_argument("--data", required=True, help="folder of ID_image/ID_mask pairs, or SPIDER's images/ + masks/")
    x.add_argument("--out", required=True, help="results folder (finished models are kept; reruns skip them)")
    x.add_argument("--scans", type=positive_int_list, default=[1], help="numbers of training scans, e.g. 1,3,5,9")
    x.add_argument("--augment", type=positive_int_list, default=[5, 10, 20, 30, 40, 50], help="augmentation levels")
    x.add_argument("--augment-mode", default=AugmentMode.FRESH.value, help="fresh, pool or fresh,pool")
    add_arguments(x, RunOptions, ["time_budget_min"])
    x.add_argument("--match-steps", action="store_true",
                   help="give every level the optimiser steps of the highest (epochs x max(N) / N)")
    x.add_argument("--val", help="fixed validation scan ids (default: the scans not used for training)")
    x.add_argument("--folds", type=int, help="training sets per size when scans take turns (default: all)")
    x.add_argument("--shard", metavar="I/N", help="train only every N-th cell from the I-th (I = 0..N-1), so N GPUs "
                   "or cluster jobs split the grid; they may share --out")
    x.add_argument("--labels", action="store_true", help="learn each label value as its own structure and report "
                   "validation Dice per structure (default: their union as one, the paper's set-up)")
    add_arguments(x, RunOptions, ["device"])
    add_arguments(x, TrainConfig, EXPERIMENT_TRAIN_FLAGS, **PAPER_SETUP)   # the grid reproduces the paper
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_experiment)

    if command not in sub.choices:
        from .project import add_parser
        from .web import add_parser as add_web_parser
        add_parser(sub)
        add_web_parser(sub)
    return p


def _name(args) -> str:
    return f"{args.command} {args.project_command}" if args.command == "project" else args.command


def main(argv: Optional[List[str]] = None) -> int:
    from ..training.interrupts import watch
    watch()
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv[0] if argv else None).parse_args(argv)
    try:
        return args.func(args)
    except Interrupted as e:
        print(f"extremeaug {_name(args)}: interrupted {e}", file=sys.stderr)
        return 130
    except ExtremeAugError as e:
        print(f"extremeaug {_name(args)}: error: {e}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:   # damaged, or not writable, full or locked
        print(f"extremeaug {_name(args)}: error: {database_error_text(e, getattr(args, 'dir', None))}",
              file=sys.stderr)
        return 2
    except (OSError, RuntimeError, MemoryError) as e:   # the disk, the file system or the memory said no: one line
        from ..training.memory import out_of_memory

        if not isinstance(e, OSError) and out_of_memory(e):
            needed = re.search(r"allocate (\d+) bytes", str(e))
            print(f"extremeaug {_name(args)}: error: out of memory" + (
                f" ({int(needed.group(1)) / 2**30:.1f} GiB asked for at once)" if needed else "") +
                ("; lower --width or --batch-size" if args.command == "train" else ""), file=sys.stderr)
            return 2
        if isinstance(e, RuntimeError) and "Symlink loop" not in str(e):
            raise
        print(f"extremeaug {_name(args)}: error: {os_error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (during training, SIGINT stops cleanly)
        print(f"extremeaug {_name(args)}: interrupted; {_what_was_written()}", file=sys.stderr)
        return 130


def _what_was_written() -> str:
    """The truth about an interrupted command: which files it had published before the interrupt."""
    if not WRITTEN:
        return "nothing written"
    return f"{len(WRITTEN)} file(s) had been written, the last {WRITTEN[-1]}"


if __name__ == "__main__":
    sys.exit(main())
