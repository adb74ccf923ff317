"""Soft Dice over the whole batch (empty patches cannot dominate), per structure channel and averaged over
them (a small structure weighs as much as a large one), optionally plus BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Loss


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over channels of the batch soft Dice; tensors [B, K, H, W]."""
    dims = [0] + list(range(2, prob.dim()))
    inter = (prob * target).sum(dims)
    return ((2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: Loss = Loss.DICE) -> torch.Tensor:
    logits = logits.float()
    loss = 1 - soft_dice(torch.sigmoid(logits), target)
    if Loss.parse(kind) == Loss.DICE_BCE:
        loss = loss + F.binary_cross_entropy_with_logits(logits, target)
    return loss
