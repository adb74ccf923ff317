"""Learning from unlabeled scans (training.pseudo) and the Tversky loss: the pseudo-labels are the segmentation's
decision with the uncertain voxels left out, they join halfway and change nothing before, a run with them resumes
exactly, a scan that cannot be pseudo-labeled is refused with its reason, and the losses weigh what they say."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import one_line_error, run_cli
from extremeaug.common.config import Loss
from extremeaug.common.errors import ExtremeAugError
from extremeaug.data.io import read_scan, write_image
from extremeaug.data.phantom import make_phantom
from extremeaug.data.poses import averaged_over_poses
from extremeaug.training.checkpoint import load, save
from extremeaug.training.dataset import Case, SliceSet, load_case, make_preprocessing
from extremeaug.training.losses import segmentation_loss, soft_dice, tversky
from extremeaug.training.pseudo import (BATCH_SLICES, MAX_CHANGE, MAX_UNCERTAINTY, SelfTraining, pseudo_file,
                                        scale_problem)
from extremeaug.training.step import Draws
from extremeaug.training.train import RunOptions, TrainConfig, Trainer, train

SMALL = dict(width=4, augment=8, epochs=30, batch_size=16, slice_grid="fit")   # 12 x 40 x 50 phantoms: 64-pixel slices


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three small phantoms (12 x 40 x 50 voxels; one 64-pixel patch per slice on the fitted grid), as files."""
    folder, pairs = tmp_path_factory.mktemp("small"), []
    for seed in (0, 1, 2):
        p = make_phantom(seed, size=(12, 40, 50), spacing=(6.0, 4.8, 4.8))
        pairs.append((str(folder / f"s{seed}_image.nii.gz"), str(folder / f"s{seed}_mask.nii.gz")))
        write_image(p.image, pairs[-1][0])
        write_image(p.mask, pairs[-1][1])
    return pairs


def test_tversky_counts_missed_voxels_against_extra_ones_far_more_than_dice_does():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    missed, extra = target.clone(), target.clone()
    missed[..., 2, 2:6] = 0                   # four voxels of the structure missed
    extra[..., 1, 2:6] = 1                    # or four voxels beside it added
    dice_gap = soft_dice(extra, target) - soft_dice(missed, target)
    assert tversky(extra, target) - tversky(missed, target) > 3 * dice_gap > 0
    logits = {name: (p * 2 - 1) * 20 for name, p in (("missed", missed), ("extra", extra))}
    assert segmentation_loss(logits["missed"], target, Loss.TVERSKY) > segmentation_loss(logits["extra"], target,
                                                                                         Loss.TVERSKY)
    assert tversky(target, target, miss=0.5) == pytest.approx(soft_dice(target, target).item())


@pytest.mark.parametrize("kind", list(Loss))
def test_a_voxel_of_weight_zero_changes_nothing_in_the_loss(kind):
    torch.manual_seed(0)
    target = (torch.rand(2, 2, 16, 16) > 0.6).float()
    logits = torch.randn(2, 2, 16, 16)
    weight = torch.ones(2, 1, 16, 16)
    weight[:, :, :4] = 0                      # left out: the top rows
    wrong = logits.clone()
    wrong[:, :, :4] = -wrong[:, :, :4] * 5    # anything at all there
    assert segmentation_loss(wrong, target, kind, weight=weight) == pytest.approx(
        segmentation_loss(logits, target, kind, weight=weight).item(), rel=1e-6)
    assert segmentation_loss(wrong, target, kind) != pytest.approx(segmentation_loss(logits, target, kind).item())


def _self_training(small, cfg: TrainConfig, unlabeled):
    prep = make_preprocessing(read_scan(small[0][0]), cfg.plane, cfg.slice_grid)
    labeled = load_case(Case(*small[0]), prep, merge=cfg.merge_labels)
    train_set = SliceSet([labeled], torch.device("cpu"))
    return SelfTraining(unlabeled, prep, [labeled], train_set, labeled.labels, cfg, torch.device("cpu"))


