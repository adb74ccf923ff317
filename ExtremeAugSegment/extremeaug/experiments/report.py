"""The experiment's outputs: results.csv, results.md (laid out like the paper's Tables I and II, with
its numbers beside ours) and PNG figures like its Figs. 3/4 (training Dice curves) and 6/7 (validation)."""
from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

from ..common.files import write_bytes
from .figures import pyplot, save_png

# Gaonkar et al., Tables I and II: {augmentation: {training scans: Dice}}
PAPER_TRAIN = {5: {1: .848, 3: .913, 5: .913, 7: .917, 9: .928}, 10: {1: .892, 3: .930, 5: .932, 7: .931, 9: .936},
               20: {1: .920, 3: .941, 5: .939, 7: .938, 9: .942}, 30: {1: .926, 3: .946, 5: .944, 7: .942, 9: .944},
               40: {1: .932, 3: .947, 5: .946, 7: .944, 9: .946}, 50: {1: .936, 3: .949, 5: .947, 7: .945, 9: .947}}
PAPER_VAL = {5: {1: .641, 3: .773, 5: .787, 7: .814, 9: .838}, 10: {1: .682, 3: .798, 5: .802, 7: .832, 9: .850},
             20: {1: .710, 3: .804, 5: .819, 7: .842, 9: .855}, 30: {1: .721, 3: .812, 5: .824, 7: .851, 9: .860},
             40: {1: .723, 3: .818, 5: .822, 7: .853, 9: .858}, 50: {1: .729, 3: .817, 5: .826, 7: .861, 9: .863}}
CSV_FIELDS = ("name", "mode", "augment", "n_train", "train", "val", "epochs", "epochs_done", "steps", "seconds",
              "device", "width", "status", "train_dice", "train_dice_over", "val_dice", "val_hd95_mm", "val_assd_mm",
              "val_hd95_mm_undefined", "val_assd_mm_undefined")


def _groups(rows: List[dict], key: str) -> Dict[tuple, List[float]]:
    """Values of `key` by (mode, augmentation, planned epochs, training scans)."""
    out = defaultdict(list)
    for r in rows:
        if r[key] is not None:
            out[(r["mode"], r["augment"], r["epochs"], r["n_train"])].append(r[key])
    return out


