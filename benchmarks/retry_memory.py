"""What the out-of-memory retry keeps resident on Linux, with and without glibc's `malloc_trim` in `release()`.

    python benchmarks/retry_memory.py [--headroom-mib 1536]

Each run is a child `extremeaug train` (one phantom, width 2, batch 512) whose address space is capped at the
headroom above what it holds after its imports, as in Testing/test_memory.py but with glibc's default settings:
the batch of 512 fails, and the child prints its resident size around the `release()` before it tries 256.
"""
from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def resident_mib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024


def child(trim: bool, headroom_mib: int, argv: list) -> int:
    import torch

    import extremeaug.training.memory as memory
    import extremeaug.training.train as train
    from extremeaug.cli.main import main

    release = memory.release

    def traced() -> None:
        before = resident_mib()
        release()
        print(f"release(): resident {before} -> {resident_mib()} MiB", file=sys.stderr)

    train.release = traced
    if not trim:
        memory.trim_heap = lambda: None
    torch.zeros(1)
    vm = int(re.search(r"VmSize:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom_mib * 2 ** 20, resource.RLIM_INFINITY))
    return main(argv)


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--headroom-mib", type=int, default=1536)
    a = p.parse_args()
    from extremeaug.data.phantom import write_phantoms

    with tempfile.TemporaryDirectory() as tmp:
        image, mask = write_phantoms(tmp, 1)[0]
        for mode in ("trim", "no-trim"):
            r = subprocess.run([sys.executable, __file__, "--child", mode, str(a.headroom_mib), "train", "--image",
                                str(image), "--label", str(mask), "--out", f"{tmp}/{mode}", "--width", "2",
                                "--batch-size", "512", "--augment", "5", "--epochs", "1", "--device", "cpu",
                                "--quiet", "--time-budget", "0.02"], capture_output=True, text=True)
            lines = [x for x in r.stderr.splitlines() if "release()" in x or "out of memory" in x]
            print(f"{mode}: exit {r.returncode}; " + "; ".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2] == "trim", int(sys.argv[3]), sys.argv[4:]))
    run()