def test_pseudo_labels_are_the_segmentations_decision_with_the_uncertain_voxels_left_out(small):
    cfg = TrainConfig(slice_grid="fit", merge_labels=True, min_component_mm3=100.0)
    selftraining = _self_training(small, cfg, [Case(small[1][0], None)])
    scan = selftraining.scans[0]
    n, size = len(scan.inputs), scan.inputs.shape[-1]
    probs = np.full((n, 1, size, size), 0.02, np.float32)
    probs[2:10, :, 20:30, 20:30] = 0.97       # a confident structure
    probs[2:10, :, 19, 20:30] = 0.6           # its uncertain rim, above the threshold
    probs[0, :, 2, 2] = 0.97                  # a confident speck the clean-up removes (one voxel, 67.5 mm3)
    assert np.prod(scan.spacing) < cfg.min_component_mm3
    masks, left_out, row = selftraining.pseudo_labels(probs, scan)
    expected = np.zeros((n, 1, size, size), np.uint8)
    expected[2:10, :, 19:30, 20:30] = 1
    assert masks.shape == (n, 1, size, size) and (masks == expected).all()
    unsure = np.zeros((n, 1, size, size), np.uint8)
    unsure[2:10, :, 19, 20:30] = 1            # 1 - |2 * 0.6 - 1| = 0.8 > MAX_UNCERTAINTY; 0.97 and 0.02 are sure
    assert MAX_UNCERTAINTY < 0.8 and (left_out == unsure).all()
    assert row["used"] and row["volume_ratio"] > 0
    nothing = selftraining.pseudo_labels(np.full_like(probs, 0.02), scan)[2]   # another anatomy: no structure at all
    assert not nothing["used"] and "another anatomy" in nothing["reason"] and nothing["volume_ratio"] == 0


def test_a_pseudo_margin_leaves_out_the_background_beside_the_structures_and_nothing_farther(small):
    plain = _self_training(small, TrainConfig(slice_grid="fit", merge_labels=True), [Case(small[1][0], None)])
    scan = plain.scans[0]
    n, size = len(scan.inputs), scan.inputs.shape[-1]
    probs = np.full((n, 1, size, size), 0.02, np.float32)
    probs[2:10, :, 20:30, 20:30] = 0.97       # a confident structure, no uncertain rim
    in_plane = [s for a, s in enumerate(scan.spacing) if a != plain.prep.axis]
    across = scan.spacing[plain.prep.axis]
    margin = 1.2 * max(in_plane)              # the in-plane neighbours, not the diagonal ones or the next slice
    assert margin < min(across, float(np.hypot(*in_plane)))
    masks, left_out, _ = plain.pseudo_labels(probs, scan)
    assert not left_out.any()                 # without a margin only uncertain voxels are left out
    near = _self_training(small, TrainConfig(slice_grid="fit", merge_labels=True, pseudo_margin_mm=margin),
                          [Case(small[1][0], None)])
    masks_near, left_near, _ = near.pseudo_labels(probs, near.scans[0])
    ring = np.zeros_like(left_near)
    ring[2:10, :, 19, 20:30] = ring[2:10, :, 30, 20:30] = ring[2:10, :, 20:30, 19] = ring[2:10, :, 20:30, 30] = 1
    assert (masks_near == masks).all() and (left_near == ring).all()
    for bad in (-1.0, float("nan"), float("inf")):   # settings that do not come through the command line
        with pytest.raises(ExtremeAugError, match="--pseudo-margin-mm 0 or more"):
            TrainConfig(pseudo_margin_mm=bad).check()


class Box(torch.nn.Module):
    """A network sure of one rectangular structure on slices 2-9, `side` x `width` pixels (square unless told), and of
    background elsewhere."""

    def __init__(self, side: int, width: int = 0):
        super().__init__()
        self.side, self.width = side, width or side

    def forward(self, x):
        out = torch.full((len(x), 1) + tuple(x.shape[-2:]), -10.0)
        out[2:10, :, 20:20 + self.side, 20:20 + self.width] = 10.0   # every batch of BATCH_SLICES starts at slice 0
        return out


