"""Where a trained model's missing voxels are: its class probabilities on held-out scans, decided at several
thresholds (before the small-component clean-up), scored against the references (per structure: Dice and
predicted/reference voxels). A model
that under-segments at 0.5 but not at a lower threshold puts the boundary's probability below 0.5: the
loss, not the grid (benchmarks/pipeline_ceiling.py) or the augmentation (benchmarks/augment_mask_bias.py).

    extremeaug train --image A_image.nii.gz --label A_mask.nii.gz --out model --time-budget 5 --device cpu
    python benchmarks/decision_bias.py model/model.onnx DATA --skip A --thresholds 0.5 0.4 0.3
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from extremeaug.inference.segmenter import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data", help="a folder of *_image.nii.gz / *_mask.nii.gz pairs")
    parser.add_argument("--skip", nargs="*", default=[], help="scan names to leave out (the training scans)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3])
    args = parser.parse_args()
    segmenter = Segmenter(args.model, device="cpu")
    values = [lab.value for lab in segmenter.labels]
    scores = {}   # (threshold, value) -> [(dice, ratio)]
    for mask_path in sorted(Path(args.data).glob("*_mask.nii.gz")):
        name = mask_path.name.replace("_mask.nii.gz", "")
        if name in args.skip:
            continue
        scan = sitk.ReadImage(str(mask_path).replace("_mask", "_image"))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))
        probs = segmenter.class_probabilities(scan)   # [structures, z, y, x] on the scan's grid
        for t in args.thresholds:   # the segmenter's own decision, its clean-up off
            mask, _, _ = segmenter.decide(probs, scan, t, min_component_mm3=0.0, keep_largest=False, min_relative=0.0,
                                          uncertainty=False)
            decided = sitk.GetArrayFromImage(mask)
            for v in values + ["union"]:
                p, r = (decided > 0, reference > 0) if v == "union" else (decided == v, reference == v)
                dice = 2 * np.count_nonzero(p & r) / max(np.count_nonzero(p) + np.count_nonzero(r), 1)
                scores.setdefault((t, v), []).append((dice, np.count_nonzero(p) / max(np.count_nonzero(r), 1)))
    print("| threshold | structure | scans | Dice | predicted / reference |")
    print("|---|---|---|---|---|")
    for (t, v), rows in sorted(scores.items(), key=lambda kv: (-kv[0][0], str(kv[0][1]))):
        d, q = np.array(rows).T
        print(f"| {t} | {v} | {len(rows)} | {d.mean():.3f} | {q.mean():.3f} |")


if __name__ == "__main__":
    main()
