from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from conftest import one_line_error, raising
from extremeaug.networks.metadata import METADATA_KEY
from extremeaug.training.checkpoint import load_weights
from extremeaug.training.dataset import Case
from extremeaug.training.train import RunOptions, TrainConfig, train

TINY = dict(width=4, augment=1, batch_size=16, epochs=2, lr=3e-3)


def events(path):
    return [json.loads(line) for line in open(path)]


def test_outputs_progress_and_metadata(tmp_path, phantoms):
    progress = tmp_path / "progress.jsonl"
    result = train(TrainConfig(**TINY, min_relative_size=0.3), [Case(*map(str, phantoms[0]))],
                   [Case(*map(str, phantoms[1]))], tmp_path / "m",
                   RunOptions(device="cpu", progress_file=str(progress), show_progress=False))
    assert result.status == "finished" and result.epochs_done == 2
    for name in ("model.onnx", "model.pt", "checkpoint.pt", "history.json"):
        assert (tmp_path / "m" / name).is_file()
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]
    kinds = [e["event"] for e in events(progress)]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 2 and "progress" in kinds
    step = next(e for e in events(progress) if e["event"] == "progress")
    assert {"step", "epoch", "loss", "dice", "patches_per_s", "eta_s", "time"} <= set(step)
    session = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert meta["preprocessing"]["plane"] == "sagittal" and len(meta["preprocessing"]["template"]) > 100
    assert meta["training_cases"] == [phantoms[0][0].name] and meta["augment"] == 1
    assert meta["epochs_done"] == 2 and meta["width"] == 4 and meta["min_relative_size"] == 0.3
    assert meta["union"] is meta["tta"] is meta["smooth_slices"] is True   # the defaults `Segmenter` follows
    assert meta["scale_each_axis"] is False and meta["scale_range"] == [0.8, 1.2]   # the paper's scales
    vals = [h["val_dice"] for h in result.history]
    assert meta["best_val_dice"] == max(vals) == result.best_val_dice
    net = load_weights(tmp_path / "m" / "model.pt")
    assert net.width == 4


def test_resume_reproduces_an_uninterrupted_run(tmp_path, phantoms):
    cases = [Case(*map(str, phantoms[0]))]
    full = train(TrainConfig(**TINY), cases, [], tmp_path / "full", RunOptions(device="cpu", show_progress=False))
    half = train(TrainConfig(**TINY), cases, [], tmp_path / "half",
                 RunOptions(device="cpu", show_progress=False, max_steps=3))   # of 6 an epoch
    assert half.status == "max_steps" and half.epochs_done < 1
    resumed = train(TrainConfig(), [], [], tmp_path / "half", RunOptions(device="cpu", show_progress=False,
                                                                         resume=True))
    assert resumed.status == "finished" and resumed.epochs_done == full.epochs_done
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "half" / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


