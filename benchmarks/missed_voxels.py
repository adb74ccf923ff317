"""Where do a model's missing voxels go? For every model of a `benchmarks/options.py` report and every scan it was
scored on, the reference's voxels the model misses are split by what its probabilities say there:

    near       the highest structure probability is 0.1 to 0.5: a lower threshold or a loss that counts misses
               more (Tversky) can reach them
    split      under 0.5 for every structure, but the probability of any structure, 1 - prod(1 - p_k), passes 0.5:
               two neighbouring structures share them (`data.decision.label_array(union=True)` keeps them)
    confident  under 0.1: the model does not see them at all
    cleaned    the probability passes, but the clean-up (small components) removed them

all as shares of the reference's voxels, beside predicted / reference, per option (means over models and scans).

    python benchmarks/missed_voxels.py --data ../shared/data/ivd-mr-t2-lumbar --report bench-out/discs.json \\
        [--option fit] [--out bench-out/missed_discs.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402
from options import pairs  # noqa: E402

from extremeaug.data.io import read_binary, read_scan  # noqa: E402
from extremeaug.inference.segmenter import Segmenter  # noqa: E402

KINDS = ("near", "split", "confident", "cleaned")


def where(model: Path, image: str, mask: str) -> dict:
    segmenter = Segmenter(model, "cpu")
    scan = read_scan(image)
    probs = segmenter.class_probabilities(scan)
    decided = sitk.GetArrayFromImage(segmenter.decide(probs, scan, uncertainty=False)[0]) > 0
    reference = sitk.GetArrayFromImage(read_binary(mask)) > 0
    top, anyone = probs.max(axis=0), 1 - np.prod(1 - probs, axis=0)
    missed, n = reference & ~decided, max(int(reference.sum()), 1)
    threshold = segmenter.metadata.get("threshold", 0.5)
    shares = {"near": missed & (top >= 0.1) & (top <= threshold) & (anyone <= threshold),
              "split": missed & (top <= threshold) & (anyone > threshold),
              "confident": missed & (top < 0.1) & (anyone <= threshold),
              "cleaned": missed & (top > threshold)}
    return {"ratio": round(decided.sum() / n, 4), "missed": round(missed.sum() / n, 4),
            **{k: round(int(v.sum()) / n, 4) for k, v in shares.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--report", required=True, type=Path, help="a benchmarks/options.py JSON (its runs' model folders)")
    p.add_argument("--option", action="append", help="only these options (default: all)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    scans, report = pairs(a.data), json.loads(a.report.read_text())
    rows = []
    for run in report["runs"]:
        if a.option and run["option"] not in a.option:
            continue
        for test in run["per_scan"]:
            rows.append({"option": run["option"], "train": run["train"], "seed": run["seed"], "test": test,
                         **where(Path(run["model"]) / "model.onnx", *scans[test])})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for option in sorted({r["option"] for r in rows}):
        mine = [r for r in rows if r["option"] == option]
        summary[option] = {k: round(statistics.mean(r[k] for r in mine), 4) for k in ("ratio", "missed") + KINDS}
        summary[option]["scans"] = len(mine)
    print(json.dumps(summary, indent=1))
    if a.out:
        emit({"report": str(a.report), "rows": rows, "summary": summary}, a.out)


if __name__ == "__main__":
    main()
