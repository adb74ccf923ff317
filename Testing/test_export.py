from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from extremeaug.common.errors import ExtremeAugError
from extremeaug.inference.segmenter import Segmenter
from extremeaug.networks.export import PARITY_TOLERANCE, export_onnx, onnx_bytes, parity, torchscript_exporter
from extremeaug.networks.metadata import METADATA_KEY
from extremeaug.networks.model import ProbabilityModel, ResUNet


def trained_ish(width=4) -> ResUNet:
    """A net whose batch-norm statistics are not the defaults, so eval-mode export is really tested."""
    torch.manual_seed(1)
    net = ResUNet(width)
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 1, 64, 64) * 3)
    return net.eval()


def test_parity_and_metadata(tmp_path):
    net = trained_ish()
    diff = export_onnx(net, tmp_path / "m.onnx", {"preprocessing": {"plane": "axial"}, "augment": 50})
    assert diff <= PARITY_TOLERANCE
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert meta["augment"] == 50 and meta["format_version"] == 1


@pytest.mark.parametrize("shape", [(1, 1, 256, 256), (3, 1, 128, 192), (2, 1, 64, 64)])
def test_dynamic_batch_height_width(shape):
    net = trained_ish()
    data = onnx_bytes(net)
    assert parity(net, data, size=shape) < PARITY_TOLERANCE
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.rand(*shape).astype(np.float32)
    with torch.no_grad():
        expected = ProbabilityModel(net)(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"image": x})[0] - expected).max() < PARITY_TOLERANCE


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_foreign_and_corrupted_onnx_are_refused(tmp_path, random_model):
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(1, 1, 3), (torch.zeros(1, 1, 8, 8),), str(foreign),
                      **torchscript_exporter())
    with pytest.raises(ExtremeAugError, match="not written by extremeaug"):
        Segmenter(foreign)
    corrupted = tmp_path / "corrupted.onnx"
    corrupted.write_bytes(random_model.read_bytes()[:5000])
    with pytest.raises(ExtremeAugError, match="not a readable ONNX model"):
        Segmenter(corrupted)
    with pytest.raises(ExtremeAugError, match="no such model"):
        Segmenter(tmp_path / "absent.onnx")


def test_segmentation_needs_no_torch():
    """The Slicer module can segment with onnxruntime alone: infer must not import torch."""
    import subprocess
    import sys

    code = "import sys, extremeaug.inference.segmenter, extremeaug.evaluation.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_2_5d_model_segments_the_same_through_onnx_as_in_torch(tmp_path, phantoms):
    """Three input channels (a slice and its two neighbours): the ONNX file, its metadata and the Segmenter's
    stacking of neighbours give what torch gives on the same inputs."""
    import SimpleITK as sitk

    from extremeaug.data.preprocess import Preprocessing, make_template, scan_to_slices, with_context

    torch.manual_seed(2)
    net = ResUNet(4, in_channels=3).eval()
    scan = sitk.ReadImage(str(phantoms[0][0]), sitk.sitkFloat32)
    prep = Preprocessing("sagittal", template=make_template(scan))
    assert export_onnx(net, tmp_path / "m.onnx", {"preprocessing": prep.to_dict(), "context": 1}) <= PARITY_TOLERANCE
    segmenter = Segmenter(tmp_path / "m.onnx", "cpu")
    slices, _ = scan_to_slices(scan, prep)
    inputs = with_context(slices, 1)
    assert inputs.shape == (len(slices), 3) + slices.shape[1:]
    assert np.array_equal(inputs[0, 0], slices[0]) and np.array_equal(inputs[5, 2], slices[6])
    with torch.no_grad():
        expected = net.probabilities(torch.from_numpy(inputs)).numpy()
    assert np.abs(segmenter._slice_probabilities(slices) - expected).max() < PARITY_TOLERANCE
