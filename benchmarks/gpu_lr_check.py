"""The learning rate and the width at the CUDA batch size, checked on real held-out scans (issue 14: batch 256
is the CUDA default, so its learning rate must be re-checked, not assumed from batch 16; and width 16 must
beat width 8 at the same GPU time to stay the CUDA default, since width 8 segments twice as fast on a laptop).

Each --width and --lr pair trains one binary model on --image/--label (the paper's set-up: 1 scan, --augment
x, --epochs, or as many as --minutes allows) and segments every --test scan with onnxruntime; the JSON is
written after every model, so a stage cut short by the GPU machine's time limit keeps the ones before it.

    python benchmarks/gpu_lr_check.py --image IMG --label MASK --test IMG2 MASK2 --test IMG3 MASK3 \\
        --lr 3e-3 1e-2 --epochs 12 --out lr.json
    python benchmarks/gpu_lr_check.py ... --width 8 16 --minutes 1.5 --epochs 1000 --out width.json
    python benchmarks/gpu_lr_check.py ... --lr 3e-3 --compile on off --epochs 8 --out fused.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402

from extremeaug.common.config import Compile  # noqa: E402
from extremeaug.data.io import read_binary, read_scan  # noqa: E402
from extremeaug.evaluation.metrics import evaluate  # noqa: E402
from extremeaug.inference.segmenter import Segmenter  # noqa: E402
from extremeaug.training.dataset import Case  # noqa: E402
from extremeaug.training.train import RunOptions, TrainConfig, train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--test", nargs=2, action="append", metavar=("IMAGE", "MASK"), required=True)
    p.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-2])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--augment", type=int, default=50)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--width", type=int, nargs="+", default=[None], help="default: the device's")
    p.add_argument("--minutes", type=float, help="train each model this long (equal time), not --epochs")
    p.add_argument("--compile", nargs="+", default=["auto"], choices=Compile.values(),
                   help="one model per choice: `on off` compares the compiled step with the eager one")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="extremeaug-lr-"))
    tests = [(Path(i).name, read_scan(i), read_binary(m)) for i, m in a.test]
    report = {"image": a.image, "augment": a.augment, "epochs": a.epochs, "minutes": a.minutes, "runs": []}
    for width, lr, compiled in ((w, lr, c) for w in a.width for lr in a.lr for c in a.compile):
        t0, out = time.perf_counter(), work / f"w{width}-lr{lr}-{compiled}"
        result = train(TrainConfig(augment=a.augment, epochs=a.epochs, batch_size=a.batch_size, lr=lr, width=width,
                                   merge_labels=True), [Case(a.image, a.label)], [], out,
                       RunOptions(device=a.device, show_progress=False, time_budget_min=a.minutes, compile=compiled))
        wall = round(time.perf_counter() - t0, 1)
        last = result.history[-1] if result.history else {}   # a budget shorter than one epoch leaves none
        segmenter = Segmenter(out / "model.onnx", "cpu")
        run = {"width": segmenter.metadata["width"], "lr": lr, "compile": compiled, "wall_s": wall,
               "status": result.status, "steps": last.get("step"), "epochs_done": result.epochs_done, "train_dice": last.get("train_dice"),
               "patches_per_s_by_epoch": [r["patches_per_s"] for r in result.history], "dice": {}, "segment_s": {}}
        for name, scan, ref in tests:
            t1 = time.perf_counter()
            mask = segmenter.segment(scan)[0]
            run["segment_s"][name] = round(time.perf_counter() - t1, 2)
            run["dice"][name] = round(evaluate(mask, ref)["dice"], 4)
        run["mean_dice"] = round(sum(run["dice"].values()) / len(tests), 4)
        report["runs"].append(run)
        emit(report, a.out)


if __name__ == "__main__":
    main()