def test_a_round_keeps_a_scans_pseudo_label_when_its_new_one_grows_or_shrinks_more_than_max_change(small):
    """Rounds that grow a scan's pseudo-label (as a model trained on its own pseudo-labels with Tversky does) or shrink
    it (as the discs' did) by more than MAX_CHANGE leave the one in use; a round within it replaces it; a resume
    restores what was in use."""
    one_pass = TrainConfig(slice_grid="fit", merge_labels=True, tta=False)   # the box's pixels as Box gives them
    selftraining = _self_training(small, one_pass, [Case(small[1][0], None)])
    in_use = lambda: selftraining.mixed.masks[len(selftraining.train_set.inputs):, 0].sum().item()  # noqa: E731
    first = selftraining.label(Box(10), step=1)["scans"][0]
    assert first["used"] and "kept" not in first and in_use() == 8 * 10 * 10
    grown = selftraining.label(Box(12), step=2)["scans"][0]   # 1.44 times the one in use
    assert (12 / 10) ** 2 > 1 + MAX_CHANGE and grown["used"] and "1.44 times the one in use" in grown["kept"]
    assert grown["volume_ratio"] == pytest.approx(1.44 * first["volume_ratio"], rel=0.01)
    assert grown["pseudo_volume_ratio"] == first["volume_ratio"] and in_use() == 8 * 10 * 10
    resumed = _self_training(small, one_pass, [Case(small[1][0], None)])
    resumed.load_state_dict(selftraining.state_dict())
    assert torch.equal(resumed.mixed.masks, selftraining.mixed.masks)
    assert "kept" in resumed.label(Box(11), step=3)["scans"][0]   # 1.21 times round 1's, still in use
    shrunk = selftraining.label(Box(9), step=3)["scans"][0]   # 0.81 times the one in use
    assert (9 / 10) ** 2 < 1 - MAX_CHANGE and "0.81 times the one in use" in shrunk["kept"] and in_use() == 8 * 100
    within = selftraining.label(Box(15, 7), step=4)["scans"][0]   # 1.05 times: replaces it
    assert "kept" not in within and within["pseudo_volume_ratio"] == within["volume_ratio"] and in_use() == 8 * 105


def test_pseudo_labels_are_averaged_over_the_poses_segment_averages_over_when_the_model_uses_tta(small):
    """With `tta` (the default) a round decides from the network averaged over `data.poses.POSES`, as `segment`
    does: the rotated and scaled passes of a square, mapped back, shave its corners; without, the square stays."""
    unlabeled = [Case(small[1][0], None)]
    plain = _self_training(small, TrainConfig(slice_grid="fit", merge_labels=True, tta=False), unlabeled)
    posed = _self_training(small, TrainConfig(slice_grid="fit", merge_labels=True), unlabeled)
    assert posed.cfg.tta and posed.cfg.threshold == 0.5
    plain.label(Box(10), step=1)
    posed.label(Box(10), step=1)
    square = plain.mixed.masks[len(plain.train_set.inputs):, 0]
    shaved = posed.mixed.masks[len(posed.train_set.inputs):, 0]
    def box(x):   # in the batches a round runs (Box's square is on a batch's slices 2-9)
        return np.concatenate([torch.sigmoid(Box(10)(torch.from_numpy(x[s:s + BATCH_SLICES]))).numpy()
                               for s in range(0, len(x), BATCH_SLICES)])
    expected = averaged_over_poses(posed.scans[0].inputs.numpy(), box)[:, 0] > 0.5
    assert square.sum() == 8 * 10 * 10 and torch.equal(shaved.bool(), torch.from_numpy(expected))
    assert 0 < shaved.sum() < square.sum() and not (shaved.bool() & ~square.bool()).any()


class Doubted(Box):
    """Box, but on slice 4 the network gives the square only 0.3."""

    def forward(self, x):
        out = super().forward(x)
        out[4, :, 20:20 + self.side, 20:20 + self.width] = float(np.log(0.3 / 0.7))
        return out


