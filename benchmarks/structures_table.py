"""The table of docs/results.md section 10 from benchmarks/real_data_structures.sh's output folder."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _number(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else float("nan")


def main(out: Path) -> None:
    print("| model | case | union Dice | HD95 (mm) | discs found | extra | mean per-level Dice | "
          "wrong-level voxels | segment s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("binary", "levels"):
        for case in (20, 25):
            m = json.loads((out / kind / f"case{case}.json").read_text())
            seconds = (out / kind / f"case{case}_segment_time.txt").read_text().split()[0]
            levels = kind == "levels"   # the binary model has one structure: per-level numbers mean nothing
            per_level = f"{m['mean_dice']:.3f}" if levels else "-"
            wrong = sum(r["wrong_structure_voxels"] for r in m["structures"]) if levels else "-"
            print(f"| {kind} | {case} | {m['dice']:.3f} | {m['hd95_mm']:.2f} | {m['found']}/{m['reference_structures']}"
                  f" | {m['extra']} | {per_level} | {wrong} | {seconds} |")
    print()
    print("| model | steps | patches/s | peak RSS (GiB) | training s |")
    print("|---|---|---|---|---|")
    for kind in ("binary", "levels"):
        history = json.loads((out / kind / "model" / "history.json").read_text())
        last = history["history"][-1]
        rss_kb = _number((out / kind / "train_time.txt").read_text(), r"Maximum resident set size \(kbytes\): (\d+)")
        rates = [h["patches_per_s"] for h in history["history"]]
        print(f"| {kind} | {last['step']} | {sum(rates) / len(rates):.1f} | {rss_kb / 2 ** 20:.2f} | "
              f"{history['metadata']['training_seconds']} |")
    print()
    for case in (20, 25):
        m = json.loads((out / "levels" / f"case{case}.json").read_text())
        print(f"case {case}, per level:")
        for r in m["structures"]:
            print(f"  {r['value']} {r['name']}: Dice {r['dice']:.3f}, HD95 {r['hd95_mm']:.2f} mm, "
                  f"predicted as {r['predicted_as']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/structures"))
