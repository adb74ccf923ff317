"""How fast `extremeaug project status --json` answers on a project of 1,000 registered cases.

The project is real: 1,000 small, distinct scans added through `Project.add` (300 with a manual label), 500
auto labels registered as `project segment` registers them, and a run whose progress file holds 20,000 lines.
Usage: python benchmarks/bench_project_status.py [--cases 1000] [--out status.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from extremeaug.common.events import append_event
from extremeaug.project import LabelKind, Project
from extremeaug.project.cases import sha256
from extremeaug.project.store import Store

TIMER = """
import json, subprocess, sys, time
times = []
for _ in range(15):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "extremeaug", "project", "status", sys.argv[1], "--json"],
                   capture_output=True, check=True)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def build(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    mask_array = np.zeros((8, 32, 32), np.uint8)
    mask_array[3:5, 10:20, 10:20] = 1
    mask = sitk.GetImageFromArray(mask_array)
    sitk.WriteImage(mask, str(root / "mask.nrrd"))
    with Project.create(root / "project") as project:
        for i in range(n):   # distinct scans: the project keeps one case per scan content
            scan = sitk.GetImageFromArray(rng.random((8, 32, 32)).astype(np.float32))
            project.add(scan, mask if i < 300 else None, f"case{i:04d}")
    digest = sha256(root / "mask.nrrd")
    with Store.open(root / "project") as store, store.write():   # auto labels as `project segment` stores them
        for i in range(300, 800):
            store.insert_label(f"case{i:04d}", LabelKind.AUTO, "mask.nrrd", digest, 200, model_version=1,
                               uncertainty=float(rng.random()))
        store.insert_run("r0001", {}, [])
        store.end_run("r0001", "finished", None)
    events = root / "project" / "runs" / "r0001" / "progress.jsonl"
    events.parent.mkdir(parents=True)
    for step in range(20000):
        append_event(events, "progress", step=step, steps_total=20000, epoch=1, loss=0.5, dice=0.5,
                     patches_per_s=100.0, eta_s=10.0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--out")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build(root, a.cases)
        built = time.perf_counter() - t0
        project = root / "project"
        in_process = []
        for _ in range(20):
            t = time.perf_counter()
            with Project.open(project) as opened:
                summary = opened.status()
            in_process.append(time.perf_counter() - t)
        # timed from a small interpreter: spawning from this one (SimpleITK, numpy loaded) costs more
        cli = json.loads(subprocess.run([sys.executable, "-c", TIMER, str(project)], capture_output=True, text=True,
                                        check=True).stdout)
        r = subprocess.run([sys.executable, "-m", "extremeaug", "project", "status", str(project), "--json"],
                           capture_output=True, text=True, check=True)
        assert json.loads(r.stdout)["cases"] == a.cases == summary.cases
    result = {"cases": a.cases, "states": summary.states, "build_s": round(built, 1),
              "status_in_process_ms_median": round(1000 * statistics.median(in_process), 2),
              "status_cli_ms_median": round(1000 * statistics.median(cli), 1),
              "status_cli_ms_min": round(1000 * min(cli), 1), "status_cli_ms_max": round(1000 * max(cli), 1),
              "python_startup_ms": _startup_ms()}
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))


def _startup_ms() -> float:
    """The interpreter alone, for scale: what any command line costs before it does anything."""
    times = []
    for _ in range(7):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 1)


if __name__ == "__main__":
    main()
