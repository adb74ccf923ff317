"""Soft Dice over the whole batch (empty patches cannot dominate), per structure channel and averaged over
them (a small structure weighs as much as a large one), optionally plus BCE."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..common.config import Loss

Sums = Optional[Callable[[torch.Tensor], torch.Tensor]]


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0, sums: Sums = None) -> torch.Tensor:
    """Mean over channels of the batch soft Dice; tensors [B, K, H, W].

    Args:
        sums: turns this batch's [3, K] sums into the global batch's (several ranks: `World.global_sums`)."""
    dims = [0] + list(range(2, prob.dim()))
    parts = torch.stack([(prob * target).sum(dims), prob.sum(dims), target.sum(dims)])
    inter, p, t = (sums(parts) if sums else parts).unbind(0)
    return ((2 * inter + eps) / (p + t + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: Loss = Loss.DICE,
                      sums: Sums = None) -> torch.Tensor:
    logits = logits.float()
    loss = 1 - soft_dice(torch.sigmoid(logits), target, sums=sums)
    if Loss.parse(kind) == Loss.DICE_BCE:
        loss = loss + F.binary_cross_entropy_with_logits(logits, target)
    return loss
