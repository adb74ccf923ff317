"""Which multi-structure formulation (not a test; docs/results.md section 10): K sigmoid channels with the
batch soft Dice per channel (what `train` does; also with BCE, `--loss dice+bce`) against a softmax over
K + 1 classes with multi-class soft Dice, with and without cross-entropy (nnU-Net's choice). Same scan,
same seed, same number of steps, same augmentation draws (a constant learning rate: the schedule spans
100 epochs); scored per structure on held-out scans, on the slice grid, each formulation decoded its own
way (sigmoid: the most probable structure where it passes 0.5; softmax: the argmax).

    python benchmarks/formulation.py [--image SCAN --label MASK --val-image V --val-label VM ...]
                                     [--steps 300] [--out FILE.json]

Without --image: a three-structure phantom trains and two others are scored.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from extremeaug.data.phantom import write_phantoms
from extremeaug.networks.model import ResUNet
from extremeaug.training.augment import AffineParams, augmented_batch
from extremeaug.training.dataset import Case
from extremeaug.training.train import RunOptions, TrainConfig, Trainer

VARIANTS = ("sigmoid-dice", "sigmoid-dice+bce", "softmax-dice", "softmax-dice+ce")


class FormulationTrainer(Trainer):
    """The engine's trainer with the loss (and, for softmax, a K + 1 channel head) swapped."""

    def __init__(self, variant: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.variant = variant
        if variant.startswith("softmax"):
            torch.manual_seed(self.cfg.seed)
            self.net = ResUNet(self.cfg.width, classes=len(self.labels) + 1).to(self.device,
                                                                               memory_format=torch.channels_last)
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)

    def _forward(self, arguments):
        if not self.variant.startswith("softmax"):
            return super()._forward(arguments)
        inputs, masks, rows, angle, scale, shift, _ = arguments
        x, y = augmented_batch(inputs, masks, rows, AffineParams(angle, scale, shift))
        logits = self.net(x.contiguous(memory_format=torch.channels_last)).float()
        target = class_index(y)
        prob = logits.softmax(1)[:, 1:]
        onehot = F.one_hot(target, y.shape[1] + 1).permute(0, 3, 1, 2)[:, 1:].float()
        inter, total = (prob * onehot).sum((0, 2, 3)), (prob + onehot).sum((0, 2, 3))
        loss = 1 - ((2 * inter + 1) / (total + 1)).mean()
        if self.variant.endswith("+ce"):
            loss = loss + F.cross_entropy(logits, target)
        return loss, inter.sum().detach(), total.sum().detach()

    @torch.no_grad()
    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """Slices [n, S, S] -> class index [n, S, S] (0 background, k structure k)."""
        self.net.eval()
        out = []
        for s in range(0, len(images), 8):
            logits = self.net(images[s:s + 8].unsqueeze(1))
            if self.variant.startswith("softmax"):
                out.append(logits.argmax(1))
            else:
                p = torch.sigmoid(logits)
                top, arg = p.max(1)
                out.append(torch.where(top > 0.5, arg + 1, torch.zeros_like(arg)))
        self.net.train()
        return torch.cat(out)


def class_index(masks: torch.Tensor) -> torch.Tensor:
    """Channels [B, K, H, W] -> class index [B, H, W] (a later structure wins an overlap)."""
    k = torch.arange(1, masks.shape[1] + 1, device=masks.device).view(1, -1, 1, 1)
    return (masks * k).amax(1).long()


def per_structure_dice(pred: torch.Tensor, ref: torch.Tensor, k: int) -> list:
    dice = []
    for c in range(1, k + 1):
        p, r = pred == c, ref == c
        total = int(p.sum() + r.sum())
        dice.append(2 * int((p & r).sum()) / total if total else 1.0)
    return dice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image")
    ap.add_argument("--label")
    ap.add_argument("--val-image", action="append", default=[])
    ap.add_argument("--val-label", action="append", default=[])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="a subset, comma-separated")
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.image:
            train, val = Case(a.image, a.label), [Case(i, m) for i, m in zip(a.val_image, a.val_label)]
        else:
            pairs = write_phantoms(work / "data", 3, structures=True)
            train, val = Case(*map(str, pairs[0])), [Case(*map(str, p)) for p in pairs[1:]]
        rows = []
        for variant in a.variants.split(","):
            loss = "dice+bce" if variant == "sigmoid-dice+bce" else "dice"
            t = FormulationTrainer(variant, TrainConfig(loss=loss), [train], val, work / variant,
                                   RunOptions(device="cpu", show_progress=False))
            t0 = time.perf_counter()
            while t.step < a.steps:
                epoch, k = divmod(t.step, t.steps_per_epoch)
                t.train_step(t.order.parts(epoch, k), time.perf_counter() - t0)
            seconds = time.perf_counter() - t0
            pred = t.decode(t.val_set.images)
            ref = class_index(t.val_set.masks.float())
            cases = []
            for case, sl in t.val_set.per_case():
                dice = per_structure_dice(pred[sl], ref[sl], len(t.labels))
                union = per_structure_dice((pred[sl] > 0).long(), (ref[sl] > 0).long(), 1)[0]
                cases.append({"case": case.name, "dice": [round(d, 4) for d in dice], "union_dice": round(union, 4)})
            mean = [round(sum(c["dice"][i] for c in cases) / len(cases), 4) for i in range(len(t.labels))]
            rows.append({"variant": variant, "steps": t.step, "seconds": round(seconds, 1), "cases": cases,
                         "mean_dice_per_structure": mean, "mean_dice": round(sum(mean) / len(mean), 4),
                         "mean_union_dice": round(sum(c["union_dice"] for c in cases) / len(cases), 4)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": platform.processor() or platform.machine(), "structures": [s.name for s in t.labels],
              "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
