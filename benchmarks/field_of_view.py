"""Does a model see a scan of another field of view as it saw its training scan? The models of `options.py` reports
(option --base), each scored on its test scans whole and cut to a narrower field of view (--cut AXIS:FIRST:LAST,
voxel indices on the LPS-oriented scan: `y:30:190` keeps 160 of a lumbar MRI's 221 anterior-posterior millimetres),
with its slices stretched over each scan's extent (the paper's grid, and fitted-grid models before `pixel_mm`) and
at its training scan's pixel size (`Preprocessing.pixel_mm`; taken from the training scan for a model that stores
none, which is what training stores today). Per model and variant: mean union Dice and predicted / reference, and
the paired gains of the pixel size over the stretch.

    python benchmarks/field_of_view.py bench-out/avg-discs-s1.json --base last+smooth --cut y:30:190 \\
        --out bench-out/fov-discs-s1.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import emit  # noqa: E402
from options import gains, pairs, score  # noqa: E402

from extremeaug.data.io import read_scan, write_image  # noqa: E402
from extremeaug.data.preprocess import ORIENTATION, grid_pixel_mm  # noqa: E402
from extremeaug.inference.segmenter import Segmenter  # noqa: E402

VARIANTS = ("whole-stretch", "whole-pixel", "cut-stretch", "cut-pixel")


def cut_scans(scans: dict, cut: str, folder: Path) -> dict:
    """{id: (image, mask)} of the scans cut along one LPS axis, written to `folder`."""
    axis, first, last = cut.split(":")
    index = "xyz".index(axis)
    out = {}
    for scan_id, paths in scans.items():
        written = []
        for kind, path in zip(("image", "mask"), paths):
            image = sitk.DICOMOrient(sitk.ReadImage(path), ORIENTATION)
            bounds = [slice(None)] * 3
            bounds[index] = slice(int(first), int(last))
            written.append(str(folder / f"{scan_id}_{kind}.nii.gz"))
            write_image(image[tuple(bounds)], written[-1])
        out[scan_id] = tuple(written)
    return out


def segmenter(model: Path, train_image: str, pixel: bool) -> Segmenter:
    seg = Segmenter(model, "cpu")
    if not pixel:
        seg.prep = replace(seg.prep, pixel_mm=None)
    elif seg.prep.pixel_mm is None:
        seg.prep = replace(seg.prep, pixel_mm=grid_pixel_mm(read_scan(train_image), seg.prep.plane,
                                                            seg.prep.slice_size))
    return seg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--base", required=True, help="the option whose models are scored")
    p.add_argument("--cut", metavar="AXIS:FIRST:LAST", help="without it, the whole scans only")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args()
    result = json.loads(a.out.read_text()) if a.out.exists() else {"cut": a.cut, "runs": []}
    done = {(r["train"], r["seed"], r["option"]) for r in result["runs"]}
    folder = Path(tempfile.mkdtemp(prefix="extremeaug-fov-"))
    for report in a.reports:
        source = json.loads(report.read_text())
        scans = pairs(Path(source["data"]))
        cut = cut_scans(scans, a.cut, folder) if a.cut else {}
        for run in (r for r in source["runs"] if r["option"] == a.base):
            for variant in VARIANTS if a.cut else VARIANTS[:2]:
                if (run["train"], run["seed"], variant) in done:
                    continue
                tests = {k: (cut if variant.startswith("cut") else scans)[k] for k in run["per_scan"]}
                model = Path(run["model"]) / "model.onnx"
                seg = segmenter(model, scans[run["train"]][0], variant.endswith("pixel"))
                scored = score(model, tests, run.get("segment") or "", seg)
                result["runs"].append({"train": run["train"], "seed": run["seed"], "option": variant,
                                       "mean_dice": scored["mean_dice"], "mean_ratio": scored["mean_ratio"],
                                       "per_scan": scored["per_scan"]})
                emit(result, a.out)
    pairs_of = [("whole-stretch", "whole-pixel"), ("cut-stretch", "cut-pixel"), ("whole-stretch", "cut-stretch"),
                ("whole-stretch", "cut-pixel")]
    result["gains"] = {f"{other} over {base}": gains(result["runs"], base, other) for base, other in pairs_of}
    emit(result, a.out)


if __name__ == "__main__":
    main()