def _cell(values: List[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def _undefined(rows: List[dict], key: str) -> Dict[tuple, int]:
    """Validation cases whose `key` is undefined (an infinite distance), by the groups of `_groups`."""
    out: Dict[tuple, int] = defaultdict(int)
    for r in rows:
        out[(r["mode"], r["augment"], r["epochs"], r["n_train"])] += r.get(f"{key}_undefined", 0)
    return out


def _table(rows: List[dict], key: str, paper: Optional[dict], title: str) -> List[str]:
    groups, undefined = _groups(rows, key), _undefined(rows, key)
    lines = []
    for mode in sorted({g[0] for g in groups}):
        counts = sorted({g[3] for g in groups if g[0] == mode})
        levels = sorted({(g[1], g[2]) for g in groups if g[0] == mode})
        lines += [f"**{title}** — augmentation mode `{mode}`", "",
                  "| augmentation (epochs) | " + " | ".join(f"{n} training scan(s)" for n in counts) + " |",
                  "|---" * (len(counts) + 1) + "|"]
        for a, epochs in levels:
            cells = []
            for n in counts:
                ref = paper.get(a, {}).get(n) if paper else None
                lost = undefined.get((mode, a, epochs, n), 0)
                cells.append(_cell(groups.get((mode, a, epochs, n), [])) + (f" ({lost} undefined)" if lost else "")
                             + (f" [paper {ref:.3f}]" if ref else ""))
            lines.append(f"| {a}x ({epochs}) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def final_train_dice(row: dict) -> tuple:
    """Training Dice over the last full epoch (Table I's definition); a run stopped inside an epoch
    (time budget) reports the windows of its last 20 % of steps instead, since its partial epoch
    would average in the first, untrained steps."""
    epochs = row["curve"]
    if epochs and float(epochs[-1]["epochs_done"]).is_integer():
        return epochs[-1]["train_dice"], "last epoch"
    tail = [w["train_dice"] for w in row["window_curve"] if w["step"] >= 0.8 * row["steps"]]
    if not tail:
        return (epochs[-1]["train_dice"] if epochs else None), "partial epoch"
    return statistics.fmean(tail), "last 20% of steps"


def write_report(rows: List[dict], out: Path) -> None:
    for r in rows:
        r["train_dice"], r["train_dice_over"] = final_train_dice(r)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "train": "+".join(r["train"]), "val": "+".join(r["val"])})
    write_bytes(buffer.getvalue().encode(), out / "results.csv")
    md = ["# Experiment results", "",
          "Mean over the training sets of each size (± standard deviation, n = number of models); the",
          "paper's value for the same cell in brackets (it trained 100 epochs on its own data). Training",
          "Dice is over the last full epoch, or over the last 20 % of steps when a time budget ended the",
          "run inside an epoch (results.csv says which).", ""]
    md += _table(rows, "train_dice", PAPER_TRAIN, "Table I: training Dice at the last epoch")
    md += _table(rows, "val_dice", PAPER_VAL, "Table II: mean validation Dice")
    md += _table(rows, "val_hd95_mm", None, "Mean validation HD95 (mm)")
    md += _table(rows, "val_assd_mm", None, "Mean validation ASSD (mm)")
    md += _structure_table(rows)
    write_bytes("\n".join(md).encode(), out / "results.md")
    figures(rows, out)


def _structure_table(rows: List[dict]) -> List[str]:
    """Validation Dice per structure and model (`experiment --labels`); nothing for merged runs."""
    names = list(dict.fromkeys(n for r in rows for n in r.get("val_structures") or {}))
    if not names:
        return []
    md = ["### Validation Dice per structure", "", "| model | " + " | ".join(names) + " | mean |",
          "|---" * (len(names) + 2) + "|"]
    for r in rows:
        dice = [r["val_structures"].get(n) for n in names]
        known = [d for d in dice if d is not None]
        mean_text = f"{sum(known) / len(known):.3f}" if known else "-"
        cells = " | ".join("-" if d is None else f"{d:.3f}" for d in dice)
        md.append(f"| {r['name']} | {cells} | {mean_text} |")
    return md + [""]


def _curve(row: dict) -> tuple:
    points = row["curve"] if len(row["curve"]) >= 5 else row["window_curve"]
    return [p["epochs_done"] for p in points], [p["train_dice"] for p in points]


def figures(rows: List[dict], out: Path) -> None:
    plt = pyplot()
    modes = sorted({r["mode"] for r in rows})
    augments = sorted({r["augment"] for r in rows})
    counts = sorted({r["n_train"] for r in rows})
    for name, panels, panel_key, colour_key, label in (
            ("fig_training_by_augmentation.png", augments, "augment", "n_train", "{} scan(s)"),
            ("fig_training_by_scans.png", counts, "n_train", "augment", "N = {}")):
        fig, axes = plt.subplots(len(modes), len(panels), figsize=(3.4 * len(panels), 2.8 * len(modes)),
                                 squeeze=False, sharey=True, constrained_layout=True)
        colours = sorted({r[colour_key] for r in rows})
        for i, mode in enumerate(modes):
            for j, panel in enumerate(panels):
                ax = axes[i][j]
                shown = set()
                for r in rows:
                    if r["mode"] == mode and r[panel_key] == panel:
                        x, y = _curve(r)
                        c = plt.cm.viridis(colours.index(r[colour_key]) / max(len(colours) - 1, 1))
                        ax.plot(x, y, color=c, lw=1, label=None if r[colour_key] in shown else
                                label.format(r[colour_key]))
                        shown.add(r[colour_key])
                title = f"{panel}x" if panel_key == "augment" else f"{panel} scan(s)"
                ax.set(title=f"{title}, {mode}", xlabel="epochs", ylim=(0, 1))
                ax.grid(alpha=0.3)
                if shown:
                    ax.legend(fontsize=7, loc="lower right")
            axes[i][0].set_ylabel("training Dice")
        save_png(fig, out / name, dpi=80)
    val = _groups(rows, "val_dice")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for mode, a, epochs in sorted({g[:3] for g in val}):
        style = "-" if mode == "pool" else "--"
        pts = [(n, statistics.fmean(val[(mode, a, epochs, n)])) for n in counts if (mode, a, epochs, n) in val]
        axes[0].plot(*zip(*pts), style, marker="o", label=f"{a}x, {epochs} ep, {mode}")
    for mode, n, epochs in sorted({(g[0], g[3], g[2]) for g in val}):
        style = "-" if mode == "pool" else "--"
        pts = sorted((a, statistics.fmean(v)) for (m, a, e, k), v in val.items() if (m, k, e) == (mode, n, epochs))
        axes[1].plot(*zip(*pts), style, marker="o", label=f"{n} scan(s), {epochs} ep, {mode}")
    axes[0].set(xlabel="training scans", ylabel="mean validation Dice", xticks=counts, ylim=(0, 1))
    axes[1].set(xlabel="augmentation level N", ylabel="mean validation Dice", xticks=augments, ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    save_png(fig, out / "fig_validation.png", dpi=80)
