"""The fused training step (augmentation, network and loss in one `torch.compile` graph), compiled on the CPU with
inductor's C++ kernels: the same patches, loss, Dice sums and gradients as the eager step from the same draws,
resume as exact as eager, and the kernels kept in the stated cache folder. The first compilation costs about a
minute on 2 cores; the tests of this module share one cache folder, so the later ones start from it."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from extremeaug.training.augment import augmented_batch
from extremeaug.training.dataset import Case
from extremeaug.training.step import INDUCTOR_CACHE, Draws, inductor_cache
from extremeaug.training.train import RunOptions, TrainConfig, Trainer, train

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++", "cl"))),
                                                    reason="inductor's CPU kernels need a C++ compiler")]
SMALL = dict(width=4, augment=1, batch_size=16, epochs=2, lr=3e-3, intensity=True)


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """One inductor cache folder for the module (not the user's): the first test compiles, the others reuse."""
    import torch._dynamo

    folder, before = tmp_path_factory.mktemp("inductor"), os.environ.get(INDUCTOR_CACHE)
    os.environ[INDUCTOR_CACHE] = str(folder)
    yield folder
    torch._dynamo.reset()
    if before is None:
        os.environ.pop(INDUCTOR_CACHE, None)
    else:
        os.environ[INDUCTOR_CACHE] = before


def compiled_options(**kw) -> RunOptions:
    return RunOptions(device="cpu", show_progress=False, compile="on", **kw)


def gradients(trainer: Trainer, outputs) -> list:
    """The network's gradients of a step's loss."""
    trainer.optimizer.zero_grad(set_to_none=True)
    outputs[0].backward()
    return [p.grad.clone() for p in trainer.net.parameters()]


def test_the_compiled_step_gives_the_eager_steps_patches_loss_sums_and_gradients(tmp_path, phantoms, kernel_cache):
    trainer = Trainer(TrainConfig(**SMALL), [Case(*map(str, phantoms[0]))], [], tmp_path / "m", compiled_options())
    rows = trainer.train_set.patches[trainer.order.batch(0, 0)]
    draws = Draws.draw(rows, 0, trainer.cfg.seed, trainer.bounds, True, slice(None), 1)
    arguments = draws.arguments(trainer.train_set.inputs, trainer.train_set.masks)

    eager_x, eager_y = augmented_batch(trainer.train_set.inputs, trainer.train_set.masks, draws.rows, draws.params)
    fused_x, fused_y = torch.compile(augmented_batch)(trainer.train_set.inputs, trainer.train_set.masks, draws.rows,
                                                      draws.params)
    assert torch.allclose(fused_x, eager_x, atol=1e-4)   # inductor's float32 gamma and bias field: 2e-5 apart at most
    assert (fused_y != eager_y).float().mean() < 1e-4   # a mask value within rounding of 0.5 may flip

    eager = trainer.step_fn(*arguments)   # BatchNorm uses the batch's statistics: both steps see one network
    eager_gradients = gradients(trainer, eager)   # before the fused step moves BatchNorm's running statistics
    fused = trainer.compiled(*arguments)
    assert abs(float(fused[0]) - float(eager[0])) < 1e-5 and 0 < float(eager[0]) < 1
    assert abs(float(fused[1]) - float(eager[1])) <= 2 and abs(float(fused[2]) - float(eager[2])) <= 2
    fused_gradients = gradients(trainer, fused)
    flat = [torch.cat([g.flatten() for g in gs]) for gs in (eager_gradients, fused_gradients)]
    assert (flat[1] - flat[0]).norm() / flat[0].norm() < 0.01
    # inductor's kernels sum in another order: the network compiled alone shows the same per-tensor gaps (3 % at
    # most, on a deep BatchNorm bias whose gradient is 3e-5; docs/results.md §3)
    assert max(float((f - e).norm() / e.norm()) for e, f in zip(eager_gradients, fused_gradients)) < 0.1
    assert any(kernel_cache.rglob("*.py")) or any(kernel_cache.rglob("*.so"))   # inductor's kernels, kept there


def test_a_compiled_run_stopped_and_resumed_ends_with_the_uninterrupted_runs_weights(tmp_path, phantoms):
    case = [Case(*map(str, phantoms[0]))]
    full = train(TrainConfig(**SMALL), case, [], tmp_path / "full", compiled_options())
    train(TrainConfig(**SMALL), case, [], tmp_path / "half", compiled_options(max_steps=5))
    resumed = train(TrainConfig(), [], [], tmp_path / "half", compiled_options(resume=True))
    assert resumed.status == full.status == "finished" and resumed.epochs_done == full.epochs_done == 2
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in ("full", "half"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.history[-1]["loss"] == resumed.history[-1]["loss"]   # the stop adds a row for its part-epoch


def test_a_compiled_run_says_where_its_kernels_are_kept(tmp_path, phantoms, kernel_cache):
    progress = tmp_path / "p.jsonl"
    train(TrainConfig(**{**SMALL, "epochs": 1}), [Case(*map(str, phantoms[0]))], [], tmp_path / "m",
          compiled_options(progress_file=str(progress)))
    start = json.loads(progress.read_text().splitlines()[0])
    assert start["event"] == "start" and start["compile_cache"] == str(kernel_cache) == str(inductor_cache())


def test_without_torchinductor_cache_dir_the_kernels_go_to_the_users_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(INDUCTOR_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert inductor_cache() == tmp_path / "extremeaug" / "inductor"