@pytest.mark.parametrize("option", ["scale_each_axis", "elastic"])
def test_an_augmentation_option_changes_what_training_sees_is_stored_and_resumes_exactly(tmp_path, phantoms, option):
    cases, quiet = [Case(*map(str, phantoms[0]))], dict(device="cpu", show_progress=False)
    one = train(TrainConfig(**TINY), cases, [], tmp_path / "one", RunOptions(**quiet, max_steps=2))
    full = train(TrainConfig(**TINY, **{option: True}), cases, [], tmp_path / "full", RunOptions(**quiet))
    half = train(TrainConfig(**TINY, **{option: True}), cases, [], tmp_path / "half",
                 RunOptions(**quiet, max_steps=2))
    assert half.status == one.status == "max_steps"
    weights = {k: torch.load(tmp_path / k / "model.pt", weights_only=True)["state_dict"] for k in ("one", "half")}
    assert any(not torch.equal(weights["one"][k], weights["half"][k]) for k in weights["one"])
    resumed = train(TrainConfig(), [], [], tmp_path / "half", RunOptions(**quiet, resume=True))
    assert resumed.status == "finished" and resumed.epochs_done == full.epochs_done
    a, b = (torch.load(tmp_path / k / "model.pt", weights_only=True)["state_dict"] for k in ("full", "half"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert json.loads((tmp_path / "half" / "history.json").read_text())["metadata"][option] is True
    assert getattr(TrainConfig.stored({}), option) is False   # a checkpoint from before the setting


def test_scale_range_changes_what_training_sees_is_stored_and_resumes_and_an_older_checkpoint_keeps_the_papers(
        tmp_path, phantoms):
    cases, quiet, wide = [Case(*map(str, phantoms[0]))], dict(device="cpu", show_progress=False), (0.7, 1.4)
    train(TrainConfig(**TINY), cases, [], tmp_path / "paper", RunOptions(**quiet, max_steps=2))
    train(TrainConfig(**TINY, scale_range=wide), cases, [], tmp_path / "wide", RunOptions(**quiet, max_steps=2))
    weights = {k: torch.load(tmp_path / k / "model.pt", weights_only=True)["state_dict"] for k in ("paper", "wide")}
    assert any(not torch.equal(weights["paper"][k], weights["wide"][k]) for k in weights["paper"])
    resumed = train(TrainConfig(), [], [], tmp_path / "wide", RunOptions(**quiet, resume=True))
    assert resumed.status == "finished"
    assert json.loads((tmp_path / "wide" / "history.json").read_text())["metadata"]["scale_range"] == [0.7, 1.4]
    assert TrainConfig.stored({}).scale_range == (0.8, 1.2)   # a checkpoint from before the setting
    assert TrainConfig.stored({"scale_range": [0.7, 1.4]}).scale_range == wide   # through JSON


def test_average_weights_exports_the_mean_of_the_second_halfs_steps_and_resumes_it_exactly(tmp_path, phantoms):
    cases, quiet = [Case(*map(str, phantoms[0]))], dict(device="cpu", show_progress=False)
    one_epoch = dict(TINY, epochs=1)   # 6 steps: the updates at progress 3/6, 4/6 and 5/6 join the average
    for steps in (4, 5, 6):
        train(TrainConfig(**one_epoch), cases, [], tmp_path / f"last{steps}", RunOptions(**quiet, max_steps=steps))
    half = train(TrainConfig(**one_epoch, average_weights=True), cases, [], tmp_path / "avg",
                 RunOptions(**quiet, max_steps=5))
    assert half.status == "max_steps"
    train(TrainConfig(), [], [], tmp_path / "avg", RunOptions(**quiet, resume=True))
    last = [torch.load(tmp_path / f"last{n}" / "model.pt", weights_only=True)["state_dict"] for n in (4, 5, 6)]
    averaged = torch.load(tmp_path / "avg" / "model.pt", weights_only=True)["state_dict"]
    floats = [k for k in averaged if averaged[k].is_floating_point()]   # weights and BatchNorm statistics
    assert any("running_var" in k for k in floats)
    for k in floats:
        assert torch.allclose(averaged[k], sum(w[k] for w in last) / 3, atol=1e-6), k
    assert not torch.allclose(averaged["head.weight"], last[-1]["head.weight"])
    meta = json.loads((tmp_path / "avg" / "history.json").read_text())["metadata"]
    assert meta["weights"] == "average" and meta["averaged_steps"] == 3 and meta["average_weights"] is True
    assert json.loads((tmp_path / "last6" / "history.json").read_text())["metadata"]["weights"] == "last"


def test_average_weights_with_validation_exports_the_better_validated_of_the_average_and_the_best(tmp_path,
                                                                                                  phantoms):
    result = train(TrainConfig(**TINY, average_weights=True), [Case(*map(str, phantoms[0]))],
                   [Case(*map(str, phantoms[1]))], tmp_path / "m", RunOptions(device="cpu", show_progress=False))
    meta = json.loads((tmp_path / "m" / "history.json").read_text())["metadata"]
    assert meta["best_val_dice"] == max(h["val_dice"] for h in result.history)
    better = "average" if meta["averaged_val_dice"] >= meta["best_val_dice"] else "best"
    assert meta["weights"] == better and meta["averaged_steps"] == 6
    exported = torch.load(tmp_path / "m" / "model.pt", weights_only=True)["state_dict"]
    averaged = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["averaged"]
    best = torch.load(tmp_path / "m" / "best.pt", weights_only=True)
    chosen = {"average": {k[len("module."):]: v for k, v in averaged.items() if k.startswith("module.")},
              "best": best}[better]
    assert all(torch.equal(exported[k], chosen[k]) for k in exported)


def test_time_budget_ends_gracefully(tmp_path, phantoms):
    cfg = TrainConfig(**{**TINY, "epochs": 1000})
    t0 = time.monotonic()
    result = train(cfg, [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
                   RunOptions(device="cpu", time_budget_min=0.1, show_progress=False))
    assert result.status == "time_budget" and result.epochs_done < 1000
    assert time.monotonic() - t0 < 60
    assert (tmp_path / "m" / "model.onnx").is_file()


def test_sigterm_stops_cleanly_keeps_model_and_resumes_with_its_own_settings(tmp_path, phantoms):
    out, progress = tmp_path / "m", tmp_path / "p.jsonl"
    cmd = [sys.executable, "-m", "extremeaug", "train", "--image", str(phantoms[0][0]), "--label",
           str(phantoms[0][1]), "--out", str(out), "--width", "4", "--augment", "2", "--epochs", "1",
           "--progress-file", str(progress), "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if progress.exists() and any(e["event"] == "progress" for e in events(progress)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stdout.startswith("stopped")
    end = events(progress)[-1]
    assert end["event"] == "end" and end["status"] == "stopped" and end["stop_reason"] == "SIGTERM"
    assert (out / "model.onnx").is_file()
    before = (out / "checkpoint.pt").read_bytes()
    one_line_error(subprocess.run(cmd + ["--resume", "--epochs", "3", "--width", "8"], capture_output=True, text=True,
                                  timeout=300),   # not ignored: refused, naming both values
                   "own settings: --epochs 3 (the run's: 1), --width 8 (the run's: 4) cannot change")
    assert (out / "checkpoint.pt").read_bytes() == before
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)   # its own command
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("finished") and events(progress)[-1]["status"] == "finished"


def test_figures_are_written(tmp_path, phantoms):
    import SimpleITK as sitk

    from extremeaug.experiments.figures import overlay_png, training_curve_png

    history = [{"epochs_done": 1.0, "val_dice": 0.8, "train_dice": 0.9, "loss": 0.1}]
    curve = [{"epochs_done": 0.5, "step": 10, "loss": 0.4, "train_dice": 0.6},
             {"epochs_done": 1.0, "step": 20, "loss": 0.1, "train_dice": 0.9}]
    png = training_curve_png(history, curve, tmp_path / "curve.png")
    scan, mask = sitk.ReadImage(str(phantoms[0][0])), sitk.ReadImage(str(phantoms[0][1]))
    overlay = overlay_png(scan, mask, tmp_path / "overlay.png", mask, "sagittal", "t")
    for p in (png, overlay):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_several_training_scans(tmp_path, phantoms):
    from extremeaug.training.train import Trainer

    cases = [Case(*map(str, phantoms[0])), Case(*map(str, phantoms[3]))]
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 1}), cases, [], tmp_path / "m",
                      RunOptions(device="cpu", show_progress=False))
    assert trainer.train_set.counts == [24, 24] and len(trainer.train_set.patches) == 2 * 24 * 4   # 160-pixel slices
    result = trainer.run()
    assert result.status == "finished"
    meta = json.loads((tmp_path / "m" / "history.json").read_text())["metadata"]
    assert meta["training_cases"] == [phantoms[0][0].name, phantoms[3][0].name]


