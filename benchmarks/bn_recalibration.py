"""Is the under-segmentation in BatchNorm's statistics? Training normalises each layer with the statistics of its
batch of augmented patches and keeps their running average; segmentation runs whole, unaugmented slices (256 pixels
where the patches were 128) through that average. This re-estimates the statistics (weights untouched, an exact
average over 8-slice batches) on one of three inputs made from the training scan, and scores the model before and
after on other scans:

    slices     its whole slices, unaugmented
    patches    augmented patches as training cuts them (the training's own distribution, 200 batches of 16)
    augmented  augmented whole slices (training's distribution at segmentation's size, 8 draws per slice)

    python benchmarks/bn_recalibration.py MODEL_DIR TRAIN_IMAGE --on slices|patches|augmented \\
        --test IMAGE MASK [--test IMAGE MASK ...]

MODEL_DIR is a `train --out` folder (model.pt, model.onnx); prints Dice and predicted / reference voxels of the union
per test scan, before and after (docs/results.md §15).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from extremeaug.data.io import read_binary, read_scan
from extremeaug.data.preprocess import Preprocessing, scan_to_slices, with_context
from extremeaug.evaluation.metrics import evaluate
from extremeaug.inference.segmenter import Segmenter
from extremeaug.networks.export import export_onnx
from extremeaug.training.augment import AugmentConfig, augmented_batch, patch_size, patch_table, sample_params
from extremeaug.training.checkpoint import load, load_weights


@torch.no_grad()
def recalibrate(net: torch.nn.Module, inputs: torch.Tensor, batch: int = 8) -> None:
    """Every BatchNorm layer's running mean and variance: their average over batches of `inputs`."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None   # a cumulative average
    net.train()
    for s in range(0, len(inputs), batch):
        net(inputs[s:s + batch].contiguous(memory_format=torch.channels_last))
    net.eval()


def augmented(inputs: torch.Tensor, meta: dict, patch: int, rows: torch.Tensor) -> torch.Tensor:
    """`rows` (slice, y0, x0) cut as `patch`-pixel patches under training's random transforms."""
    g = torch.Generator().manual_seed(0)
    params = sample_params(len(rows), AugmentConfig.for_slices(inputs.shape[-1], bool(meta.get("augmentation", True))),
                           g, torch.device("cpu"))
    return augmented_batch(inputs, torch.zeros((len(inputs), 1) + inputs.shape[-2:]), rows, params, patch)[0]


def estimate_on(kind: str, inputs: torch.Tensor, meta: dict) -> torch.Tensor:
    size = inputs.shape[-1]
    if kind == "slices":
        return inputs
    if kind == "augmented":
        return augmented(inputs, meta, size, patch_table(len(inputs), size, size, size).repeat(8, 1))
    patch = patch_size(size)
    table = patch_table(len(inputs), size, patch, patch // 2)
    return augmented(inputs, meta, patch, table[torch.randint(len(table), (3200,),
                                                              generator=torch.Generator().manual_seed(1))])


def scores(model: Path, tests) -> dict:
    segmenter, out = Segmenter(model, "cpu"), {}
    for image, mask in tests:
        m = evaluate(segmenter.segment(read_scan(image))[0], read_binary(mask))
        out[Path(image).name] = (round(m["dice"], 4), round(m["prediction_voxels"] / max(m["reference_voxels"], 1), 4))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("train_image")
    p.add_argument("--on", choices=["slices", "patches", "augmented"], required=True)
    p.add_argument("--test", nargs=2, action="append", required=True, metavar=("IMAGE", "MASK"))
    a = p.parse_args()
    meta = json.loads(load(a.model_dir / "model.pt")["metadata_json"])
    net = load_weights(a.model_dir / "model.pt")
    slices, _ = scan_to_slices(read_scan(a.train_image), Preprocessing.from_dict(meta["preprocessing"]))
    recalibrate(net, estimate_on(a.on, torch.from_numpy(with_context(slices, int(meta.get("context", 0)))), meta))
    after = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(net, after, meta)
    rows = {"before": scores(a.model_dir / "model.onnx", a.test), "after": scores(after, a.test)}
    for name in rows["before"]:
        print(f"{name}: Dice {rows['before'][name][0]:.4f} -> {rows['after'][name][0]:.4f}, predicted / reference "
              f"{rows['before'][name][1]:.3f} -> {rows['after'][name][1]:.3f}")
    for when, r in rows.items():
        print(f"{when}: mean Dice {statistics.mean(v[0] for v in r.values()):.4f}, predicted / reference "
              f"{statistics.mean(v[1] for v in r.values()):.3f}")


if __name__ == "__main__":
    main()
