"""The CUDA paths, on a GPU machine (`pytest -m cuda`; benchmarks/gpu_check.sh runs them): compiled training,
resume, the onnxruntime provider and out of memory, with and without the retry at half the batch. Every test
skips where torch sees no CUDA device."""
from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import torch

from extremeaug.common.errors import ExtremeAugError
from extremeaug.data.io import read_scan
from extremeaug.inference.segmenter import Segmenter
from extremeaug.training.dataset import Case
from extremeaug.training.train import RunOptions, TrainConfig, Trainer, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
TINY = dict(width=8, augment=2, batch_size=64, epochs=3)


def quiet(**kw) -> RunOptions:
    """Eager unless a test asks for compile: each compilation costs tens of seconds."""
    return RunOptions(**{"device": "cuda", "show_progress": False, "compile": "off", **kw})


def test_cuda_training_compiles_learns_and_exports(tmp_path, phantoms, capfd):
    cases = [Case(*map(str, phantoms[0]))]
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 6}), cases, [], tmp_path / "m", quiet(compile="on"))
    result = trainer.run()
    assert trainer.compiled is not None and "torch.compile failed" not in capfd.readouterr().err
    assert result.status == "finished" and result.onnx_max_abs_diff < 1e-3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    meta = json.loads((tmp_path / "m" / "history.json").read_text())["metadata"]
    assert meta["device"].startswith("cuda")


def test_cuda_default_batch_is_large(tmp_path, phantoms):
    trainer = Trainer(TrainConfig(augment=50, epochs=1), [Case(*map(str, phantoms[0]))], [], tmp_path / "m", quiet())
    assert trainer.cfg.batch_size == 256 and trainer.cfg.width == 16


def test_cuda_resume_stays_within_tolerance(tmp_path, phantoms):
    """cuDNN picks its algorithms anew in the resumed process, so CUDA resume is close, not bit-exact (CPU is)."""
    cases = [Case(*map(str, phantoms[0]))]
    full = train(TrainConfig(**TINY), cases, [], tmp_path / "full", quiet())
    train(TrainConfig(**TINY), cases, [], tmp_path / "half", quiet(max_steps=3))
    resumed = train(TrainConfig(), [], [], tmp_path / "half", quiet(resume=True))
    assert resumed.status == "finished" and resumed.epochs_done == full.epochs_done
    a = [r["loss"] for r in full.history]
    b = [r["loss"] for r in resumed.history]
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.02


def test_onnxruntime_reports_the_provider_that_runs(tmp_path, phantoms):
    cases = [Case(*map(str, phantoms[0]))]
    train(TrainConfig(**{**TINY, "epochs": 1}), cases, [], tmp_path / "m", quiet())
    scan = read_scan(str(phantoms[1][0]))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        seg = Segmenter(tmp_path / "m" / "model.onnx", "cuda")
        assert seg.providers[0] == "CUDAExecutionProvider" and seg.warning is None
    else:   # onnxruntime without its CUDA provider: auto runs on the CPU and says so, cuda is refused
        assert Segmenter(tmp_path / "m" / "model.onnx", "auto").providers == ["CPUExecutionProvider"]
        with pytest.raises(ExtremeAugError, match="no CUDA provider"):
            Segmenter(tmp_path / "m" / "model.onnx", "cuda")
        seg = Segmenter(tmp_path / "m" / "model.onnx", "auto")
    assert seg.segment(scan).GetSize() == scan.GetSize()


def test_cuda_out_of_memory_ends_with_one_line_and_an_end_event(tmp_path, phantoms):
    progress = tmp_path / "p.jsonl"
    cfg = TrainConfig(width=64, augment=50, batch_size=10_000, epochs=1)
    with pytest.raises(ExtremeAugError, match="GPU out of memory at batch size 10000.*lower --batch-size"):
        train(cfg, [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
              quiet(progress_file=str(progress), retry_smaller_batch=False))
    end = json.loads(progress.read_text().splitlines()[-1])
    assert end["event"] == "end" and end["status"] == "error"
    torch.cuda.empty_cache()


def test_cuda_out_of_memory_tries_again_at_half_the_batch(tmp_path, phantoms):
    """A GPU with 1.5 GiB to give (a laptop's, drawing Slicer's views too) cannot hold the default batch of 256
    at width 16 (4.4 GiB eager on the H200): training goes on at a batch that fits."""
    progress = tmp_path / "p.jsonl"
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.5 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    try:
        result = train(TrainConfig(augment=10, epochs=1), [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
                       quiet(progress_file=str(progress)))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    seen = [json.loads(line) for line in progress.read_text().splitlines()]
    retries = [e["batch_size"] for e in seen if e["event"] == "retry"]
    assert retries[0] == 128 and result.status == "finished"
    assert seen[-1]["event"] == "end" and seen[-1]["status"] == "finished"