def test_2_5d_takes_each_slices_neighbours_from_its_own_scan_and_exports_them(tmp_path, phantoms):
    from extremeaug.inference.segmenter import Segmenter
    from extremeaug.training.train import Trainer

    cases = [Case(*map(str, phantoms[0])), Case(*map(str, phantoms[3]))]
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 1, "context": 1}), cases, [Case(*map(str, phantoms[1]))],
                      tmp_path / "m", RunOptions(device="cpu", show_progress=False, max_steps=2))
    inputs, images = trainer.train_set.inputs, trainer.train_set.images
    assert inputs.shape == (48, 3) + images.shape[1:]
    assert torch.equal(inputs[24, 0], images[24]) and torch.equal(inputs[24, 2], images[25])   # not scan 1's last
    assert torch.equal(inputs[23, 2], images[23]) and torch.equal(inputs[10, 0], images[9])
    assert trainer.run().status == "max_steps"
    assert load_weights(tmp_path / "m" / "model.pt").in_channels == 3
    segmenter = Segmenter(tmp_path / "m" / "model.onnx", "cpu")
    assert segmenter.metadata["context"] == 1 and segmenter.session.get_inputs()[0].shape[1] == 3


def test_validation_between_epoch_ends_keeps_the_best(tmp_path, phantoms):
    """Under a time budget a 50x epoch outlasts the run; validation then happens at checkpoints."""
    progress = tmp_path / "p.jsonl"
    result = train(TrainConfig(**{**TINY, "augment": 8, "epochs": 1}), [Case(*map(str, phantoms[0]))],
                   [Case(*map(str, phantoms[1]))], tmp_path / "m",
                   RunOptions(device="cpu", show_progress=False, checkpoint_minutes=0.03,
                              progress_file=str(progress)))
    assert len(result.val_curve) >= 2
    assert any(e["event"] == "validation" for e in events(progress))
    scores = [v["val_dice"] for v in result.val_curve] + [h["val_dice"] for h in result.history]
    assert result.best_val_dice == max(scores)
    meta = json.loads((tmp_path / "m" / "history.json").read_text())
    assert meta["metadata"]["best_val_dice"] == max(scores) and meta["val_curve"] == result.val_curve