def test_pseudo_labels_are_tied_across_slices_as_segment_ties_them_when_the_model_smooths_slices(small, tmp_path):
    """With `smooth_slices` (the default) a round averages each slice's probabilities with its neighbours' before
    it decides, as `segment` does: on 1 mm slices the doubted slice between two sure ones (0.3 -> 0.25 * 1 + 0.5 *
    0.3 + 0.25 * 1 = 0.65) joins the pseudo-label; each slice on its own, it stays out. (Eight slices: one batch.)"""
    p = make_phantom(1, size=(8, 40, 50), spacing=(1.0, 4.8, 4.8))
    write_image(p.image, tmp_path / "thin.nii.gz")
    masks = {}
    for smooth in (False, True):
        cfg = TrainConfig(slice_grid="fit", merge_labels=True, tta=False, smooth_slices=smooth)
        selftraining = _self_training(small, cfg, [Case(str(tmp_path / "thin.nii.gz"), None)])
        scan = selftraining.scans[0]
        assert scan.spacing[selftraining.prep.axis] == pytest.approx(1.0)
        masks[smooth] = selftraining.pseudo_labels(selftraining._probabilities(Doubted(10), scan), scan)[0][:, 0]
    assert masks[False].sum(axis=(1, 2)).tolist() == [0, 0, 100, 100, 0, 100, 100, 100]
    assert masks[True].sum(axis=(1, 2)).tolist() == [0, 0] + [100] * 6


def test_a_run_is_what_it_was_without_unlabeled_scans_until_they_join(tmp_path, small):
    """Every pseudo draw comes after the draws a run without unlabeled scans makes: before halfway, the weights are
    those of that run, bit for bit."""
    cfg, stop = dict(SMALL, epochs=4), RunOptions(device="cpu", show_progress=False, max_steps=5)
    train(TrainConfig(**cfg), [Case(*small[0])], [], tmp_path / "plain", stop)
    train(TrainConfig(**cfg), [Case(*small[0])], [], tmp_path / "unl", stop, unlabeled=[Case(small[1][0], None)])
    plain, unl = load(tmp_path / "plain" / "checkpoint.pt"), load(tmp_path / "unl" / "checkpoint.pt")
    assert unl["step"] == plain["step"] == 5 and unl["pseudo_rounds_done"] == 0 and unl["unlabeled_cases"]
    assert all(torch.equal(plain["model"][k], unl["model"][k]) for k in plain["model"])


