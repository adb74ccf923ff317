"""What int8 would buy segmentation on a CPU (issue 14's 2-second goal): the model quantised by onnxruntime
(static, QDQ, per-channel int8 weights, uint8 activations calibrated on the training scan's own slices),
timed against the float model on the same slices, and both scored on held-out scans. A measurement, not a
feature: nothing in the engine writes or reads int8 models.

    python benchmarks/int8_check.py --model MODEL.onnx --train-image SCAN --test IMG MASK [--test ...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from extremeaug.data.io import read_binary, read_scan
from extremeaug.data.preprocess import scan_to_slices
from extremeaug.evaluation.metrics import evaluate
from extremeaug.inference.segmenter import Segmenter


class Slices(CalibrationDataReader):
    def __init__(self, name: str, slices):
        self.batches = iter([{name: slices[i:i + 4, None]} for i in range(0, len(slices), 8)])

    def get_next(self):
        return next(self.batches, None)


def model_seconds(session, name: str, slices) -> float:
    x = slices[:, None]
    session.run(None, {name: x[:8]})
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(0, len(x), 8):
            session.run(None, {name: x[i:i + 8]})
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--train-image", required=True)
    p.add_argument("--test", nargs=2, action="append", metavar=("IMAGE", "MASK"), required=True)
    p.add_argument("--out")
    a = p.parse_args()
    segmenter = Segmenter(a.model, "cpu")
    name = segmenter.session.get_inputs()[0].name
    slices, _ = scan_to_slices(read_scan(a.train_image), segmenter.prep)
    int8 = Path(tempfile.mkdtemp(prefix="extremeaug-int8-")) / "model_int8.onnx"
    quantize_static(a.model, str(int8), Slices(name, slices), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    sessions = {"float32": segmenter.session,
                "int8": ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])}
    report = {"model": a.model, "model_seconds": {k: model_seconds(s, name, slices) for k, s in sessions.items()},
              "dice": {}}
    for image, mask in a.test:
        scan, ref = read_scan(image), read_binary(mask)
        for kind, session in sessions.items():
            segmenter.session = session
            report["dice"].setdefault(Path(image).name, {})[kind] = round(evaluate(segmenter.segment(scan)[0],
                                                                                     ref)["dice"], 4)
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
