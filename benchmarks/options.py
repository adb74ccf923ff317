"""Does an option earn a default (issue 32's rule)? One model per training scan, seed and option (`train` flags given as
--option NAME=FLAGS), each trained on that one scan for --minutes, every model scored on the scans it never saw
(union Dice, and predicted / reference voxels), and the paired gain of each option over the first (same training scan
and seed, over the test scans both models were scored on) with its standard error.

With --unlabeled K, the K scans that follow each training scan (in sorted order, wrapping round) are its unlabeled
scans: an option whose FLAGS hold {unlabeled} gets their paths there (`train --unlabeled`), and every model of that
training scan is scored without them, so a gain is measured on scans that were neither labeled nor used unlabeled.
The JSON is written after every model and read again at the start, so a run cut short goes on where it stopped;
--rescore scores the models of its runs again (their folders are kept, under `model`); --decide NAME=FLAGS scores
the first option's models again as `segment FLAGS` decides (--tta, --threshold ...), as runs of option NAME: a
segmentation setting paired on the very same models; --last NAME, for models trained with --average-weights, scores
each run's last weights (its checkpoint's) as option NAME: the average paired with the run it was taken from.

    python benchmarks/options.py --data ../shared/data/msd-hippocampus --train 038 039 040 --seeds 0 1 \\
        --minutes 5 --option paper="--slice-grid paper" --option fit="--slice-grid fit" --out grid.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402

from extremeaug.cli.main import TRAIN_FLAGS, parser  # noqa: E402
from extremeaug.common.config import TrainConfig, from_arguments  # noqa: E402
from extremeaug.data.io import read_binary, read_scan  # noqa: E402
from extremeaug.evaluation.metrics import evaluate, evaluate_structures  # noqa: E402
from extremeaug.inference.segmenter import Segmenter  # noqa: E402
from extremeaug.networks.export import export_onnx  # noqa: E402
from extremeaug.training.checkpoint import CHECKPOINT, HISTORY, ONNX_FILE, load, network  # noqa: E402
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


def settings(flags: str, seed: int, unlabeled: list) -> tuple:
    """The `train` command's TrainConfig and unlabeled scans for FLAGS (its own parser: flags mean what they do
    there); {unlabeled} in FLAGS stands for the training scan's unlabeled scans."""
    words = [w for w in shlex.split(flags) if w != "{unlabeled}"]
    if "{unlabeled}" in flags:
        words += ["--unlabeled", *unlabeled]
    args = parser().parse_args(["train", "--image", "i", "--label", "m", "--out", "o", "--seed", str(seed)] + words)
    return from_arguments(TrainConfig, args, TRAIN_FLAGS), [Case(p, None) for p in args.unlabeled or []]


def score(model: Path, tests: dict, segment: str = "", segmenter: Optional[Segmenter] = None) -> dict:
    """Union Dice and predicted / reference voxels per test scan as `segment` decides (`per_scan`; with SEGMENT, the
    `segment` flags that decide: --tta, --smooth-slices, --threshold ...) and, with several structures, deciding
    foreground on the probability of any structure (`per_scan_union`, data.decision) and each structure's own
    (`per_structure`). `segmenter`: the model's, prepared by the caller (another slice grid, say)."""
    a = parser().parse_args(["segment", "--model", "m", "--image", "i", "--out", "o", *shlex.split(segment)])
    decide = dict(threshold=a.threshold, min_component_mm3=a.min_component_mm3, min_relative=a.min_relative_size,
                  keep_largest=a.keep_largest, uncertainty=False)
    segmenter, rows, union, structures = segmenter or Segmenter(model, "cpu"), {}, {}, {}
    for test_id, (image, mask) in tests.items():
        scan, reference = read_scan(image), read_binary(mask)
        probs = segmenter.class_probabilities(scan, a.tta, a.smooth_slices)
        labelmap = segmenter.decide(probs, scan, **decide)[0]
        rows[test_id] = overlap(labelmap, reference)
        if len(segmenter.labels) > 1:
            union[test_id] = overlap(segmenter.decide(probs, scan, union=True, **decide)[0], reference)
            rows_of = evaluate_structures(labelmap, mask)["structures"]
            structures[test_id] = {r["name"]: ratio_and_dice(r) for r in rows_of}
    return {"slice_size": segmenter.prep.slice_size, "tta": segmenter.tta(a.tta),
            "smooth_slices": segmenter.smooth(a.smooth_slices), "per_scan": rows,
            **({"per_scan_union": union} if union else {}),
            **({"per_structure": structures} if structures else {}),
            "mean_dice": round(statistics.mean(r["dice"] for r in rows.values()), 4),
            "mean_ratio": round(statistics.mean(r["ratio"] for r in rows.values()), 4)}


def export_last(run: Path) -> Path:
    """The run's last weights (its checkpoint's `model`) as an ONNX model with the run's metadata, in RUN/last: for a
    model trained with --average-weights, the weights it would have exported without it, from the same run."""
    if (run / "last" / ONNX_FILE).exists():   # exported by an earlier call
        return run / "last"
    meta = json.loads((run / HISTORY).read_text())["metadata"]
    (run / "last").mkdir(exist_ok=True)
    export_onnx(network(meta["width"], load(run / CHECKPOINT)["model"]), run / "last" / ONNX_FILE,
                dict(meta, weights="last"))
    return run / "last"


def overlap(prediction, reference) -> dict:
    return ratio_and_dice(evaluate(prediction, reference))


