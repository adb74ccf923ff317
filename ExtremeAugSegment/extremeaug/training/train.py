"""Training: on-the-fly extreme augmentation, Dice loss, Adam, checkpoints, resume, clean stops."""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import __version__
from ..common.config import AugmentMode, Device, RunOptions, TrainConfig, check_global_batch
from ..common.errors import ExtremeAugError
from ..common.structures import Structure
from ..data.io import read_scan
from ..data.preprocess import Preprocessing, covering
from ..networks.model import ResUNet
from . import distributed
from .augment import AugmentConfig, EpochOrder, PoolParams
from .averaging import WeightAverage
from .checkpoint import CHECKPOINT, ONNX_FILE, load, located_case, portable_case, resume_state, save
from .dataset import Case, SliceSet, check_cases, load_case, make_preprocessing
from .interrupts import StopFlag, raise_if_interrupted
from .memory import SmallerBatch, memory_error, out_of_memory, release
from .progress import EpochStats, ProgressReporter
from .pseudo import SelfTraining, pseudo_file
from .publish import TrainResult, publish
from .step import Draws, TrainingStep, compile_step, inductor_cache

DEFAULT_WIDTH = {"cuda": 16, "cpu": 8}
DEFAULT_BATCH = {"cuda": 256, "cpu": 16}   # a GPU needs large batches to be busy; a CPU gains nothing from them
CURVE_SECONDS = 5.0