def test_learning_rate_schedule_continues_after_resume(tmp_path, phantoms):
    """A run stopped by its time budget has decayed its rate; resuming must not jump back to the peak."""
    from extremeaug.training.train import Trainer

    cfg = TrainConfig(**{**TINY, "epochs": 1000})
    train(cfg, [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
          RunOptions(device="cpu", time_budget_min=0.05, show_progress=False))
    progress = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)["lr_progress"]
    assert progress > 0.9
    resumed = Trainer(TrainConfig(), [], [], tmp_path / "m",
                      RunOptions(device="cpu", resume=True, time_budget_min=1.0, show_progress=False))
    assert resumed._lr(0.0) < 0.1 * cfg.lr
    assert resumed._lr(60.0) == pytest.approx(0.05 * cfg.lr)


def test_epoch_stats_window_and_epoch():
    from extremeaug.training.progress import EpochStats

    stats = EpochStats(torch.device("cpu"))
    stats.add(torch.tensor(0.8), torch.tensor(0.0), torch.tensor(10.0))
    assert stats.window_summary() == pytest.approx((0.8, 0.0))
    stats.add(torch.tensor(0.2), torch.tensor(5.0), torch.tensor(10.0))
    assert stats.window_summary() == pytest.approx((0.2, 1.0))      # only the steps since the last call
    assert stats.summary() == pytest.approx((0.5, 0.5))             # the whole epoch