def ratio_and_dice(m: dict) -> dict:
    """From `evaluate`'s metrics: Dice and predicted / reference voxels."""
    return {"dice": round(m["dice"], 4), "ratio": round(m["prediction_voxels"] / max(m["reference_voxels"], 1), 4)}


def gains(runs: list, base: str, option: str) -> dict:
    """The paired gains of `option` over `base`: per training scan and seed, the mean Dice over the test scans
    both models were scored on; their mean and standard error."""
    by_key = {(r["train"], r["seed"], r["option"]): r["per_scan"] for r in runs}
    diffs = []
    for (t, s, o), theirs in sorted(by_key.items()):
        ours = by_key.get((t, s, option))
        if o != base or ours is None:
            continue
        common = sorted(set(theirs) & set(ours))
        diffs.append(statistics.mean(ours[k]["dice"] - theirs[k]["dice"] for k in common))
    if not diffs:
        return {}
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"pairs": len(diffs), "mean_gain": round(statistics.mean(diffs), 4),
            "se": None if se is None else round(se, 4), "gains": [round(d, 4) for d in diffs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--train", nargs="+", required=True, help="ids of the training scans, one model each")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--minutes", type=float, help="each model's time budget (default: none; the flags' --epochs end "
                   "it, so a busy machine changes the time, not the result)")
    p.add_argument("--option", action="append", required=True, metavar="NAME=FLAGS")
    p.add_argument("--unlabeled", type=int, default=0, metavar="K", help="unlabeled scans per training scan")
    p.add_argument("--tests", choices=["others", "held-out"], default="others", help="score each model on every scan "
                   "but its own (others: leave-one-out), or only on scans no model of the run trains on")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rescore", action="store_true", help="score the models of --out's runs again, then stop")
    p.add_argument("--decide", action="append", default=[], metavar="NAME=SEGMENT_FLAGS",
                   help="score the models of the first option's runs in --out again as `segment SEGMENT_FLAGS` decides "
                   "(--tta, --threshold T ...), each as a run of option NAME paired with its own model, then stop")
    p.add_argument("--last", metavar="NAME", help="the first option's models were trained with --average-weights: "
                   "score their last weights (the same runs' checkpoints) as runs of option NAME, each paired with its "
                   "own average, also as every --decide decides, then stop")
    a = p.parse_args()
    scans = pairs(a.data)
    missing = [t for t in a.train if t not in scans]
    if missing:
        sys.exit(f"no scan {', '.join(missing)} in {a.data} (there are {', '.join(scans)})")
    options = [o.split("=", 1) for o in a.option]
    report = json.loads(a.out.read_text()) if a.out.exists() else {"runs": []}
    report.update({"machine": f"{platform.node()} {torch.get_num_threads()} threads", "data": str(a.data),
                   "minutes": a.minutes, "options": dict(options), "unlabeled_per_scan": a.unlabeled})
    if a.rescore:
        for run in report["runs"]:
            run.update(score(Path(run["model"]) / "model.onnx", {k: scans[k] for k in run["per_scan"]},
                             run.get("segment", "")))
        report["gains"] = {n: gains(report["runs"], options[0][0], n) for n, _ in options[1:]}
        emit(report, a.out)
        return
    done = {(r["train"], r["seed"], r["option"]) for r in report["runs"]}
    if a.decide or a.last:
        decisions = [d.split("=", 1) for d in a.decide]
        for run in [r for r in report["runs"] if r["option"] == options[0][0]]:
            scored = [(name, Path(run["model"]), flags) for name, flags in decisions]
            if a.last:
                last = export_last(Path(run["model"]))
                scored += [(a.last, last, "")] + [(f"{a.last}+{name}", last, flags) for name, flags in decisions]
            for name, model, flags in scored:
                if (run["train"], run["seed"], name) not in done:
                    tests = {k: scans[k] for k in run["per_scan"]}
                    report["runs"].append({**{k: v for k, v in run.items() if not k.startswith("per_")},
                                           "option": name, "segment": flags, "model": str(model),
                                           **score(model / "model.onnx", tests, flags)})
                    emit(report, a.out)
        report["gains"] = {n: gains(report["runs"], options[0][0], n)
                           for n in sorted({r["option"] for r in report["runs"]} - {options[0][0]})}
        emit(report, a.out)
        return
    work = Path(tempfile.mkdtemp(prefix="extremeaug-options-"))
    ids = sorted(scans)
    for seed in a.seeds:
        for train_id in a.train:
            others = [i for i in ids[ids.index(train_id) + 1:] + ids[:ids.index(train_id)]
                      if a.tests == "others" or i not in a.train]
            unlabeled, tests = others[:a.unlabeled], {i: scans[i] for i in others[a.unlabeled:]}
            for name, flags in options:
                if (train_id, seed, name) in done:
                    continue
                cfg, extra = settings(flags, seed, [scans[i][0] for i in unlabeled])
                out = work / f"{train_id}-{seed}-{name}"
                result = train(cfg, [Case(*scans[train_id])], [], out, RunOptions(
                    device="cpu", show_progress=False, time_budget_min=a.minutes), unlabeled=extra)
                last = result.history[-1] if result.history else {}
                report["runs"].append({"train": train_id, "seed": seed, "option": name, "unlabeled": unlabeled,
                                       "steps": last.get("step"), "train_dice": last.get("train_dice"),
                                       "seconds": last.get("elapsed_s"), "model": str(out),
                                       "pseudo_labels": result.unlabeled.get("pseudo_labels"),
                                       **score(out / "model.onnx", tests)})
                report["gains"] = {n: gains(report["runs"], options[0][0], n) for n, _ in options[1:]}
                emit(report, a.out)


if __name__ == "__main__":
    main()
