"""Training speed with one structure (all labels merged) vs one per label value, same scan, same process
(not a test): steps are timed in alternating blocks so machine load hits both alike.

    python benchmarks/bench_structures.py [--image SCAN --label MASK] [--steps 60] [--out FILE.json]

Without --image it uses a synthetic phantom with three structures.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from extremeaug.data.phantom import write_phantoms
from extremeaug.training.dataset import Case
from extremeaug.training.train import RunOptions, TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image")
    ap.add_argument("--label")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.image:
            case = Case(a.image, a.label)
        else:
            (image, mask), = write_phantoms(work / "data", 1, structures=True)
            case = Case(str(image), str(mask))
        trainers = {merge: Trainer(TrainConfig(merge_labels=merge), [case], [], work / f"m{merge}",
                                   RunOptions(device="cpu", show_progress=False)) for merge in (True, False)}
        spent = {merge: 0.0 for merge in trainers}
        for k in range(3):   # warm-up
            for t in trainers.values():
                t.train_step(t.order.parts(0, k), 0.0)
        for start in range(3, 3 + a.steps, a.block):
            for merge, t in trainers.items():
                t0 = time.perf_counter()
                for k in range(start, start + a.block):
                    t.train_step(t.order.parts(0, k), 0.0)
                spent[merge] += time.perf_counter() - t0
        steps = len(range(3, 3 + a.steps, a.block)) * a.block
        rows = [{"structures": len(t.labels), "merged": merge, "patches_per_s": round(
            steps * t.cfg.batch_size / spent[merge], 1), "step_ms": round(1000 * spent[merge] / steps, 1),
            "slice_set_mib": round(t.train_set.nbytes / 2 ** 20, 1)} for merge, t in trainers.items()]
    result = {"machine": platform.processor() or platform.machine(), "steps": steps, "rows": rows}
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
