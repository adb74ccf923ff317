"""Soft Dice over the whole batch (empty patches cannot dominate), per structure channel and averaged over
them (a small structure weighs as much as a large one), optionally plus BCE; or the Tversky loss, which counts a
missed voxel more than an extra one (Salehi et al., 2017: alpha 0.3 on false positives, beta 0.7 on misses)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..common.config import Loss

Sums = Optional[Callable[[torch.Tensor], torch.Tensor]]
TVERSKY_MISS = 0.7   # beta: the weight of a missed voxel; a false positive weighs 1 - beta


def overlap_sums(prob: torch.Tensor, target: torch.Tensor, sums: Sums = None,
                 weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[3, K]: the batch's soft intersection, predicted and reference totals per structure channel; tensors [B, K,
    H, W].

    Args:
        sums: turns this batch's sums into the global batch's (several ranks: `World.global_sums`).
        weight: per voxel, [B, 1, H, W] (pseudo-labels weigh less, their uncertain voxels nothing)."""
    dims = [0] + list(range(2, prob.dim()))
    weighted = prob if weight is None else prob * weight   # a voxel counts `weight` times in every sum
    parts = torch.stack([(weighted * target).sum(dims), weighted.sum(dims),
                         (target if weight is None else target * weight).sum(dims)])
    return sums(parts) if sums else parts


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0, sums: Sums = None,
              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over channels of the batch soft Dice (`overlap_sums`' arguments)."""
    inter, p, t = overlap_sums(prob, target, sums, weight).unbind(0)
    return ((2 * inter + eps) / (p + t + eps)).mean()


def tversky(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0, sums: Sums = None,
            weight: Optional[torch.Tensor] = None, miss: float = TVERSKY_MISS) -> torch.Tensor:
    """Mean over channels of the batch Tversky index TP / (TP + (1 - miss) FP + miss FN); miss 0.5 is Dice."""
    inter, p, t = overlap_sums(prob, target, sums, weight).unbind(0)
    return ((inter + eps / 2) / (inter + (1 - miss) * (p - inter) + miss * (t - inter) + eps / 2)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: Loss = Loss.DICE,
                      sums: Sums = None, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    logits, kind = logits.float(), Loss.parse(kind)
    prob = torch.sigmoid(logits)
    loss = 1 - (tversky(prob, target, sums=sums, weight=weight) if kind == Loss.TVERSKY else
                soft_dice(prob, target, sums=sums, weight=weight))
    if kind == Loss.DICE_BCE:
        loss = loss + F.binary_cross_entropy_with_logits(logits, target, weight=weight)
    return loss