def test_outputs_are_readable_by_others(tmp_path, phantoms):
    """Atomic writes go through mkstemp (mode 0600); published files get ordinary permissions."""
    import os

    train(TrainConfig(**{**TINY, "epochs": 1}), [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
          RunOptions(device="cpu", show_progress=False, max_steps=2))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.onnx", "model.pt", "checkpoint.pt", "history.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_ctrl_c_inside_a_callback_python_cannot_raise_from_is_remembered_without_a_traceback():
    code = ("import signal, weakref\n"
            "from extremeaug.training.interrupts import raise_if_interrupted, watch\n"
            "watch()\n"
            "class A: pass\n"
            "a = A()\n"
            "r = weakref.ref(a, lambda _: signal.raise_signal(signal.SIGINT))\n"
            "del a\n"   # the callback's KeyboardInterrupt cannot propagate: Python reports it as unraisable
            "try:\n    raise_if_interrupted()\nexcept KeyboardInterrupt:\n    print('remembered')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "remembered", done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_interrupt_before_training_writes_nothing(tmp_path, phantoms):
    out = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-m", "extremeaug", "train", "--image", str(phantoms[0][0]),
                             "--label", str(phantoms[0][1]), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)                    # inside the imports / preprocessing, before the training loop
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()                    # never leave a 100-epoch training behind when the test fails
    assert proc.returncode in (130, -signal.SIGINT), stderr   # 130, or ended by the signal itself at exit
    assert "interrupted; nothing written" in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_an_early_interrupt_swallowed_by_a_library_still_stops_training(tmp_path, phantoms):
    """A Ctrl-C landing in a call that swallows KeyboardInterrupt (an import's bare `except:`) is
    remembered: training then refuses to start and writes nothing (CI once lost one and trained on)."""
    import os

    from extremeaug.training import interrupts
    from extremeaug.training.dataset import Case
    from extremeaug.training.train import RunOptions, TrainConfig, train

    previous = signal.getsignal(signal.SIGINT)
    interrupts.watch()
    try:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        except BaseException:   # what a swallowing library does
            pass
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(augment=1, epochs=1, width=4), [Case(str(phantoms[0][0]), str(phantoms[0][1]))], [],
                  tmp_path / "m", RunOptions(device="cpu", show_progress=False))
        assert not (tmp_path / "m").exists()
    finally:
        interrupts._seen.clear()
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_demo_runs_and_reports(tmp_path):
    from extremeaug.experiments.demo import run_demo

    summary = run_demo(tmp_path / "demo", time_budget_min=5, augment=10, epochs=1, show_progress=False)
    assert set(summary["scores"]) == {"phantom_2", "phantom_3"}
    assert summary["mean_dice"] > 0.5
    for key in ("model", "overlay", "training_curve"):
        assert Path(summary["files"][key]).is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["mean_dice"] == summary["mean_dice"]


def test_resume_at_a_smaller_batch_size_continues_the_same_epoch(tmp_path, phantoms):
    """The advice after GPU out of memory: --resume with a lower --batch-size picks the run up where it was."""
    cases = [Case(*map(str, phantoms[0]))]
    half = train(TrainConfig(**{**TINY, "epochs": 1}), cases, [], tmp_path / "m",
                 RunOptions(device="cpu", show_progress=False, max_steps=5))
    assert half.status == "max_steps"
    progress = tmp_path / "p.jsonl"
    resumed = train(TrainConfig(batch_size=8), [], [], tmp_path / "m",
                    RunOptions(device="cpu", show_progress=False, resume=True, progress_file=str(progress)))
    start = next(e for e in events(progress) if e["event"] == "start")
    assert start["resumed_at_step"] == 10 and start["steps_total"] == 12   # 96 patches in steps of 8
    assert resumed.status == "finished" and resumed.epochs_done == 1.0
    meta = json.loads((tmp_path / "m" / "history.json").read_text())["metadata"]
    assert meta["last_epoch"]["step"] == 12 and torch.load(tmp_path / "m" / "checkpoint.pt",
                                                             weights_only=True)["config"]["batch_size"] == 8


