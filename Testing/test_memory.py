"""Out of memory in training: recognised in every library's words, and met with half the batch.

The real test caps a child process's address space (RLIMIT_AS, Linux) so that torch's allocations fail as
they do on a full laptop. glibc is told to map every large block on its own (a fixed mmap threshold), so
freed tensors leave the address space at once and the cap measures what is live, as physical memory does.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import raising
from extremeaug.cli.main import RUN_FLAGS, parser
from extremeaug.common.config import RunOptions, TrainConfig, from_arguments
from extremeaug.common.errors import ExtremeAugError
from extremeaug.training.dataset import Case
from extremeaug.training.memory import SmallerBatch, memory_error, out_of_memory
from extremeaug.training.train import Trainer

CAPPED = """
import re, resource, sys
import extremeaug.training.train, torch
from extremeaug.cli.main import main
torch.zeros(1)
vm = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]) * 2**20, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""
FREED_HEAP = """
import re, torch
from extremeaug.training.memory import release
def rss_mib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
freed, kept = [], []
for _ in range(4000):   # 250 MiB in 64 KiB tensors (below glibc's mmap threshold), each before one that stays
    freed.append(torch.ones(16 * 1024))
    kept.append(torch.ones(16))
del freed
before = rss_mib()
release()
print(before, rss_mib())
"""
HEADROOM_MIB = 1536   # width 2: a batch of 512 patches does not fit, 256 does (measured on 2 cores)


def capped_train(phantom, *flags) -> subprocess.CompletedProcess:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_ARENA_MAX="1")
    command = [sys.executable, "-c", CAPPED, str(HEADROOM_MIB), "train", "--image", str(phantom[0]),
               "--label", str(phantom[1]), "--width", "2", "--batch-size", "512", "--augment", "5",
               "--epochs", "1", "--device", "cpu", "--quiet", *flags]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def events(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_out_of_memory_is_recognised_whichever_library_says_it():
    assert out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                      "allocate memory: you tried to allocate 134217728 bytes."))
    assert out_of_memory(RuntimeError("[enforce fail at ..\\c10\\core\\impl\\alloc_cpu.cpp:72] data. "
                                      "DefaultCPUAllocator: not enough memory: you tried to allocate 26214400 bytes."))
    assert out_of_memory(RuntimeError("could not create a primitive"))   # oneDNN, whatever failed inside it
    assert out_of_memory(RuntimeError("pthread_create failed, error code: 12 error msg: Cannot allocate memory"))
    assert out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps the address space through /proc and rlimit")
def test_training_out_of_memory_tries_again_at_half_the_batch_until_it_fits(tmp_path, phantoms):
    """The time budget (1.2 s) is spent by the first attempt, so the one that fits trains one step and exports."""
    progress = tmp_path / "p.jsonl"
    result = capped_train(phantoms[0], "--out", tmp_path / "m", "--progress-file", progress,
                          "--time-budget", "0.02")
    assert result.returncode == 0, result.stderr
    assert "out of memory at batch size 512 and width 2; trying again at batch size 256 from the start" in \
        result.stderr
    seen = events(progress)
    retries = [e for e in seen if e["event"] == "retry"]
    assert retries and retries[0]["batch_size"] == 256 and not retries[0]["resume"]
    assert [e["event"] for e in seen].count("start") == len(retries) + 1
    assert seen[-1]["event"] == "end" and seen[-1]["status"] == "time_budget"
    checkpoint = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"]["batch_size"] == retries[-1]["batch_size"] < 512
    assert (tmp_path / "m" / "model.onnx").is_file()


def test_without_retries_out_of_memory_ends_the_run_with_its_advice(tmp_path, phantoms):
    """--no-retry-smaller-batch reaches the run, which then stops at the first failure as before (real run, the
    failure raised where a compiled network would raise it)."""
    args = parser().parse_args(["train", "--image", "s.nii", "--label", "m.nii", "--out", "m",
                                "--no-retry-smaller-batch"])
    opts = from_arguments(RunOptions, args, RUN_FLAGS, show_progress=False)
    assert opts.retry_smaller_batch is False
    progress = tmp_path / "p.jsonl"
    trainer = Trainer(TrainConfig(augment=2, epochs=1, width=4), [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
                      replace(opts, device="cpu", progress_file=str(progress)))
    trainer.compiled = raising(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                                            "can't allocate memory"))
    with pytest.raises(ExtremeAugError, match="out of memory at batch size 16 and width 4; nothing was written yet"):
        trainer.run()
    assert events(progress)[-1]["event"] == "end" and events(progress)[-1]["status"] == "error"


def test_out_of_memory_continues_the_checkpoint_with_what_is_left_of_the_time_budget(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"a checkpoint")
    smaller = memory_error(256, 16, "cuda", tmp_path / "checkpoint.pt", retry=True)
    assert isinstance(smaller, SmallerBatch) and smaller.batch_size == 128 and smaller.resume
    cfg, opts = smaller.retried(TrainConfig(batch_size=256), RunOptions(time_budget_min=10), spent_s=120)
    assert cfg.batch_size == 128 and opts.resume and opts.time_budget_min == pytest.approx(8)
    assert "trying again at batch size 128 from the last checkpoint" in smaller.describe()

    last = memory_error(1, 16, "cuda", tmp_path / "checkpoint.pt", retry=True)
    assert not isinstance(last, SmallerBatch) and isinstance(last, ExtremeAugError)
    assert "one patch per step is the smallest batch" in str(last) and "--resume --device cpu" in str(last)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_gives_the_heap_pages_of_freed_tensors_back_to_the_system():
    """Without it a CPU run that retried kept every failed attempt's freed memory resident until it ended."""
    result = subprocess.run([sys.executable, "-c", FREED_HEAP], capture_output=True, text=True, timeout=120)
    before, after = map(int, result.stdout.split())
    assert before - after > 150, (before, after)
