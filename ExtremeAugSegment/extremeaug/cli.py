"""The `extremeaug` command line: train, segment, evaluate, demo."""
from __future__ import annotations

import argparse
import json
import math
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
                      augmentation=not a.no_augmentation, threshold=a.threshold,
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
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ExtremeAugError as e:
        print(f"extremeaug {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"extremeaug {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (during training, SIGINT stops cleanly)
        print(f"extremeaug {args.command}: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
