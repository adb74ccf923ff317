"""Weight averaging (`train --average-weights`): the model is the mean of the weights over the run's second half.

A model trained on one scan ends wherever its last batches left it. The mean of the weights that the second half of
the cosine schedule passes through (stochastic weight averaging, Izmailov et al. 2018; torch's `AveragedModel`) sits
inside the region those weights wander over rather than at one edge of it. BatchNorm's running statistics are
averaged with the weights (`use_buffers`), so the average needs no pass over the data afterwards. Measured in
docs/results.md §15: no gain over the last weights with the cosine schedule's 5 % floor, so it is off by default.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

START = 0.5   # the schedule's progress from which every step's weights join the average


class WeightAverage:
    """The running mean of a network's weights and BatchNorm statistics, from progress START on."""

    def __init__(self, net: torch.nn.Module):
        self.model = AveragedModel(net, use_buffers=True)

    def update(self, net: torch.nn.Module, progress: float) -> None:
        if progress >= START:
            self.model.update_parameters(net)

    @property
    def count(self) -> int:
        """How many steps' weights the average holds (0 before the second half)."""
        return int(self.model.n_averaged)

    def weights(self) -> dict:
        """The averaged weights as the network's own state dict."""
        return self.model.module.state_dict()

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