def test_compile_on_without_a_cpp_compiler_falls_back_to_eager_with_one_line(tmp_path, phantoms, capfd,
                                                                              monkeypatch):
    """A laptop without a C++ compiler (Windows without MSVC): inductor fails at the first compiled call, about
    20 s in on 2 cores; the step is then taken eagerly and the rest of the run stays eager."""
    import torch._dynamo
    import torch._inductor.config as inductor

    from extremeaug.training.train import Trainer

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))   # no kernels from an earlier run
    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    trainer = Trainer(TrainConfig(**TINY), [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
                      RunOptions(device="cpu", show_progress=False, compile="on"))
    try:
        loss, _, _ = trainer.train_step(trainer.order.parts(0, 0), 0.0)
        loss_again, _, _ = trainer.train_step(trainer.order.parts(0, 1), 0.0)
    finally:
        torch._dynamo.reset()
    assert torch.isfinite(loss) and torch.isfinite(loss_again) and trainer.compiled is None and trainer.step == 2
    err = capfd.readouterr().err
    assert re.search(r"torch.compile failed \(\w+\); training on without it", err) and err.count("torch.compile") == 1


def test_out_of_memory_names_the_checkpoint_only_when_there_is_one(tmp_path, phantoms):
    from extremeaug.common.errors import ExtremeAugError
    from extremeaug.training.train import Trainer

    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
    cases = [Case(*map(str, phantoms[0]))]
    fresh = Trainer(TrainConfig(**TINY), cases, [], tmp_path / "a", RunOptions(device="cpu", show_progress=False,
                                                                               retry_smaller_batch=False))
    fresh.compiled = raising(oom)
    with pytest.raises(ExtremeAugError, match="nothing was written yet: start again with a lower --batch-size"):
        fresh.run()
    train(TrainConfig(**TINY), cases, [], tmp_path / "b", RunOptions(device="cpu", show_progress=False, max_steps=2))
    resumed = Trainer(TrainConfig(), [], [], tmp_path / "b", RunOptions(device="cpu", show_progress=False,
                                                                         resume=True, retry_smaller_batch=False))
    resumed.compiled = raising(oom)
    with pytest.raises(ExtremeAugError, match="checkpoint in .* is kept: continue it with --resume and a lower"):
        resumed.run()


@pytest.mark.parametrize("compile_mode, compiled", [("on", True), ("auto", False), ("off", False)])
def test_compile_on_puts_the_cpu_network_through_torch_compile_and_auto_or_off_keep_it_eager(
        tmp_path, phantoms, compile_mode, compiled):
    """Only the wrapper is checked here; the compiled step itself runs in Testing/test_fused_step.py and in
    `pytest -m cuda`."""
    from extremeaug.cli.main import RUN_FLAGS, parser
    from extremeaug.common.config import Compile, from_arguments
    from extremeaug.training.train import Trainer

    args = parser().parse_args(["train", "--image", "s", "--label", "m", "--out", "o", "--device", "cpu",
                                "--compile", compile_mode])
    opts = from_arguments(RunOptions, args, RUN_FLAGS, show_progress=False)
    assert opts.compile == Compile(compile_mode)
    trainer = Trainer(TrainConfig(**TINY), [Case(*map(str, phantoms[0]))], [], tmp_path / "m", opts)
    assert (trainer.compiled is not None) == compiled
    if compiled:
        assert trainer.compiled._orig_mod is trainer.step_fn and trainer.step_fn.model is trainer.net   # one graph:
        # augmentation, network and loss; export and state_dict keep using the plain module


def test_the_default_grid_fits_a_small_crop_one_patch_per_slice_and_the_papers_grid_stays_available(tmp_path):
    """A 12 x 40 x 50 phantom: the default (fitted) grid makes its sagittal slices 64 x 64 (the paper's grid: 256 x
    256, 33 times its pixels), one 64-pixel patch each with the shift in proportion; the model keeps the size."""
    from extremeaug.data.io import read_scan, write_image
    from extremeaug.data.phantom import make_phantom
    from extremeaug.inference.segmenter import Segmenter
    from extremeaug.training.train import Trainer

    pairs = []
    for seed in (0, 1):
        small = make_phantom(seed, size=(12, 40, 50), spacing=(6.0, 4.8, 4.8))
        pairs.append((tmp_path / f"s{seed}.nii.gz", tmp_path / f"m{seed}.nii.gz"))
        write_image(small.image, pairs[-1][0])
        write_image(small.mask, pairs[-1][1])
    case = Case(*map(str, pairs[0]))
    trainer = Trainer(TrainConfig(**TINY), [case], [], tmp_path / "m",   # the default grid fits the scan
                      RunOptions(device="cpu", show_progress=False))
    assert trainer.prep.slice_size == 64 and trainer.train_set.patch == 64
    assert len(trainer.train_set.patches) == 12 and trainer.bounds.max_shift_px == 12.5
    assert trainer.run().status == "finished"
    segmenter = Segmenter(tmp_path / "m" / "model.onnx", "cpu")
    scan = read_scan(str(pairs[1][0]))
    assert segmenter.prep.slice_size == 64 and segmenter.segment(scan)[0].GetSize() == scan.GetSize()
    paper = Trainer(TrainConfig(**TINY, slice_grid="paper"), [case], [], tmp_path / "p",
                    RunOptions(device="cpu", show_progress=False))
    assert paper.prep.slice_size == 256 and paper.train_set.patch == 128 and paper.bounds.max_shift_px == 50


def test_a_checkpoint_stored_before_the_slice_grid_and_tta_settings_resumes_as_the_paper_set_up_it_trained_on(
        tmp_path, phantoms):
    """Runs from before `slice_grid` and `tta` existed trained on 256 x 256 and segmented in one pass: a resume reads
    the missing settings as the paper's, not as today's defaults, so asking for the run's own again is no change."""
    from extremeaug.common.config import SliceGrid
    from extremeaug.training.checkpoint import CHECKPOINT, load, save
    from extremeaug.training.train import Trainer

    cfg = TrainConfig(**TINY, slice_grid="paper", tta=False)
    train(cfg, [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
          RunOptions(device="cpu", show_progress=False, max_steps=1))
    state = load(tmp_path / "m" / CHECKPOINT)
    del state["config"]["slice_grid"], state["config"]["tta"]
    save(state, tmp_path / "m" / CHECKPOINT)
    resumed = Trainer(cfg, [], [], tmp_path / "m", RunOptions(device="cpu", show_progress=False, resume=True))
    assert resumed.cfg.slice_grid == SliceGrid.PAPER and resumed.prep.slice_size == 256 and resumed.cfg.tta is False


def test_labeled_scans_of_a_wider_field_of_view_train_whole_at_the_first_scans_pixel_size(tmp_path, phantoms):
    """A second labeled scan 1.5 times as long (240 mm instead of 160 along the spine, the same 1.5 mm voxels):
    the fitted grid keeps the first scan's pixel size and grows its window to 256 pixels, so no part of either
    scan, and none of its label, is cut off; the model stores both."""
    from extremeaug.data.io import write_image
    from extremeaug.data.phantom import make_phantom

    long = make_phantom(5, size=(24, 128, 240))
    write_image(long.image, tmp_path / "long_image.nii.gz")
    write_image(long.mask, tmp_path / "long_mask.nii.gz")
    cases = [Case(*map(str, phantoms[0])), Case(str(tmp_path / "long_image.nii.gz"), str(tmp_path / "long_mask.nii.gz"))]
    result = train(TrainConfig(**TINY), cases, [], tmp_path / "m",
                   RunOptions(device="cpu", show_progress=False, max_steps=1))
    assert result.status == "max_steps"
    meta = json.loads((tmp_path / "m" / "history.json").read_text())["metadata"]
    assert meta["preprocessing"]["slice_size"] == 256   # the first alone: 160
    assert meta["preprocessing"]["pixel_mm"] == [1.5 * 128 / 160, 1.5]
