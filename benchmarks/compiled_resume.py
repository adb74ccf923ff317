"""Is resume still exact when the CPU network is compiled (`--compile on`)? Two epochs of a small model on a
phantom, uninterrupted and stopped after 9 steps then resumed, both compiled; and the same run eager, for scale.
Not a test: the first compilation takes about 100 s on 2 cores.

    python benchmarks/compiled_resume.py [--out FILE.json]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_engine import emit

from extremeaug.data.phantom import write_phantoms
from extremeaug.training.dataset import Case
from extremeaug.training.train import RunOptions, TrainConfig, train

SMALL = dict(width=4, augment=1, batch_size=16, epochs=2)


def largest_difference(a: Path, b: Path) -> float:
    x, y = (torch.load(p / "model.pt", weights_only=True)["state_dict"] for p in (a, b))
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp())
    cases = [Case(*map(str, write_phantoms(work / "phantom", 1)[0]))]

    def run(folder: str, compile_mode: str, **kw):
        config = TrainConfig() if kw.get("resume") else TrainConfig(**SMALL)
        return train(config, [] if kw.get("resume") else cases, [], work / folder,
                     RunOptions(device="cpu", show_progress=False, compile=compile_mode, **kw))

    run("full", "on")
    assert run("half", "on", max_steps=9).status == "max_steps"
    assert run("half", "on", resume=True).status == "finished"
    run("eager", "off")
    emit({"resumed_against_uninterrupted": largest_difference(work / "full", work / "half"),
          "compiled_against_eager": largest_difference(work / "full", work / "eager")}, a.out)


if __name__ == "__main__":
    main()