def test_rounds_come_halfway_and_over_the_second_half_and_the_model_records_them(tmp_path, small):
    unlabeled = [Case(small[1][0], None, id="s1"), Case(small[2][0], None, id="s2")]
    progress = tmp_path / "progress.jsonl"
    result = train(TrainConfig(**dict(SMALL, epochs=6)), [Case(*small[0])], [], tmp_path / "m",
                   RunOptions(device="cpu", show_progress=False, progress_file=str(progress)), unlabeled=unlabeled)
    rounds, total = result.unlabeled["pseudo_labels"], result.history[-1]["step"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and result.unlabeled["unlabeled_cases"] == ["s1", "s2"]
    assert total / 2 <= rounds[0]["step"] < rounds[1]["step"] < rounds[2]["step"] < total
    for r in rounds:   # each scan either used or not, with the reason
        assert [row["name"] for row in r["scans"]] == ["s1", "s2"]
        assert all(row["used"] or row["reason"] for row in r["scans"])
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [e["round"] for e in events if e["event"] == "pseudo"] == [1, 2, 3]
    meta = json.loads((tmp_path / "m" / "history.json").read_text())["metadata"]
    assert meta["pseudo_labels"] == rounds and meta["pseudo_weight"] == 0.5 and meta["pseudo_rounds"] == 3
    assert meta["pseudo_margin_mm"] == 0.0
    assert [p.name for p in (tmp_path / "m").glob("pseudo-*.pt")] == ["pseudo-3.pt"]


def _seeded(small, out, opts: RunOptions) -> Trainer:
    """A trainer whose one round of pseudo-labels is already made: s1's reference mask, its top rows left out (what
    a model sure of s1 would give; the decision itself is tested above)."""
    trainer = Trainer(TrainConfig(**dict(SMALL, epochs=2, pseudo_rounds=1)), [Case(*small[0])], [], out, opts,
                      unlabeled=[Case(small[1][0], None, id="s1")])
    reference = load_case(Case(*small[1]), trainer.prep, trainer.labels)
    left_out = np.zeros_like(reference.masks[:, :1])
    left_out[:, :, :8] = 1
    trainer.selftraining.load_state_dict({"rounds": [{"round": 1, "step": 0, "scans": [
        {"name": "s1", "used": True, "volume_ratio": 1.0}]}], "used": ["s1"], "maps": torch.from_numpy(
            np.concatenate([reference.masks, left_out], axis=1))})
    out.mkdir(parents=True, exist_ok=True)
    save(trainer.selftraining.state_dict(), pseudo_file(out, 1))
    return trainer


@pytest.mark.slow
def test_pseudo_labeled_patches_train_beside_the_human_ones_and_a_stopped_run_resumes_to_the_same_model(tmp_path,
                                                                                                          small):
    """Once pseudo-labels exist, the second half of every batch is pseudo-labeled patches (weighted, their left-out
    voxels weighing nothing; the batch keeps its size), and a run stopped then resumed from its checkpoint (which
    names the round's file) ends with the uninterrupted run's weights."""
    full = _seeded(small, tmp_path / "full", RunOptions(device="cpu", show_progress=False))
    mixed, human = full.selftraining.mixed, full.train_set
    assert len(mixed.patches) == 12 and (mixed.patches[:, 0] >= len(human.inputs)).all()   # s1's 12 slices
    rows = human.patches[full.order.batch(0, 0)]
    draws = Draws.draw(rows, 0, 0, full.bounds, False, slice(0, 16), 1, 64, pseudo=mixed.patches)
    assert len(draws.rows) == 16 and (draws.rows[:8] == rows[:8]).all() and (draws.rows[8:, 0] >= 12).all()
    assert mixed.slice_weight.tolist() == [1.0] * len(human.inputs) + [0.5] * 12
    assert int(mixed.masks[len(human.inputs):, -1].sum()) == 12 * 8 * 64   # the left-out rows
    assert full.run().status == "finished"
    part = _seeded(small, tmp_path / "part", RunOptions(device="cpu", show_progress=False, max_steps=5))
    assert part.run().status == "max_steps"
    assert load(tmp_path / "part" / "checkpoint.pt")["pseudo_rounds_done"] == 1
    with pytest.raises(ExtremeAugError, match="its own unlabeled scans \\(s1\\); they cannot change"):
        Trainer(TrainConfig(), [], [], tmp_path / "part", RunOptions(device="cpu", show_progress=False, resume=True),
                unlabeled=[Case(small[2][0], None)])
    resumed = Trainer(TrainConfig(), [], [], tmp_path / "part", RunOptions(device="cpu", show_progress=False,
                                                                           resume=True))
    assert resumed.selftraining.mixed is not None and resumed.step == 5
    resumed.run()
    a, b = load(tmp_path / "full" / "model.pt")["state_dict"], load(tmp_path / "part" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = train(TrainConfig(**dict(SMALL, epochs=2)), [Case(*small[0])], [], tmp_path / "plain",
                  RunOptions(device="cpu", show_progress=False))
    assert plain.history[-1]["step"] == full.step and not all(
        torch.equal(a[k], v) for k, v in load(tmp_path / "plain" / "model.pt")["state_dict"].items())


def test_an_unlabeled_scan_of_another_field_of_view_is_refused_on_the_papers_grid_with_its_reason(tmp_path, phantoms):
    """A 12 x 40 x 50 mm crop beside 72 x 192 x 240 mm scans: stretched to the paper's 256 x 256 slices its anatomy
    would appear about five times larger than training ever showed. Alone, it is refused in one line and nothing is
    written; beside a fitting scan, it is left out with a warning and named in the model. On the fitted grid (the
    default) it is shown at the labeled scan's pixel size, and used."""
    crop = tmp_path / "crop_image.nii.gz"
    write_image(make_phantom(0, size=(12, 40, 50), spacing=(1.0, 1.0, 1.0)).image, crop)
    common = ("--width", "4", "--augment", "2", "--epochs", "1", "--device", "cpu", "--quiet")   # 12 steps: 3 rounds
    labeled = ("--image", phantoms[0][0], "--label", phantoms[0][1])
    alone = run_cli("train", *labeled, "--unlabeled", crop, "--out", tmp_path / "m", "--slice-grid", "paper", *common)
    one_line_error(alone, "no unlabeled scan can be used", "crop_image.nii.gz", "times as large")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
    both = run_cli("train", *labeled, "--unlabeled", crop, phantoms[1][0], "--out", tmp_path / "m2",
                   "--slice-grid", "paper", *common)
    assert both.returncode == 0, both.stderr
    assert "warning: unlabeled scan crop_image.nii.gz is not used" in both.stderr
    assert "pseudo-labels of" in both.stdout and "of 2 unlabeled scan(s) in 3 round(s)" in both.stdout
    meta = json.loads((tmp_path / "m2" / "history.json").read_text())["metadata"]
    assert [row["name"] for row in meta["unlabeled_left_out"]] == ["crop_image.nii.gz"]
    assert meta["unlabeled_cases"] == ["crop_image.nii.gz", phantoms[1][0].name]
    fitted = run_cli("train", *labeled, "--unlabeled", crop, "--out", tmp_path / "m3", *common)
    assert fitted.returncode == 0, fitted.stderr
    meta = json.loads((tmp_path / "m3" / "history.json").read_text())["metadata"]
    assert meta["unlabeled_left_out"] == [] and meta["unlabeled_cases"] == ["crop_image.nii.gz"]


def test_the_same_scan_as_labeled_and_unlabeled_is_refused(small):
    with pytest.raises(ExtremeAugError, match="also a labeled training scan"):
        _self_training(small, TrainConfig(slice_grid="fit"), [Case(small[0][0], None)])


@pytest.mark.parametrize("union", [False, True])
def test_pseudo_labels_decide_shared_voxels_as_the_model_stores_it(tmp_path_factory, union):
    """`union` (the default; `--no-union`) reaches the pseudo-labels too: voxels two structures share at 0.4 each (any of them: 0.64)
    are the likelier structure's with it, background without it, as `segment` would decide them."""
    folder = tmp_path_factory.mktemp("structures")
    pair = [(str(folder / f"{seed}_image.nii.gz"), str(folder / f"{seed}_mask.nii.gz")) for seed in (0, 1)]
    for seed, (image, mask) in enumerate(pair):
        p = make_phantom(seed, size=(12, 40, 50), spacing=(6.0, 4.8, 4.8), structures=True)
        write_image(p.image, image)
        write_image(p.mask, mask)
    cfg = TrainConfig(slice_grid="fit", union=union, min_component_mm3=0.0)
    selftraining = _self_training(pair, cfg, [Case(pair[1][0], None)])
    scan = selftraining.scans[0]
    assert len(selftraining.labels) >= 2
    n, size = len(scan.inputs), scan.inputs.shape[-1]
    probs = np.full((n, len(selftraining.labels), size, size), 0.02, np.float32)
    probs[2:10, :2, 20:30, 20:30] = 0.4
    masks = selftraining.pseudo_labels(probs, scan)[0]
    assert masks[2:10, 0, 20:30, 20:30].all() == union and not masks[:, 1:].any()
    assert masks.sum() == (8 * 10 * 10 if union else 0)


def test_how_far_an_unlabeled_scans_pixels_may_differ_follows_the_runs_scale_range():
    """Anatomy 1.3 times smaller than the labeled scan's lies outside the paper's 0.8-1.2 but inside 0.7-1.4."""
    labeled, coarser = [(1.0, 1.0, 3.0)], (1.3, 1.3, 3.0)
    assert "outside the 0.8-1.2 times" in scale_problem(coarser, labeled, axis=2)
    assert scale_problem(coarser, labeled, axis=2, scales=(0.7, 1.4)) is None
    assert "outside the 0.7-1.4 times" in scale_problem((1.5, 1.0, 3.0), labeled, 2, (0.7, 1.4))
