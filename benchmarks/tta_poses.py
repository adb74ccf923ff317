"""Would other test-time poses help? The models of `options.py` reports (option --base) scored again with
`data.poses.POSES` replaced by --poses (DEGREES:SCALE,...), each as a run of option BASE+NAME in --out, to pair
with BASE in `options_report.py`.

    python benchmarks/tta_poses.py w5 "0:1,-10:1,10:1,0:0.8,0:1.2" bench-out/avg-discs-s1.json \\
        --base last+smooth --out bench-out/w5-discs.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402
from options import pairs, score  # noqa: E402

from extremeaug.data import poses  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("poses", help="DEGREES:SCALE pairs, comma-separated")
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args()
    poses.POSES = tuple((float(d), float(s)) for d, s in (x.split(":") for x in a.poses.split(",")))
    result = json.loads(a.out.read_text()) if a.out.exists() else {"poses": a.poses, "runs": []}
    name = f"{a.base}+{a.name}"
    done = {(r["train"], r["seed"], r["option"]) for r in result["runs"]}
    for report in a.reports:
        source = json.loads(report.read_text())
        scans = pairs(Path(source["data"]))
        for run in (r for r in source["runs"] if r["option"] == a.base and (r["train"], r["seed"], name) not in done):
            flags = run.get("segment") or ""
            result["runs"].append({**{k: v for k, v in run.items() if not k.startswith("per_")}, "option": name,
                                   "segment": flags, **score(Path(run["model"]) / "model.onnx",
                                                             {k: scans[k] for k in run["per_scan"]}, flags)})
            emit(result, a.out)


if __name__ == "__main__":
    main()
