"""Training progress for people (a tqdm bar) and for programs (JSON lines, one object per line).

Each JSON line has `event` (events.py lists the kinds) and `time` (Unix seconds). `progress` lines carry
loss and Dice over the steps since the previous line; they come at most once per `interval` seconds and
double as a heartbeat for background front ends.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Tuple

import torch
from tqdm import tqdm

from ..common.events import EventWriter, format_eta


class ProgressReporter:
    def __init__(self, path: Optional[str], total_steps: int, show: bool = True, initial: int = 0,
                 budget_s: Optional[float] = None, interval: float = 1.0):
        self.total, self.budget_s, self.interval = total_steps, budget_s, interval
        self.file = EventWriter(path) if path else None
        # tqdm's own "remaining" ignores the time budget; the postfix carries our ETA instead
        self.bar = tqdm(total=total_steps, initial=initial, disable=not show, unit="step", file=sys.stderr,
                        dynamic_ncols=True, mininterval=interval,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]")
        self.t0 = self.last_t = time.monotonic()
        self.last_step, self.patches = initial, 0

    def event(self, name: str, **fields) -> None:
        if self.file:
            self.file.write(name, **fields)

    def step(self, step: int, epoch: int, metrics: Callable[[], Tuple[float, float]],
             batch: int) -> Optional[Tuple[float, float]]:
        """Count a step; every `interval` seconds report and return (loss, dice) of the window."""
        self.bar.update(1)
        self.patches += batch
        now = time.monotonic()
        if now - self.last_t < self.interval and step < self.total:
            return None
        loss, dice = metrics()
        rate = self.patches / (now - self.last_t)
        steps_per_s = (step - self.last_step) / (now - self.last_t)
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else None
        if self.budget_s is not None:
            left = max(self.budget_s - (now - self.t0), 0.0)
            eta = left if eta is None else min(eta, left)
        self.bar.set_postfix(loss=f"{loss:.3f}", dice=f"{dice:.3f}", patches_s=f"{rate:.0f}",
                             eta=format_eta(eta), refresh=False)
        self.event("progress", step=step, steps_total=self.total, epoch=epoch + 1, loss=round(loss, 5),
                   dice=round(dice, 5), patches_per_s=round(rate, 1), eta_s=None if eta is None else round(eta, 1))
        self.last_t, self.last_step, self.patches = now, step, 0
        return loss, dice

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()
            self.file = None


class EpochStats:
    """Loss and Dice sums over the epoch and over the last progress window, kept on the device so a
    step does not wait for the GPU; they are read only when reported."""

    def __init__(self, device: torch.device):
        self.epoch = torch.zeros(4, device=device)    # loss, intersection, total, steps
        self.window = torch.zeros(4, device=device)
        self.steps, self.t0 = 0, time.monotonic()

    def add(self, loss, inter, total) -> None:
        row = torch.stack([loss.float(), inter.float(), total.float(), torch.ones_like(loss, dtype=torch.float)])
        self.epoch += row
        self.window += row
        self.steps += 1

    @staticmethod
    def _summary(sums: torch.Tensor):
        loss, inter, total, steps = sums.tolist()
        return loss / max(steps, 1), (1.0 if total == 0 else 2 * inter / total)

    def summary(self):
        return self._summary(self.epoch)

    def window_summary(self):
        """Loss and Dice since the previous call (what the progress bar shows)."""
        result = self._summary(self.window)
        self.window.zero_()
        return result

    def seconds(self) -> float:
        return max(time.monotonic() - self.t0, 1e-9)