def select_device(name: str) -> torch.device:
    device = Device.parse(name)
    if device == Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == Device.CUDA and not torch.cuda.is_available():
        raise ExtremeAugError(f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu or auto")
    return torch.device(device.value)


class Trainer:
    def __init__(self, cfg: TrainConfig, train_cases: Sequence[Case], val_cases: Sequence[Case], out_dir,
                 opts: RunOptions, structures: Optional[Sequence[Structure]] = None, unlabeled: Sequence[Case] = ()):
        opts.check()
        self.out, self.opts = Path(out_dir), opts
        self.world, self.device = distributed.join(select_device(opts.device))
        state = resume_state(self.out, opts.resume, bool(train_cases), cfg)
        asked_batch = cfg.batch_size
        if state:
            cfg = TrainConfig.stored(state["config"])
            cfg.merge_labels = cfg.merge_labels or "labels" not in state   # older checkpoints learned the union
            train_cases = [located_case(c, state, self.out) for c in state["train_cases"]]
            val_cases = [located_case(c, state, self.out) for c in state["val_cases"]]
            own = [located_case(c, state, self.out) for c in state.get("unlabeled_cases", [])]
            if unlabeled and [Path(c.image).resolve() for c in unlabeled] != [Path(c.image) for c in own]:
                raise ExtremeAugError(f"--resume continues the run in {self.out} with its own unlabeled scans "
                                      f"({', '.join(c.name for c in own) or 'none'}); they cannot change")
            unlabeled = own
        cfg.check()
        check_cases(list(train_cases) + list(val_cases) + list(unlabeled))
        if cfg.width is None:
            cfg.width = DEFAULT_WIDTH[self.device.type]
        if cfg.batch_size is None:
            cfg.batch_size = DEFAULT_BATCH[self.device.type]
        check_global_batch(cfg.batch_size, self.world.size)
        self.cfg, self.train_cases, self.val_cases = cfg, list(train_cases), list(val_cases)
        self.unlabeled = list(unlabeled)
        first_scan = read_scan(self.train_cases[0].image)
        self.prep = Preprocessing.from_dict(state["preprocessing"]) if state else make_preprocessing(
            first_scan, cfg.plane, cfg.slice_grid)
        if not state and self.prep.pixel_mm is not None:
            # every labeled scan whole in the slices: the window grows to hold each (read here and again below,
            # as holding them all beside their slices would not fit for a project of many scans)
            for case in self.train_cases[1:] + self.val_cases:
                self.prep = covering(self.prep, read_scan(case.image))
        table = [Structure.from_dict(d) for d in state["labels"]] if state and state.get("labels") else (
            list(structures) if structures else cfg.table())
        first = load_case(self.train_cases[0], self.prep, table, cfg.label_values, cfg.merge_labels, first_scan)
        self.labels = first.labels   # the first mask fixes the structures; the others are matched to them
        prepared = [first] + [load_case(c, self.prep, self.labels, cfg.label_values, cfg.merge_labels)
                              for c in self.train_cases[1:]]
        self.train_set = SliceSet(prepared, self.device, cfg.context)
        self.selftraining = SelfTraining(self.unlabeled, self.prep, prepared, self.train_set, self.labels, cfg,
                                         self.device) if self.unlabeled else None
        self.val_set = SliceSet([load_case(c, self.prep, self.labels, cfg.label_values, cfg.merge_labels)
                                 for c in val_cases], self.device, cfg.context) if val_cases else None
        torch.manual_seed(cfg.seed)
        torch.backends.cudnn.benchmark = self.device.type == "cuda"   # fixed 128x128 shapes: autotune once
        self.net = ResUNet(cfg.width, in_channels=2 * cfg.context + 1, classes=len(self.labels)).to(
            self.device, memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, fused=self.device.type == "cuda")
        self.average = WeightAverage(self.net) if cfg.average_weights else None
        self.step_fn, self.compiled = self._steps()
        if state and asked_batch and asked_batch != cfg.batch_size:
            self._rebatch(state, asked_batch)
        self.order = EpochOrder(len(self.train_set.patches), cfg.augment, cfg.batch_size, cfg.seed, self.device)
        self.bounds = AugmentConfig.for_slices(self.train_set.slice_size, cfg.augmentation, cfg.scale_each_axis,
                                               cfg.scale_range, cfg.elastic)
        self.pool = PoolParams(len(self.train_set.patches), self.bounds, cfg.seed,
                               self.device) if cfg.augment_mode == AugmentMode.POOL else None
        self.steps_per_epoch = self.order.steps
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.step, self.history, self.best, self.elapsed_before = 0, [], None, 0.0
        self.best_weights: Optional[dict] = None   # on the device; written to best.pt at checkpoints and the end
        self.lr_progress = self.lr_progress_before = 0.0
        self.curve: list = []     # training loss/Dice over short windows, for the training-curve figure
        self.val_curve: list = []  # validations between epoch ends
        if state:
            self.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.history, self.elapsed_before = state["step"], state["history"], state["elapsed_s"]
            self.best = state.get("best")
            self.lr_progress = self.lr_progress_before = state.get("lr_progress", 0.0)
            self.curve = state.get("curve", [])
            if self.average and state.get("averaged"):
                self.average.load_state_dict(state["averaged"])
            self.val_curve = state.get("val_curve", [])
            if state.get("pseudo_rounds_done"):
                self.selftraining.load_state_dict(load(pseudo_file(self.out, state["pseudo_rounds_done"])))

    def _steps(self):
        """The step eagerly, and compiled as asked: in one process the whole step (augmentation, network, loss)
        is one graph; under DistributedDataParallel the network alone is compiled (DDP's gradient buckets split
        the graph, and its all-reduced Dice sums sit between network and loss). A compiled step serves full
        batches only (an epoch's short last batch runs eagerly instead of compiling again); the weights are the
        same tensors, and export and state_dict use the plain `net`."""
        model = self.net
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
        eager = TrainingStep(model, self.cfg.loss, self.world.global_sums, self.train_set.patch)
        if not self.opts.compile.applies(self.device.type):
            return eager, None
        if self.world.distributed:
            return eager, TrainingStep(compile_step(model), self.cfg.loss, self.world.global_sums, self.train_set.patch)
        return eager, compile_step(eager)

    def _rebatch(self, state: dict, batch_size: int) -> None:
        """Continue a checkpoint at another batch size: the same epoch, from the first batch that holds the next
        unseen patch of its order (the rest of the run is no longer the one an uninterrupted run would draw)."""
        n = len(self.train_set.patches)
        old = EpochOrder(n, self.cfg.augment, self.cfg.batch_size, self.cfg.seed, self.device).steps
        new = EpochOrder(n, self.cfg.augment, batch_size, self.cfg.seed, self.device).steps
        epoch, k = divmod(state["step"], old)
        state["step"] = epoch * new + k * self.cfg.batch_size // batch_size
        self.cfg.batch_size = batch_size

    def _lr(self, elapsed: float) -> float:
        """Cosine decay over the run's progress: steps done or, under a time budget, time spent.

        A resumed run's budget covers what is left of the schedule, so the rate does not jump back up."""
        frac = max(self.step / self.total_steps, self.lr_progress_before)
        if self.opts.time_budget_min:
            left = 1.0 - self.lr_progress_before
            frac = max(frac, self.lr_progress_before + left * elapsed / (self.opts.time_budget_min * 60))
        self.lr_progress = min(frac, 1.0)
        return self.cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * self.lr_progress)))

    def train_step(self, parts, elapsed: float):
        rows = self.train_set.patches[torch.cat([idx for _, idx in parts])]
        mixed = self.selftraining.mixed if self.selftraining else None   # None until pseudo-labels join
        draws = Draws.draw(rows, self.step, self.cfg.seed, self.bounds, self.cfg.intensity, self.world.shard(len(rows)),
                           self.train_set.inputs.shape[1], self.train_set.patch, self.pool, parts,
                           mixed.patches if mixed else None)
        arguments = draws.arguments(mixed.inputs, mixed.masks, mixed.slice_weight) if mixed else draws.arguments(
            self.train_set.inputs, self.train_set.masks)
        return self._update(self._forward(arguments), elapsed)

    def optimise(self, x: torch.Tensor, y: torch.Tensor, elapsed: float):
        """One optimiser step on a batch of patches cut elsewhere (benchmarks feed it from other pipelines)."""
        return self._update(self.step_fn.patches(x, y), elapsed)

    def _update(self, outputs, elapsed: float):
        loss, inter, total = outputs
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(elapsed)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.average:
            self.average.update(self.net, self.lr_progress)
        self.step += 1
        return loss.detach(), inter, total

    def _forward(self, arguments: tuple):
        if self.compiled is None or len(arguments[2]) != self._full_share:
            return self.step_fn(*arguments)
        try:
            return self.compiled(*arguments)
        except Exception as e:   # no C compiler, no Triton (Windows): compiling fails before anything has run
            if out_of_memory(e):
                raise
            print(f"torch.compile failed ({type(e).__name__}); training on without it", file=sys.stderr)
            self.compiled = None
            return self.step_fn(*arguments)

    @property
    def _full_share(self) -> int:
        share = self.world.shard(self.cfg.batch_size)
        return share.stop - share.start

    @torch.no_grad()
    def validate(self) -> Optional[float]:
        if self.val_set is None or not self.world.main:
            return None
        self.net.eval()
        scores = []
        for _, sl in self.val_set.per_case():
            inter = total = torch.zeros(len(self.labels), device=self.device)
            for s in range(sl.start, sl.stop, 8):
                x = self.val_set.inputs[s:min(s + 8, sl.stop)]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    pred = (self.net(x.contiguous(memory_format=torch.channels_last)) > 0).float()
                y = self.val_set.masks[s:min(s + 8, sl.stop)].float()
                inter = inter + (pred * y).sum((0, 2, 3))
                total = total + (pred + y).sum((0, 2, 3))
            per_structure = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
            scores.append(float(per_structure.mean()))   # a structure absent from both counts as right
        self.net.train()
        return sum(scores) / len(scores)

    def _checkpoint(self, elapsed: float) -> None:
        if self.best_weights is not None:   # first, so a checkpoint never names a best that is not on disk
            save(self.best_weights, self.out / "best.pt")
            self.best_weights = None
        save({"config": self.cfg.to_dict(), "preprocessing": self.prep.to_dict(),
              "train_cases": [portable_case(c, self.out) for c in self.train_cases],
              "val_cases": [portable_case(c, self.out) for c in self.val_cases], "case_paths": "relative",
              "unlabeled_cases": [portable_case(c, self.out) for c in self.unlabeled],
              "pseudo_rounds_done": len(self.selftraining.rounds) if self.selftraining else 0,
              "labels": [lab.to_dict() for lab in self.labels],
              "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
              "averaged": self.average.state_dict() if self.average else None,
              "step": self.step, "history": self.history, "elapsed_s": elapsed, "best": self.best,
              "lr_progress": self.lr_progress, "curve": self.curve, "val_curve": self.val_curve,
              "version": __version__}, self.out / CHECKPOINT)

    def run(self) -> TrainResult:
        raise_if_interrupted()   # a Ctrl-C swallowed during set-up still means: write nothing
        self.out.mkdir(parents=True, exist_ok=True)
        budget_s = self.opts.time_budget_min * 60 if self.opts.time_budget_min else None
        main = self.world.main
        reporter = ProgressReporter(self.opts.progress_file if main else None, self.total_steps,
                                    self.opts.show_progress and main, initial=self.step, budget_s=budget_s)
        reporter.event("start", device=str(self.device), width=self.cfg.width, augment=self.cfg.augment,
                       epochs=self.cfg.epochs, patches=len(self.train_set.patches), steps_total=self.total_steps,
                       resumed_at_step=self.step, processes=self.world.size, batch_size=self.cfg.batch_size,
                       compile_cache=str(inductor_cache()) if self.compiled is not None else None)
        t0, last_ckpt, status, stats = time.monotonic(), time.monotonic(), "finished", None
        last_curve = 0.0
        stop_at = self.step + self.opts.max_steps if self.opts.max_steps else None
        self.net.train()
        training = True
        try:
            with StopFlag() as stop:
                while self.step < self.total_steps:
                    epoch, k = divmod(self.step, self.steps_per_epoch)
                    if stats is None:
                        stats = EpochStats(self.device)
                    if self.selftraining and self.selftraining.due(self.lr_progress):
                        self._pseudo_round(reporter, self.elapsed_before + time.monotonic() - t0)
                    loss, inter, total = self.train_step(self.order.parts(epoch, k), time.monotonic() - t0)
                    stats.add(loss, inter, total)
                    window = reporter.step(self.step, epoch, stats.window_summary, self.cfg.batch_size)
                    if window and time.monotonic() - last_curve >= CURVE_SECONDS:
                        self.curve.append({"epochs_done": round(self.step / self.steps_per_epoch, 4), "step": self.step,
                                           "loss": round(window[0], 5), "train_dice": round(window[1], 5)})
                        last_curve = time.monotonic()
                    ended_epoch = self.step % self.steps_per_epoch == 0
                    elapsed = time.monotonic() - t0
                    if budget_s and elapsed >= budget_s:
                        status = "time_budget"
                        self._lr(elapsed)   # the schedule is spent: a resumed run goes on at its floor
                    if stop_at is not None and self.step >= stop_at and self.step < self.total_steps:
                        status = "max_steps"
                    if stop.reason or (self.opts.stop_file and os.path.exists(self.opts.stop_file)):
                        status = "stopped"
                    status = self._agreed(status)
                    if ended_epoch or status != "finished":
                        self._end_epoch(epoch, stats, reporter, elapsed)
                        stats = None
                    if status != "finished":
                        break
                    # on the timer only: a GPU ends an epoch every few seconds, and 100 fsynced checkpoints of
                    # model + Adam state would cost more than the training
                    if main and time.monotonic() - last_ckpt > self.opts.checkpoint_minutes * 60:
                        if not ended_epoch:   # long epochs (CPU, 50x): validate between epochs too
                            self._validate_and_keep_best(reporter)
                        self._checkpoint(self.elapsed_before + elapsed)
                        last_ckpt = time.monotonic()
            elapsed, training = time.monotonic() - t0, False
            if main:
                self._checkpoint(self.elapsed_before + elapsed)
                result = publish(self, status, elapsed)
            else:
                result = TrainResult(status, self.out, self.step / self.steps_per_epoch, self.history,
                                     rank=self.world.rank)
            self.world.barrier()   # the other ranks wait for rank 0's model, then all leave together
        except (RuntimeError, MemoryError) as e:   # torch's OutOfMemoryError is one; cuDNN and cuBLAS use their words
            if not out_of_memory(e):
                raise
            raise self._out_of_memory(reporter, training) from None
        reporter.event("end", status=status, epochs_done=result.epochs_done, best_val_dice=result.best_val_dice,
                       onnx=str(self.out / ONNX_FILE),
                       stop_reason=self._stop_reason(stop.reason, status))
        reporter.close()
        return result

    def _pseudo_round(self, reporter: ProgressReporter, elapsed: float) -> None:
        """Pseudo-label the unlabeled scans with the model as it is now (every rank alike: same weights, same scans),
        then a checkpoint that names the new round's file; the previous round's file goes once nothing names it."""
        report = self.selftraining.label(self.net, self.step)
        if self.world.main:
            reporter.event("pseudo", **report)
            save(self.selftraining.state_dict(), pseudo_file(self.out, report["round"]))
            self._checkpoint(elapsed)
            pseudo_file(self.out, report["round"] - 1).unlink(missing_ok=True)

    def _out_of_memory(self, reporter: ProgressReporter, training: bool) -> ExtremeAugError:
        """A smaller batch to try (`train` tries it), or, with none left or retries off, the error and its advice."""
        error = memory_error(self.cfg.batch_size, self.cfg.width, self.device.type, self.out / CHECKPOINT,
                             training and self.opts.retry_smaller_batch and not self.world.distributed)
        if isinstance(error, SmallerBatch):
            reporter.event("retry", reason="out of memory", batch_size=error.batch_size, resume=error.resume)
        else:
            reporter.event("end", status="error", message=str(error))
        reporter.close()
        return error

    def _stop_reason(self, signal_name: Optional[str], status: str) -> Optional[str]:
        if signal_name or status != "stopped":
            return signal_name
        return "stop file" if self.opts.stop_file and os.path.exists(self.opts.stop_file) else "another rank stopped"

    def _agreed(self, status: str) -> str:
        """Under torchrun, a stop (budget, stop file, signal) that any rank saw, at the same step on every rank;
        between agreements a rank goes on, and max_steps and the epochs end every rank at the same step."""
        if not self.world.distributed or status == "max_steps":
            return status
        if self.step % distributed.AGREE_EVERY and self.step < self.total_steps:
            return "finished"
        codes = ("finished", "time_budget", "stopped")
        return codes[self.world.agree(codes.index(status), self.device)]

    def _end_epoch(self, epoch: int, stats: "EpochStats", reporter: ProgressReporter, elapsed: float) -> None:
        val = self.validate()
        done = self.step / self.steps_per_epoch
        loss, dice = stats.summary()
        row = {"epoch": epoch + 1, "epochs_done": round(done, 4), "step": self.step, "loss": loss,
               "train_dice": dice, "val_dice": val, "elapsed_s": round(self.elapsed_before + elapsed, 2),
               "patches_per_s": round(stats.steps * self.cfg.batch_size / stats.seconds(), 1)}
        self.history.append(row)
        reporter.event("epoch", **row)
        self._keep_if_best(val, done)

    def _validate_and_keep_best(self, reporter: ProgressReporter) -> None:
        val = self.validate()
        if val is not None:
            done = round(self.step / self.steps_per_epoch, 4)
            self.val_curve.append({"epochs_done": done, "step": self.step, "val_dice": val})
            reporter.event("validation", epochs_done=done, step=self.step, val_dice=val)
            self._keep_if_best(val, done)

    def _keep_if_best(self, val: Optional[float], done: float) -> None:
        if val is not None and (self.best is None or val > self.best["val_dice"]):
            self.best = {"val_dice": val, "epochs_done": done}
            self.best_weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}

def train(cfg: TrainConfig, train_cases: Sequence[Case], val_cases: Sequence[Case], out_dir,
          opts: Optional[RunOptions] = None, structures: Optional[Sequence[Structure]] = None,
          unlabeled: Sequence[Case] = ()) -> TrainResult:
    """Train and export a model; out of memory in training tries again at half the batch (one line on stderr).

    Args:
        structures: the label table to learn (a project's); default: --label-names, else the first mask's.
        unlabeled: scans without labels (`Case` with label None) to pseudo-label and learn from (`pseudo`).
    """
    opts, started = opts or RunOptions(), time.monotonic()
    try:
        while True:
            try:
                return Trainer(cfg, train_cases, val_cases, out_dir, opts, structures, unlabeled).run()
            except SmallerBatch as smaller:
                print(smaller.describe(), file=sys.stderr)
                cfg, opts = smaller.retried(cfg, opts, time.monotonic() - started)
            release()
    finally:
        distributed.close()
