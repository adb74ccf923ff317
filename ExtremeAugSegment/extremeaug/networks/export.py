"""ONNX export with everything segmentation needs in the file's metadata, checked against torch."""
from __future__ import annotations

import inspect
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..common.errors import ExtremeAugError
from ..common.files import write_bytes
from .metadata import FORMAT_VERSION, METADATA_KEY
from .model import ProbabilityModel, ResUNet

PARITY_TOLERANCE = 1e-3  # max |p_onnx - p_torch| on probabilities


def torchscript_exporter() -> dict:
    """The keyword that picks the TorchScript exporter: torch >= 2.9 defaults to the dynamo exporter (which
    needs onnxscript), torch < 2.5 has no `dynamo` keyword and only the TorchScript one."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def onnx_bytes(net: ResUNet, opset: int = 17) -> bytes:
    """Serialise the probability model (dynamic batch, height and width) with the TorchScript exporter,
    which works unchanged from torch 2.1 to 2.13 and needs no onnxscript."""
    model = ProbabilityModel(net).cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, net.in_channels, 256, 256),), buffer, **torchscript_exporter(),
                          input_names=["image"], output_names=["probability"], opset_version=opset,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "probability": {0: "batch", 2: "height", 3: "width"}})
    return buffer.getvalue()


def with_metadata(model_bytes: bytes, metadata: dict) -> bytes:
    import onnx

    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.producer_name = "extremeaug"
    return proto.SerializeToString()


def parity(net: ResUNet, model_bytes: bytes, size=(2, 1, 256, 256), seed: int = 0) -> float:
    """Max abs difference between onnxruntime (CPU) and torch eager on a smooth random image (with the net's
    input channels, whatever `size` says)."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(seed)
    size = (size[0], net.in_channels) + tuple(size[2:])
    x = torch.nn.functional.avg_pool2d(torch.rand(size, generator=g), 5, 1, 2)
    with torch.no_grad():
        expected = ProbabilityModel(net).cpu().eval()(x).numpy()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    return float(np.abs(got - expected).max())


def export_onnx(net: ResUNet, path: str | Path, metadata: dict) -> float:
    """Write `path` atomically after checking ONNX against torch; returns the max abs difference."""
    was_training = net.training
    net.eval()
    try:
        data = with_metadata(onnx_bytes(net), {"format_version": FORMAT_VERSION, **metadata})
        diff = parity(net, data)
    finally:
        net.train(was_training)
    if not diff <= PARITY_TOLERANCE:
        raise ExtremeAugError(f"ONNX export differs from torch by {diff:.2e} (> {PARITY_TOLERANCE}); not written")
    write_bytes(data, path)
    return diff
