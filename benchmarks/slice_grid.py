"""Does an option earn a default (issue 32's rule)? One model per training scan, seed and --slice-grid (or any
other `train` choices given as --option NAME=FLAGS), each trained for --minutes on one scan, all scored on the
same held-out scans (every scan of --data that no run trained on): mean union Dice, predicted/reference voxels,
and the paired gain of each option over the first (same training scan and seed) with its standard error.
The JSON is written after every model, so a run cut short keeps what it has.

    python benchmarks/slice_grid.py --data ../shared/data/msd-hippocampus --train 038 039 040 --seeds 0 \\
        --minutes 5 --option paper="--slice-grid paper" --option fit="--slice-grid fit" --out grid.json
"""
from __future__ import annotations

import argparse
import math
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402

from extremeaug.cli.main import TRAIN_FLAGS, parser  # noqa: E402
from extremeaug.common.config import TrainConfig, from_arguments  # noqa: E402
from extremeaug.data.io import read_binary, read_scan  # noqa: E402
from extremeaug.evaluation.metrics import evaluate  # noqa: E402
from extremeaug.inference.segmenter import Segmenter  # noqa: E402
from extremeaug.training.dataset import Case  # noqa: E402
from extremeaug.training.train import RunOptions, train  # noqa: E402


def pairs(data: Path) -> dict:
    """{id: (image, mask)}: files NAME_image.* beside NAME_mask.*, the id being NAME's last `_` part."""
    out = {}
    for image in sorted(data.glob("*_image.nii*")):
        mask = image.with_name(image.name.replace("_image", "_mask"))
        if mask.exists():
            out[image.name.split("_image")[0].rsplit("_", 1)[-1]] = (str(image), str(mask))
    return out


def config(flags: str, seed: int) -> TrainConfig:
    """The `train` command's TrainConfig for FLAGS (its own parser, so flags mean what they do there)."""
    args = parser().parse_args(["train", "--image", "i", "--label", "m", "--out", "o", "--seed", str(seed)]
                               + shlex.split(flags))
    return from_arguments(TrainConfig, args, TRAIN_FLAGS)


def score(model: Path, tests: dict) -> dict:
    segmenter, rows = Segmenter(model, "cpu"), {}
    for test_id, (image, mask) in tests.items():
        prediction = segmenter.segment(read_scan(image))[0]
        m = evaluate(prediction, read_binary(mask))
        rows[test_id] = {"dice": round(m["dice"], 4), "ratio": round(m["prediction_voxels"] /
                                                                     max(m["reference_voxels"], 1), 4)}
    return {"slice_size": segmenter.prep.slice_size, "per_scan": rows,
            "mean_dice": round(statistics.mean(r["dice"] for r in rows.values()), 4),
            "mean_ratio": round(statistics.mean(r["ratio"] for r in rows.values()), 4)}


def gains(runs: list, options: list) -> dict:
    """Per option after the first: paired gains in mean Dice (same training scan and seed), mean and SE."""
    by_key = {(r["train"], r["seed"], r["option"]): r["mean_dice"] for r in runs}
    out = {}
    for option in options[1:]:
        diffs = [by_key[(t, s, option)] - by_key[(t, s, options[0])] for (t, s, o) in by_key
                 if o == options[0] and (t, s, option) in by_key]
        if diffs:
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
            out[option] = {"pairs": len(diffs), "mean_gain": round(statistics.mean(diffs), 4),
                           "se": None if se is None else round(se, 4), "gains": [round(d, 4) for d in diffs]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--train", nargs="+", required=True, help="ids of the training scans, one model each")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--option", action="append", required=True, metavar="NAME=FLAGS")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args()
    scans = pairs(a.data)
    missing = [t for t in a.train if t not in scans]
    if missing:
        sys.exit(f"no scan {', '.join(missing)} in {a.data} (there are {', '.join(scans)})")
    tests = {k: v for k, v in scans.items() if k not in a.train}
    options = [o.split("=", 1) for o in a.option]
    work = Path(tempfile.mkdtemp(prefix="extremeaug-options-"))
    report = {"machine": f"{platform.node()} {torch.get_num_threads()} threads", "data": str(a.data),
              "minutes": a.minutes, "tests": sorted(tests), "options": dict(options), "runs": []}
    for seed in a.seeds:
        for train_id in a.train:
            for name, flags in options:
                out = work / f"{train_id}-{seed}-{name}"
                result = train(config(flags, seed), [Case(*scans[train_id])], [], out,
                               RunOptions(device="cpu", show_progress=False, time_budget_min=a.minutes))
                last = result.history[-1] if result.history else {}
                report["runs"].append({"train": train_id, "seed": seed, "option": name, "steps": last.get("step"),
                                       "train_dice": last.get("train_dice"), **score(out / "model.onnx", tests)})
                report["gains"] = gains(report["runs"], [n for n, _ in options])
                emit(report, a.out)


if __name__ == "__main__":
    main()
