"""Markdown tables from `benchmarks/options.py` reports (several are merged: another seed's, say): per option the
mean union Dice and predicted / reference voxels over its models, each option's paired gain over --base with its
standard error, and the gain of deciding foreground on the probability of any structure (`per_scan_union`), per option
and over every model; with several structures, each structure's Dice and predicted / reference per option.

    python benchmarks/options_report.py bench-out/discs.json [bench-out/discs-seed1.json ...] --base fit

With --union every model is scored by its union decision where the report has one (`per_scan_union`): models that
stored no `union` (trained before it became a default) paired with models that decide by it.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from options import gains  # noqa: E402


def mean_over(runs: list, key: str, field: str = "dice") -> float:
    """The mean over models of each model's mean over its test scans."""
    return statistics.mean(statistics.mean(s[field] for s in r[key].values()) for r in runs)


def union_gain(runs: list) -> str:
    diffs = [statistics.mean(r["per_scan_union"][k]["dice"] - r["per_scan"][k]["dice"] for k in r["per_scan"])
             for r in runs if "per_scan_union" in r]
    if len(diffs) < 2:
        return "-"
    return f"{statistics.mean(diffs):+.4f} ± {statistics.stdev(diffs) / math.sqrt(len(diffs)):.4f} ({len(diffs)})"


def union_decided(run: dict) -> dict:
    """A run scored by its union decision, where it has one (no union decision's gain is left to show)."""
    scans = run.get("per_scan_union", run["per_scan"])
    return dict({k: v for k, v in run.items() if k != "per_scan_union"}, per_scan=scans,
                mean_dice=statistics.mean(s["dice"] for s in scans.values()),
                mean_ratio=statistics.mean(s["ratio"] for s in scans.values()))


def structures(runs: list, options: list) -> None:
    """With several structures: each one's mean Dice and predicted / reference per option, and its paired gain over
    the first option (`gains`: same training scan and seed, same test scans)."""
    runs = [r for r in runs if "per_structure" in r]   # reports written before per_structure have none
    options = [o for o in options if any(r["option"] == o for r in runs)]
    if not runs:
        return
    names = list(next(iter(runs[0]["per_structure"].values())))
    print("| option | " + " | ".join(f"{n}: Dice, predicted / reference, gain over {options[0]} (SE)"
                                      for n in names) + " |")
    print("|---|" + "---|" * len(names))
    alone = {n: [dict(r, per_scan={t: s[n] for t, s in r["per_structure"].items()}) for r in runs] for n in names}
    for option in options:
        cells = []
        for name in names:
            mine = [r for r in alone[name] if r["option"] == option]
            g = gains(alone[name], options[0], option) if option != options[0] else {}
            gain = f"{g['mean_gain']:+.3f} ({g['se']:.3f})" if g.get("se") is not None else "-"
            cells.append(f"{mean_over(mine, 'per_scan'):.3f}, {mean_over(mine, 'per_scan', 'ratio'):.3f}, {gain}")
        print(f"| {option} | " + " | ".join(cells) + " |")
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--base", required=True, help="the option the others are paired with")
    p.add_argument("--union", action="store_true", help="score every model by its union decision (per_scan_union)")
    a = p.parse_args()
    runs = [r for path in a.reports for r in json.loads(path.read_text())["runs"]]
    if a.union:
        runs = [union_decided(r) for r in runs]
    options = list(dict.fromkeys(r["option"] for r in runs))
    print("| option | models | mean Dice | predicted / reference | paired gain over " + a.base +
          " (SE, pairs) | pairs better | union decision's gain (SE, models) |")
    print("|---|---|---|---|---|---|---|")
    for option in options:
        mine = [r for r in runs if r["option"] == option]
        g = gains(runs, a.base, option) if option != a.base else {}
        paired = (f"{g['mean_gain']:+.4f} ({g['se']:.4f}, {g['pairs']})" if g.get("se") is not None else "-")
        better = f"{sum(d > 0 for d in g['gains'])}/{g['pairs']}" if g else "-"
        print(f"| {option} | {len(mine)} | {mean_over(mine, 'per_scan'):.4f} | "
              f"{mean_over(mine, 'per_scan', 'ratio'):.3f} | {paired} | {better} | {union_gain(mine)} |")
    print(f"| every model | {len(runs)} | | | | | {union_gain(runs)} |")
    print()
    structures(runs, options)
    print("| training scan | seed | option | steps | test scans | mean Dice | predicted / reference |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (r["seed"], r["train"], options.index(r["option"]))):
        print(f"| {r['train']} | {r['seed']} | {r['option']} | {r['steps']} | {len(r['per_scan'])} | "
              f"{r['mean_dice']:.4f} | {r['mean_ratio']:.3f} |")


if __name__ == "__main__":
    main()
