"""Leave-one-out table (docs/results.md section 11): every model of `extremeaug experiment --scans N` folders
(N training scans, each choice in turn) segments the scans it never saw, under several segmentation settings.

Usage: python benchmarks/loo.py --data DATA_DIR --out bench-out/loo/table VARIANT_DIR [VARIANT_DIR ...]

Per model, held-out scan and setting it records Dice, Dice on the reference's labeled extent (predicted
components touching no reference disc removed), HD95, ASSD, voxels predicted and in the reference, discs
found, extra components, the uncertainty map's AUROC and captured-error share, and the segmentation seconds.
Results are cached per model and setting (`<out>/rows/*.json`), so a rerun only adds what is new.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import SimpleITK as sitk

from extremeaug.data.io import read_binary, read_scan
from extremeaug.evaluation.metrics import evaluate, uncertainty_scores
from extremeaug.experiments.grid import discover
from extremeaug.inference.segmenter import Segmenter

# name: (test-time augmentation, decision settings, slice size or None for the trained one); the model runs once
# per TTA mode and slice size, the rest is decided from the same probabilities. relative: keep components >= this
# share of the largest; threshold: instead of 0.5; size-N: slices resampled to N x N instead of the trained 256
# (`segment --slice-size`). The threshold-* settings also give an upper bound: the best threshold per model,
# picked on its held-out scans.
SETTINGS = {"plain": (False, {}, None), "relative-0.2": (False, {"min_relative": 0.2}, None),
            "threshold-0.4": (False, {"threshold": 0.4}, None), "threshold-0.3": (False, {"threshold": 0.3}, None),
            "tta": (True, {}, None), "tta+relative-0.2": (True, {"min_relative": 0.2}, None),
            "tta+threshold-0.4": (True, {"threshold": 0.4}, None),
            "threshold-0.6": (False, {"threshold": 0.6}, None), "threshold-0.7": (False, {"threshold": 0.7}, None),
            "tta+threshold-0.3": (True, {"threshold": 0.3}, None),
            "tta+threshold-0.6": (True, {"threshold": 0.6}, None),
            "size-224": (False, {}, 224), "size-288": (False, {}, 288), "tta+size-224": (True, {}, 224)}
ORACLE = {"plain": ("plain", "threshold-0.3", "threshold-0.4", "threshold-0.6", "threshold-0.7"),
          "tta": ("tta", "tta+threshold-0.3", "tta+threshold-0.4", "tta+threshold-0.6")}
METRICS = ("dice", "dice_labeled_extent", "hd95_mm", "assd_mm", "prediction_voxels", "reference_voxels", "found",
           "reference_structures", "extra")


def score_model(model: Path, train_ids: list, scans: dict, settings) -> dict:
    """{setting: rows} for one model on every scan it was not trained on."""
    segmenters: dict = {}
    rows = {name: [] for name in settings}
    runs = sorted({_run_of(name) for name in settings}, key=lambda run: (run[0], run[1] or 0))
    for test_id, scan_info in scans.items():
        if test_id in train_ids:
            continue
        scan, ref = read_scan(scan_info.image), read_binary(scan_info.label)
        for tta, size in runs:
            if size not in segmenters:
                segmenters[size] = Segmenter(model, "cpu", slice_size=size)
            t0 = time.perf_counter()
            probs = segmenters[size].class_probabilities(scan, tta)
            model_seconds = time.perf_counter() - t0
            for name in (n for n in settings if _run_of(n) == (tta, size)):
                t1 = time.perf_counter()
                mask, _, unsure = segmenters[size].decide(probs, scan, **SETTINGS[name][1])
                m = evaluate(mask, ref)
                rows[name].append({"train": "+".join(train_ids), "test": test_id, "setting": name,
                                   "seconds": round(model_seconds + time.perf_counter() - t1, 2),
                                   **{k: m[k] for k in METRICS}, **uncertainty_scores(unsure, mask, ref)})
    return rows


def _run_of(setting: str) -> tuple:
    """(TTA, slice size or None for the trained one): what the model runs for a setting."""
    return SETTINGS[setting][0], SETTINGS[setting][2]


def collect(variant: Path, scans: dict, out: Path, settings) -> list:
    rows = []
    for cell in sorted(variant.glob("cells/n*-*/result.json")):
        result = json.loads(cell.read_text())
        model = cell.parent / "model" / "model.onnx"
        cache = {name: out / "rows" / f"{variant.name}--{cell.parent.name}--{name}.json" for name in settings}
        missing = [name for name in settings if not cache[name].is_file()]
        if missing:
            cache[missing[0]].parent.mkdir(parents=True, exist_ok=True)
            for name, got in score_model(model, result["train"], scans, missing).items():
                cache[name].write_text(json.dumps({"steps": result["steps"], "seconds": result["seconds"],
                                                   "rows": got}))
        for name in settings:
            saved = json.loads(cache[name].read_text())
            rows += [dict(r, variant=variant.name, steps=saved["steps"], train_seconds=saved["seconds"])
                     for r in saved["rows"]]
    return rows


def table(rows: list) -> str:
    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    lines = ["| variant | setting | Dice per turn (by training scans) | mean Dice ± sd over turns | labeled-extent "
             "Dice | HD95 (mm) | ASSD (mm) | predicted / reference voxels | extra components | uncertainty AUROC | "
             "wrong voxels in top 5 % | segment s | steps |",
             "|" + "---|" * 13]
    for variant, setting in dict.fromkeys((r["variant"], r["setting"]) for r in rows):
        mine = [r for r in rows if r["variant"] == variant and r["setting"] == setting]
        turns = {t: mean([r["dice"] for r in mine if r["train"] == t]) for t in sorted({r["train"] for r in mine})}
        sd = statistics.stdev(turns.values()) if len(turns) > 1 else float("nan")
        lines.append(
            f"| {variant} | {setting} | {' / '.join(f'{v:.3f}' for v in turns.values())} | "
            f"{mean(list(turns.values())):.3f} ± {sd:.3f} | {mean([r['dice_labeled_extent'] for r in mine]):.3f} | "
            f"{mean([r['hd95_mm'] for r in mine]):.2f} | {mean([r['assd_mm'] for r in mine]):.2f} | "
            f"{sum(r['prediction_voxels'] for r in mine) / sum(r['reference_voxels'] for r in mine):.3f} | "
            f"{sum(r['extra'] for r in mine)} | {mean([r['auroc'] for r in mine]):.3f} | "
            f"{mean([r['captured'] for r in mine]):.3f} | {mean([r['seconds'] for r in mine]):.1f} | "
            f"{mean([r['steps'] for r in mine]):.0f} |")
    return "\n".join(lines) + "\n"


def paired(rows: list) -> str:
    """Each segmentation setting against `plain` on the very same models and scans: the mean change in Dice and
    its spread over the models (a paired comparison: no seed or training noise in it)."""
    lines = ["| setting | models | mean change in Dice vs plain | sd over models | models improved | "
             "change in labeled-extent Dice | change in extra components |", "|" + "---|" * 7]
    plain = {(r["variant"], r["train"], r["test"]): r for r in rows if r["setting"] == "plain"}
    for setting in dict.fromkeys(r["setting"] for r in rows if r["setting"] != "plain"):
        per_model: dict = {}
        for r in rows:
            base = plain.get((r["variant"], r["train"], r["test"]))
            if r["setting"] == setting and base:
                per_model.setdefault((r["variant"], r["train"]), []).append(
                    (r["dice"] - base["dice"], r["dice_labeled_extent"] - base["dice_labeled_extent"],
                     r["extra"] - base["extra"]))
        deltas = [sum(d[0] for d in v) / len(v) for v in per_model.values()]
        if len(deltas) < 2:
            continue
        extent = [d[1] for v in per_model.values() for d in v]
        extra = sum(d[2] for v in per_model.values() for d in v)
        lines.append(f"| {setting} | {len(deltas)} | {statistics.mean(deltas):+.4f} | {statistics.stdev(deltas):.4f} | "
                     f"{sum(d > 0 for d in deltas)}/{len(deltas)} | {statistics.mean(extent):+.4f} | {extra:+d} |")
    return "\n".join(lines + oracle(rows, plain)) + "\n"


def oracle(rows: list, plain: dict) -> list:
    """Rows for the best threshold of each model, picked on its own held-out scans (an upper bound on any
    threshold chosen without them), against plain: without TTA (0.5 and ORACLE's others) and with it."""
    lines = []
    for base, family in ORACLE.items():
        best: dict = {}
        for r in rows:
            ref = plain.get((r["variant"], r["train"], r["test"]))
            if r["setting"] in family and ref:
                best.setdefault((r["variant"], r["train"]), {}).setdefault(r["setting"], []).append(
                    r["dice"] - ref["dice"])
        deltas = [max(sum(v) / len(v) for v in by_setting.values()) for by_setting in best.values()
                  if len(by_setting) == len(family)]
        if len(deltas) > 1:
            lines.append(f"| best threshold per model ({base}; oracle) | {len(deltas)} | "
                         f"{statistics.mean(deltas):+.4f} | {statistics.stdev(deltas):.4f} | "
                         f"{sum(d > 0 for d in deltas)}/{len(deltas)} | | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", default=",".join(n for n in SETTINGS if SETTINGS[n][2] is None),
                    help="segmentation settings, from: " + ", ".join(SETTINGS))
    ap.add_argument("variants", nargs="+", help="folders written by `extremeaug experiment --scans 1`")
    a = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    scans = {s.id: s for s in discover(a.data)[0]}
    out = Path(a.out)
    rows = [r for v in a.variants for r in collect(Path(v), scans, out, a.settings.split(","))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    text = table(rows) + "\n" + paired(rows)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
