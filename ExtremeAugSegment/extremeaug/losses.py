"""Soft Dice over the whole batch (empty patches cannot dominate), optionally plus BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import Loss


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    inter = (prob * target).sum()
    return (2 * inter + eps) / (prob.sum() + target.sum() + eps)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: Loss = Loss.DICE) -> torch.Tensor:
    logits = logits.float()
    loss = 1 - soft_dice(torch.sigmoid(logits), target)
    if Loss.parse(kind) == Loss.DICE_BCE:
        loss = loss + F.binary_cross_entropy_with_logits(logits, target)
    return loss


@torch.no_grad()
def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    pred = (logits > 0).float()
    denom = float(pred.sum() + target.sum())
    return 1.0 if denom == 0 else float(2 * (pred * target).sum()) / denom
