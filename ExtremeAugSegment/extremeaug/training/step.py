"""The forward half of a training step as one module, so that `torch.compile` makes one graph of it: cutting and
transforming the patches (`affine_grid`, `grid_sample`, the mask thresholds), the optional intensity changes,
the network (bf16 autocast on CUDA, channels-last), the soft Dice loss and the batch's Dice sums. Compiled, the
elementwise work around the network fuses into its kernels and nothing crosses back to Python between them;
run eagerly, the same module is the unfused step.

Every random number of a step is drawn before it, from the step's own generator (`Draws`): the compiled and the
eager step see the same patches and transforms, and a resumed run the ones an uninterrupted run would.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..common.config import Loss
from ..common.portable import user_cache_folder
from .augment import (PATCH, AffineParams, AugmentConfig, IntensityDraws, PoolParams, apply_intensity,
                      augmented_batch, intensity_draws, sample_params, step_generator, warp_draws)
from .losses import Sums, segmentation_loss

INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"


@dataclass
class Draws:
    """What one step takes from its generator, in the order it always has: the global batch's geometric
    transforms, then (with --intensity) this rank's intensity changes, then (with --elastic) its warps."""
    rows: torch.Tensor                       # [B, 3]: slice, y0, x0 of each patch
    params: AffineParams
    intensity: Optional[IntensityDraws] = None
    warp: Optional[torch.Tensor] = None

    @classmethod
    def draw(cls, rows: torch.Tensor, step: int, seed: int, bounds: AugmentConfig, intensity: bool, shard: slice,
             channels: int, patch: int = PATCH, pool: Optional[PoolParams] = None, parts=None,
             pseudo: Optional[torch.Tensor] = None) -> "Draws":
        """Args:
            rows: the global batch's patches; `shard` is this rank's share of them (all of it in one process).
            bounds: the transforms' bounds (`AugmentConfig.for_slices`).
            pool: the paper's fixed augmented set (`--augment-mode pool`), which takes its transforms per round.
            pseudo: the pseudo-labeled patches (`SelfTraining.mixed.patches`): the second half of the batch is drawn
                from them at random instead (a step costs what it did), after the draws a run without unlabeled
                scans makes, so until pseudo-labels join the run is that run."""
        generator = step_generator(seed, step, rows.device)
        params = pool.for_parts(parts) if pool is not None else sample_params(len(rows), bounds, generator,
                                                                              rows.device)
        if pseudo is not None:
            keep = len(rows) - len(rows) // 2
            picked = pseudo[torch.randint(len(pseudo), (len(rows) - keep,), generator=generator, device=rows.device)]
            rows = torch.cat([rows[:keep], picked])
            params = params[:keep] + sample_params(len(picked), bounds, generator, rows.device)
        rows, params = rows[shard], params[shard]
        jitter = intensity_draws(len(rows), channels, generator, rows.device, patch) if intensity else None
        warp = warp_draws(len(rows), generator, rows.device) if bounds.elastic else None
        return cls(rows, params, jitter, warp)

    def arguments(self, inputs: torch.Tensor, masks: torch.Tensor, slice_weight: Optional[torch.Tensor] = None
                  ) -> tuple:
        """Positional tensors for `TrainingStep` (plain tensors: what a compiled graph takes best)."""
        return (inputs, masks, self.rows, self.params.angle_rad, self.params.scale, self.params.shift_px,
                self.intensity, slice_weight, self.warp)


class TrainingStep(torch.nn.Module):
    """(slices, masks, draws) -> (loss, Dice intersection, Dice total) of one batch.

    Args:
        model: the network (the plain one, or DistributedDataParallel around it).
        loss: the loss to minimise.
        sums: turns this rank's Dice sums into the global batch's (several ranks: `World.global_sums`).
        patch: pixels a side of the patches cut."""

    def __init__(self, model: torch.nn.Module, loss: Loss, sums: Sums = None, patch: int = PATCH):
        super().__init__()
        self.model, self.loss, self.sums, self.patch = model, Loss.parse(loss), sums, patch

    def forward(self, inputs: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor, angle: torch.Tensor,
                scale: torch.Tensor, shift: torch.Tensor, intensity: Optional[IntensityDraws] = None,
                slice_weight: Optional[torch.Tensor] = None, warp: Optional[torch.Tensor] = None):
        """Args:
            slice_weight: with pseudo-labels, each slice's weight [n]; the masks' last channel then marks the
                voxels to leave out (uncertain ones), which weigh nothing."""
        x, y = augmented_batch(inputs, masks, rows, AffineParams(angle, scale, shift), self.patch, warp)
        weight = None
        if slice_weight is not None:
            y, left_out = y[:, :-1], y[:, -1:]
            weight = (1 - left_out) * slice_weight[rows[:, 0]].view(-1, 1, 1, 1)
        if intensity is not None:
            x = apply_intensity(x, intensity)
        return self.patches(x, y, weight)

    def patches(self, x: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network and the loss on patches already cut (benchmarks feed them from other pipelines)."""
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            logits = self.model(x)
        loss = segmentation_loss(logits, y, self.loss, self.sums, weight)
        pred = (logits.detach() > 0).to(y.dtype)
        if weight is None:
            return loss, (pred * y).sum(), pred.sum() + y.sum()
        counted = (weight > 0).to(y.dtype)   # the training Dice over the voxels the loss sees
        return loss, (pred * y * counted).sum(), ((pred + y) * counted).sum()


def compile_step(step: torch.nn.Module, mode: Optional[str] = None) -> torch.nn.Module:
    """`torch.compile` with inductor's on-disk cache in a folder that outlives the temporary one, so a later run
    of the same width, batch and device starts in seconds instead of compiling again (docs/gpus.md).

    Args:
        mode: torch.compile's mode: None (default), "reduce-overhead" (CUDA graphs), "max-autotune"."""
    os.environ.setdefault(INDUCTOR_CACHE, str(inductor_cache()))
    return torch.compile(step, mode=mode)


def inductor_cache() -> Path:
    """Where compiled kernels are kept: TORCHINDUCTOR_CACHE_DIR when set, else the user's cache folder."""
    return Path(os.environ.get(INDUCTOR_CACHE) or user_cache_folder() / "inductor")
