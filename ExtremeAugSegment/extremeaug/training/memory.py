"""Out of memory in training: recognised whichever library says it, and met with a smaller batch.

The CUDA default batch (256 patches, 4 GiB of GPU memory at width 16 on the H200) need not fit a laptop's
GPU, which also draws Slicer's views; Windows has no overcommit, so a large CPU batch fails there at
allocation too. Memory runs out in the first steps, so halving the batch and starting again (or
continuing the last checkpoint) costs seconds, where a clinician restarting by hand loses the afternoon.
"""
from __future__ import annotations

import ctypes
import gc
import sys
from dataclasses import replace
from pathlib import Path
from typing import Tuple

import torch

from ..common.config import RunOptions, TrainConfig
from ..common.errors import ExtremeAugError

MESSAGES = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
            "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "CUDA error: out of memory",
            "DefaultCPUAllocator: can't allocate memory",   # torch on Linux and macOS
            "DefaultCPUAllocator: not enough memory",       # torch on Windows
            "could not create a primitive",                 # oneDNN (CPU convolutions) when its buffers fail
            "Cannot allocate memory")                       # any library's ENOMEM (a thread's stack, say)


def out_of_memory(e: BaseException) -> bool:
    """An allocation failure on the GPU or the CPU, whichever library raised it."""
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or any(m in str(e) for m in MESSAGES)


class SmallerBatch(ExtremeAugError):
    """Training ran out of memory at a batch size with a smaller one left to try; `train` tries it.

    Args:
        batch_size: the next size to try, half the one that failed.
        resume: continue the last checkpoint (there is one) rather than start again.
    """

    def __init__(self, message: str, batch_size: int, resume: bool):
        super().__init__(message)
        self.batch_size, self.resume = batch_size, resume

    def retried(self, cfg: TrainConfig, opts: RunOptions, spent_s: float) -> Tuple[TrainConfig, RunOptions]:
        """The settings of the next attempt: the smaller batch, and what is left of the time budget."""
        budget = opts.time_budget_min
        if budget is not None:
            budget = max(budget - spent_s / 60, 1 / 60)
        return (replace(cfg, batch_size=self.batch_size),
                replace(opts, resume=self.resume or opts.resume, time_budget_min=budget))

    def describe(self) -> str:
        return (f"{self}; trying again at batch size {self.batch_size} "
                + ("from the last checkpoint" if self.resume else "from the start"))


def memory_error(batch_size: int, width: int, device: str, checkpoint: Path, retry: bool) -> ExtremeAugError:
    """What training says when it runs out of memory: a smaller batch to try, or the error and its advice.

    Args:
        device: the device type, "cuda" or "cpu".
        checkpoint: the run's checkpoint file, which a retry or the advice continues when it exists.
        retry: try a smaller batch while there is one (not under torchrun: the ranks would have to agree).
    """
    kept, smaller = checkpoint.exists(), batch_size // 2
    what = f"{'GPU ' if device == 'cuda' else ''}out of memory at batch size {batch_size} and width {width}"
    if retry and smaller >= 1:
        return SmallerBatch(what, smaller, kept)
    if batch_size == 1:
        advice = "one patch per step is the smallest batch: start again with a lower --width" + (
            f", or continue the checkpoint in {checkpoint.parent} with --resume --device cpu" if kept else "")
    elif kept:
        advice = (f"the last checkpoint in {checkpoint.parent} is kept: continue it with --resume and a lower "
                  "--batch-size, or --resume --device cpu")
    else:
        advice = "nothing was written yet: start again with a lower --batch-size"
    return ExtremeAugError(f"{what}; {advice}")


def release() -> None:
    """Give the failed attempt's memory back before the next one allocates its own: Python's garbage, the blocks
    torch's CUDA allocator keeps cached, and on Linux the heap pages glibc keeps for freed blocks (a failed batch
    of 512 at width 2 left 850-898 MiB resident; 426 MiB after the trim: benchmarks/retry_memory.py)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """glibc's `malloc_trim(0)`: free pages inside the heap go back to the system. Nothing where the C library
    has no such call (Windows, macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
