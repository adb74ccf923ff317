"""The experiment grid: data discovery (shared naming and SPIDER), training sets, compute matching,
a real (tiny) grid through the command line, and resuming it."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image, one_line_error, run_cli
from extremeaug.common.errors import ExtremeAugError
from extremeaug.data.io import read_binary
from extremeaug.data.phantom import write_phantoms
from extremeaug.experiments.grid import SPIDER_DISC_LABELS, discover, grid, training_sets


def test_discover_spider_layout_takes_discs_only(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    labels = np.zeros((4, 8, 8), np.uint16)
    labels[0], labels[1], labels[2] = 1, 100, 201   # vertebra, spinal canal, disc
    for pid in ("1", "2"):
        sitk.WriteImage(make_image(np.random.rand(4, 8, 8).astype(np.float32)),
                        str(tmp_path / "images" / f"{pid}_t2.mha"))
        sitk.WriteImage(make_image(labels), str(tmp_path / "masks" / f"{pid}_t2.mha"))
    sitk.WriteImage(make_image(labels), str(tmp_path / "images" / "3_t1.mha"))   # other sequences are ignored
    scans, label_values = discover(tmp_path)
    assert [s.id for s in scans] == ["1", "2"] and label_values == SPIDER_DISC_LABELS
    disc = sitk.GetArrayFromImage(read_binary(scans[0].label, label_values))
    assert disc[2].all() and not disc[:2].any()


def test_discover_shared_naming_and_refusals(tmp_path, phantoms):
    scans, label_values = discover(phantoms[0][0].parent)
    assert [s.id for s in scans] == [f"phantom_{i}" for i in range(4)] and label_values is None
    with pytest.raises(Exception, match="no scan/mask pairs"):
        discover(tmp_path)


def test_training_sets_take_turns_or_use_fixed_validation():
    ids = ["11", "20", "25"]
    sets = training_sets(ids, [1, 2])
    assert sets == [(("11",), ("20", "25")), (("20",), ("11", "25")), (("25",), ("11", "20")),
                    (("11", "20"), ("25",)), (("20", "25"), ("11",)), (("25", "11"), ("20",))]
    assert training_sets(ids, [1, 2], val=["25"]) == [(("11",), ("25",)), (("11", "20"), ("25",))]
    with pytest.raises(Exception, match="needs 1 to 2"):
        training_sets(ids, [3])
    with pytest.raises(Exception, match="unknown scan id"):
        training_sets(ids, [1], val=["99"])


def test_match_steps_scales_epochs():
    cells = grid([(("a",), ("b",))], [5, 20, 50], ["pool"], 2, match_steps=True)
    assert [(c.augment, c.epochs) for c in cells] == [(5, 20), (20, 5), (50, 2)]
    assert {c.augment * c.epochs for c in cells} == {100}


def test_shards_split_the_grid_without_overlap():
    from extremeaug.experiments.grid import shard

    cells = grid([(("a",), ("b",)), (("b",), ("a",))], [5, 20, 50], ["fresh", "pool"], 1, match_steps=False)
    parts = [shard(cells, f"{i}/3") for i in range(3)]
    assert sorted(c.name for part in parts for c in part) == sorted(c.name for c in cells)
    assert all(len(part) == 4 for part in parts) and shard(cells, None) == cells
    for bad in ("3/3", "1", "a/b"):
        with pytest.raises(ExtremeAugError, match="--shard"):
            shard(cells, bad)


@pytest.mark.slow
def test_experiment_grid_runs_the_papers_set_up_reports_and_resumes(tmp_path, phantoms):
    out = tmp_path / "exp"
    args = ["experiment", "--data", phantoms[0][0].parent, "--out", out, "--scans", "1", "--augment", "1,2",
            "--augment-mode", "fresh,pool", "--epochs", "1", "--match-steps", "--val", "phantom_3",
            "--device", "cpu", "--quiet"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    assert sorted((r["mode"], r["augment"], r["epochs"]) for r in rows) == [
        ("fresh", "1", "2"), ("fresh", "2", "1"), ("pool", "1", "2"), ("pool", "2", "1")]
    steps = [int(r["steps"]) for r in rows]   # compute-matched: the same patches, steps up to a partial batch
    assert max(steps) - min(steps) <= 1, steps
    for row in rows:
        assert row["train"] == "phantom_0" and row["val"] == "phantom_3"
        assert 0.0 < float(row["val_dice"]) <= 1.0 and 0.0 < float(row["train_dice"]) <= 1.0
    for history in out.glob("cells/*/model/history.json"):   # the paper's grid, loss and one-pass segmentation
        meta = json.loads(history.read_text(encoding="utf-8"))["metadata"]
        assert meta["loss"] == "dice" and meta["preprocessing"]["slice_size"] == 256
        assert meta["tta"] is meta["smooth_slices"] is False
    report = (out / "results.md").read_text(encoding="utf-8")
    assert "Table I" in report and "Table II" in report and "| 2x (1) |" in report
    for fig in ("fig_training_by_augmentation.png", "fig_training_by_scans.png", "fig_validation.png"):
        assert (out / fig).stat().st_size > 5_000

    before = (out / "results.csv").read_text()
    again = run_cli(*args)                                           # every cell is done: nothing retrains
    assert again.returncode == 0 and (out / "results.csv").read_text() == before


def test_experiment_bad_arguments(tmp_path, phantoms):
    one_line_error(run_cli("experiment", "--data", tmp_path, "--out", tmp_path / "o"), "no scan/mask pairs")
    one_line_error(run_cli("experiment", "--data", phantoms[0][0].parent, "--out", tmp_path / "o",
                           "--augment-mode", "paper"), "--augment-mode")
    one_line_error(run_cli("experiment", "--data", phantoms[0][0].parent, "--out", tmp_path / "o",
                           "--scans", "9"), "--scans 9")


def test_table_one_uses_the_last_full_epoch_or_the_end_of_a_budgeted_run():
    from extremeaug.experiments.report import final_train_dice

    windows = [{"step": s, "train_dice": d} for s, d in ((10, 0.1), (50, 0.5), (85, 0.8), (100, 0.9))]
    full = {"curve": [{"epochs_done": 1.0, "train_dice": 0.4}, {"epochs_done": 2.0, "train_dice": 0.7}],
            "window_curve": windows, "steps": 100}
    assert final_train_dice(full) == (0.7, "last epoch")
    budgeted = {"curve": [{"epochs_done": 0.31, "train_dice": 0.45}], "window_curve": windows, "steps": 100}
    assert final_train_dice(budgeted) == (pytest.approx(0.85), "last 20% of steps")


def test_experiment_labels_reports_dice_per_structure(tmp_path):
    write_phantoms(tmp_path / "data", 2, structures=True)
    out = tmp_path / "exp"
    r = run_cli("experiment", "--data", tmp_path / "data", "--out", out, "--scans", "1", "--augment", "1",
                "--epochs", "1", "--val", "phantom_1", "--folds", "1", "--labels", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    report = (out / "results.md").read_text(encoding="utf-8")
    assert "Validation Dice per structure" in report and "| label 1 | label 2 | label 3 | mean |" in report
    row = json.loads(next(out.glob("cells/*/result.json")).read_text())
    assert sorted(row["val_structures"]) == ["label 1", "label 2", "label 3"]
