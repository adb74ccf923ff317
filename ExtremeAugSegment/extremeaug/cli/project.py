"""`extremeaug project ...`: the labeling project and its bootstrap loop on the command line, a front end
on `Project` like the 3D Slicer module."""
from __future__ import annotations

import sys
import time
from typing import List

from ..common.config import RunOptions, TrainConfig, add_arguments, changed_settings, from_arguments, int_list
from ..common.errors import ExtremeAugError, Interrupted
from ..common.events import format_eta
from ..common.output import json_text
from ..common.structures import describe, parse_table
from ..project import Device, LabelKind, Plane, Project, RunSpec, RunStatus, Split

BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"   # the worker's ETA (it knows the budget)
TRAIN_FLAGS = ("augment", "epochs", "batch_size", "width", "lr", "loss", "seed", "augment_mode", "intensity",
               "slice_grid", "tta", "smooth_slices", "union", "threshold", "min_component_mm3", "min_relative_size")
RUN_FLAGS = ("device", "time_budget_min", "checkpoint_minutes", "compile")


def _print_json(value) -> None:
    print(json_text(value, indent=1))


def cmd_init(a) -> int:
    table = parse_table(a.labels) if a.labels else None
    with Project.create(a.dir, a.plane, a.val_fraction, a.label_values, table, a.merge_labels) as p:
        print(f"created project {p.root} (plane {a.plane}, validation fraction {a.val_fraction}"
              + (f", structures {describe(table)})" if table else ")"))
    return 0


def cmd_add(a) -> int:
    with Project.open(a.dir) as project:
        c = project.add(a.scan, a.label, a.id, a.split, new_case=a.new_id)
    if c.existing:
        print(f"this scan is already case {c.id} ({c.state.value})" + (
            "; the label is stored on it" if a.label else "; nothing added"))
    else:
        print(f"added case {c.id}: {c.state.value}" + (f", {c.split.value} split" if c.split else ""))
    return 0


def cmd_accept(a) -> int:
    with Project.open(a.dir) as project:
        c = project.accept(a.case, a.label, a.split, LabelKind.MANUAL if a.manual else None)
    fix = c.history[-1].correction
    print(f"case {c.id}: {c.state.value} label stored ({c.label}), {c.split.value} split; {len(c.history)} label "
          "file(s) in its history" + (f"; {fix.describe()}" if fix else ""))
    return 0


def cmd_cases(a) -> int:
    with Project.open(a.dir) as project:
        rows = [project.case(a.case)] if a.case else project.cases()
    if a.json:
        _print_json(rows[0] if a.case else rows)
        return 0
    for r in rows:
        unsure = f"  uncertainty {r.uncertainty:.3f} (v{r.auto_version})" if r.uncertainty is not None else ""
        print(f"{r.id:<24} {r.state.value:<10} {r.split.value if r.split else '-':<11}{unsure}")
    for lab in rows[0].history if a.case else []:
        fix = lab.correction
        print(f"  label {lab.id}: {lab.kind.value:<9} {lab.voxels:>9} voxels  {lab.path}" + (
            f"  (v{lab.model_version})" if lab.model_version else "") + (
            f"  by {lab.accepted_by}" if lab.accepted_by else "") + (f"  {fix.describe()}" if fix else ""))
    return 0


def run_spec(a) -> RunSpec:
    """What `project train`'s flags ask for."""
    return RunSpec(from_arguments(TrainConfig, a, TRAIN_FLAGS), gpus=a.gpus, unlabeled=a.unlabeled,
                   **{n: getattr(a, n) for n in RUN_FLAGS})


RESUME_FLAGS = ("batch_size", "device", "time_budget_min")   # what --resume may change; the run keeps the rest


def _refuse_changes_on_resume(project: Project, a) -> None:
    """A flag given with --resume that differs from the run's own setting is refused, not ignored (the run's own
    command again, with --resume, is fine)."""
    last = project.run()
    if last is None:
        return   # resume says there is nothing to resume
    asked, own = run_spec(a), project.job(last.id)[0]
    changed = changed_settings(TrainConfig, asked.train, own.train, [n for n in TRAIN_FLAGS if n not in RESUME_FLAGS])
    changed += changed_settings(RunOptions, asked, own, [n for n in RUN_FLAGS if n not in RESUME_FLAGS])
    if RunSpec.gpus != asked.gpus != own.gpus:
        changed.append(f"--gpus {asked.gpus} (the run's: {own.gpus})")
    if asked.unlabeled and not own.unlabeled:
        changed.append("--unlabeled (the run's: without it)")
    if changed:
        raise ExtremeAugError(f"--resume continues run {last.id} with its own settings: {', '.join(changed)} cannot "
                              "change (only --batch-size, --device and --time-budget can)")


def cmd_train(a) -> int:
    with Project.open(a.dir) as project:
        if a.resume:
            _refuse_changes_on_resume(project, a)
            run_id = project.resume(None if a.device == Device.AUTO else a.device, a.time_budget_min, a.batch_size)
        else:
            run_id = project.train(run_spec(a))
        print(f"training run {run_id} started in the background (log: {project.run_folder(run_id) / 'worker.log'})")
        if not a.wait:
            print(f"follow it with: extremeaug project status {project.root}")
            return 0
        return _follow(project, run_id)


def _follow(project: Project, run_id: str) -> int:
    """A progress bar fed by the worker's JSON lines; Ctrl-C stops following, not training."""
    from tqdm import tqdm

    reader, bar = project.events(run_id), None
    try:
        while True:
            run = project.run(run_id)
            for e in reader.read():
                if e["event"] == "start":
                    bar = bar or tqdm(total=e["steps_total"], initial=e["resumed_at_step"], unit="step", bar_format=BAR)
                elif e["event"] == "progress" and bar is not None:
                    bar.update(e["step"] - bar.n)
                    bar.set_postfix(epoch=e["epoch"], loss=e["loss"], dice=e["dice"],
                                    patches_s=e["patches_per_s"], eta=format_eta(e["eta_s"]))
                elif e["event"] == "phase" and e["phase"] != "training":
                    tqdm.write(f"[{run_id}] {e['phase']}")
                elif e["event"] == "pseudo":
                    used = [row["name"] for row in e["scans"] if row["used"]]
                    tqdm.write(f"[{run_id}] pseudo-labels, round {e['round']}: {len(used)} of {len(e['scans'])} "
                               "unlabeled case(s)" + (f" ({', '.join(used)})" if used else ""))
            if not run.active:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nstopped following; run {run_id} goes on in the background (`extremeaug project cancel` "
              "stops it)", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if run.status == RunStatus.FINISHED:
        print(f"run {run_id} finished: model version {run.version} is now active")
        return 0
    print(f"run {run_id} {run.status.value}: {run.message or ''}", file=sys.stderr)
    return 1 if run.status == RunStatus.CANCELLED else 2


def cmd_status(a) -> int:
    with Project.open(a.dir) as project:
        s = project.status()
    if a.json:
        _print_json(s)
        return 0
    states = ", ".join(f"{v} {k}" for k, v in s.states.items())
    print(f"{s.project}: {s.cases} case(s): {states}; split {s.splits['train']} train / "
          f"{s.splits['validation']} validation; {s.versions} model version(s), active: "
          f"{s.active_version or 'none'}")
    r = s.run
    if r:
        line = f"last run {r.id}: {r.status.value}"
        if r.active:
            line += f" ({r.phase.value if r.phase else 'starting'}"
            p = r.progress
            if p:
                line += (f", step {p.step}/{p.steps_total}, epoch {p.epoch}, loss {p.loss:.3f}, Dice {p.dice:.3f}, "
                         f"{p.patches_per_s:.0f} patches/s, ETA {format_eta(p.eta_s)}")
            line += f", heartbeat {r.heartbeat_age_s} s ago)" if r.heartbeat_age_s is not None else ")"
        if r.message:
            line += f": {r.message}"
        print(line)
    return 0


def cmd_cancel(a) -> int:
    with Project.open(a.dir) as project:
        r = project.cancel()
    status = r.status.value if not r.active else "stopping"
    print(f"run {r.id}: {status}" + ("; `extremeaug project train --resume` continues it"
                                    if status in ("cancelled", "stopping") else ""))
    return 0


def cmd_segment(a) -> int:
    with Project.open(a.dir) as project:
        ids = list(a.case) + (project.unlabeled() if a.unlabeled else [])
        if a.add:
            ids.append(project.add(a.add, case_id=a.id, source=a.source).id)
        if not ids:
            raise ExtremeAugError("name the cases to segment, or pass --unlabeled or --add")
        stored: List[str] = []

        def show(r) -> None:
            stored.append(r.case_id)
            print(json_text(r, indent=None) if a.json else f"{r.case_id}: {r.voxels} voxels, uncertainty "
                  f"{r.uncertainty:.3f} (model v{r.version}); {r.state.value}", flush=True)
        try:
            project.segment(ids, a.version, a.device, progress=show)
        except KeyboardInterrupt:
            raise Interrupted(f"after storing the predictions of {len(stored)} of {len(ids)} case(s)" + (
                f" ({', '.join(stored)})" if stored else "") + "; the others were not segmented") from None
    return 0


def cmd_suggest(a) -> int:
    with Project.open(a.dir) as project:
        s = project.suggest()
    if a.json:
        _print_json(s)
    else:
        print(f"{s.case}: {s.reason}" if s.case else s.reason)
    return 0


def cmd_models(a) -> int:
    with Project.open(a.dir) as project:
        rows = project.versions(rescore=not a.no_rescore, device=a.device)
    if a.plot:
        print(f"wrote {Project.plot(rows, a.plot)}", file=sys.stderr if a.json else sys.stdout)
    if a.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no model versions yet")
    for r in rows:
        now = r.val_now
        unscored = f" ({now.cases - now.scored} not scored yet)" if now.scored < now.cases else ""
        fixes = r.corrections
        print(f"{'*' if r.active else ' '} v{r.version}: {r.training_scans} training scan(s)" + (
              f" and {r.unlabeled_scans} unlabeled" if r.unlabeled_scans else "") + f", {r.epochs_done:.2f} "
              f"epoch(s) at {r.augment}x in {r.seconds:.0f} s; validation Dice {r.val_then.dice.format()} on "
              f"{r.val_then.cases} case(s) then, {now.dice.format()} on {now.cases} now{unscored} "
              f"(HD95 {now.hd95_mm.format('.2f', ' mm')})" + (
                  f"; {fixes.corrections} correction(s) of its predictions, {fixes.voxels_changed.format('.0f')} "
                  "voxels changed on average" if fixes.corrections else ""))
        if now.per_structure:
            print("     per structure now: " + ", ".join(f"{n} {m.format()}" for n, m in now.per_structure.items()))
    return 0


def cmd_use(a) -> int:
    with Project.open(a.dir) as project:
        print(f"active model: v{project.use(a.version)}")
    return 0


def cmd_verify(a) -> int:
    with Project.open(a.dir) as project:
        problems = project.verify()
    for p in problems:
        print(p)
    if problems:
        raise ExtremeAugError(f"{len(problems)} problem(s) with the stored files")
    print("the database is sound; every scan, label and model file is present and matches its checksum")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("project", help="a labeling project: add scans, train in the background, segment, "
                       "accept corrections, retrain")
    ps = p.add_subparsers(dest="project_command", required=True)

    def cmd(name, func, help_text):
        c = ps.add_parser(name, help=help_text)
        c.add_argument("dir", help="project folder")
        c.set_defaults(func=func)
        return c

    splits = {"default": Split.AUTO.value, "choices": Split.values()}
    c = cmd("init", cmd_init, "create a project in a new or empty folder")
    c.add_argument("--plane", default=Plane.AUTO.value, choices=Plane.values())
    c.add_argument("--val-fraction", type=float, default=0.25, help="share of labeled cases kept for validation")
    c.add_argument("--label-values", type=int_list, help="mask label values to learn, e.g. 201,202 "
                   "(default: all > 0)")
    c.add_argument("--labels", metavar="NAME=VALUE,...", help="the structures, e.g. L5-S1=1,L4-L5=2 (default: "
                   "those of the first labeled case); a later label with another value is refused")
    c.add_argument("--merge-labels", action="store_true", help="learn every mask's structures as one")
    c = cmd("add", cmd_add, "register a scan, with its manual label if given (a scan already in the project, "
            "same voxels and grid, is not added twice)")
    c.add_argument("scan")
    c.add_argument("--label", help="a manual mask for it")
    c.add_argument("--id", help="case id (default: the file name)")
    c.add_argument("--split", **splits)
    c.add_argument("--new-id", action="store_true", help="refuse, naming its case, a scan the project holds")
    c = cmd("accept", cmd_accept, "store a corrected mask for a case (earlier labels are kept)")
    c.add_argument("case")
    c.add_argument("--label", required=True)
    c.add_argument("--split", **splits)
    c.add_argument("--manual", action="store_true", help="a delineation from scratch rather than a correction")
    c = cmd("cases", cmd_cases, "list the cases (or one case with its label history)")
    c.add_argument("case", nargs="?")
    c.add_argument("--json", action="store_true")
    c = cmd("train", cmd_train, "train in a background worker on the labeled training cases")
    add_arguments(c, TrainConfig, TRAIN_FLAGS)
    add_arguments(c, RunOptions, RUN_FLAGS)
    c.add_argument("--gpus", type=int, default=RunSpec.gpus, metavar="N",
                   help="train on N GPUs of this machine, one process each (--batch-size is split between them)")
    c.add_argument("--unlabeled", action="store_true", help="also learn from the cases without a human label: "
                   "from halfway through the run the model pseudo-labels their confident voxels (training material "
                   f"only, never stored as a label); at most {Project.UNLABELED_PER_RUN} cases, spread over the "
                   "order they were added")
    c.add_argument("--wait", action="store_true", help="follow the run with a progress bar")
    c.add_argument("--resume", action="store_true", help="continue the last cancelled, failed or dead run (a new "
                   "--batch-size, --device or --time-budget may be given)")
    c = cmd("status", cmd_status, "cases, versions and the current run (with a dead-worker check)")
    c.add_argument("--json", action="store_true")
    cmd("cancel", cmd_cancel, "stop the running training (it checkpoints; --resume continues)")
    c = cmd("segment", cmd_segment, "segment cases with the active (or a given) model version")
    c.add_argument("case", nargs="*")
    c.add_argument("--unlabeled", action="store_true", help="every case without a human label")
    c.add_argument("--version", "--model", dest="version", type=int, metavar="VERSION",
                   help="model version (default: the active one; --model is its old name)")
    c.add_argument("--json", action="store_true", help="one JSON line per case, printed when it is stored")
    c.add_argument("--add", metavar="SCAN", help="add this scan to the project first (as `add` does), then segment it")
    c.add_argument("--id", help="with --add: its case id (default: the file name)")
    c.add_argument("--source", help="with --add: where the scan came from, for the case's record")
    add_arguments(c, RunOptions, ["device"])
    c = cmd("suggest", cmd_suggest, "the case to correct next, and why")
    c.add_argument("--json", action="store_true")
    c = cmd("models", cmd_models, "model versions with validation scores and the corrections they needed")
    c.add_argument("--json", action="store_true")
    c.add_argument("--plot", metavar="PNG", help="draw validation Dice against version and training scans, and the "
                   "mean correction per version")
    c.add_argument("--no-rescore", action="store_true", help="do not score old versions on new validation cases")
    add_arguments(c, RunOptions, ["device"])
    c = cmd("use", cmd_use, "make a model version the active one (roll back)")
    c.add_argument("version", type=int)
    cmd("verify", cmd_verify, "check the database, and every stored scan, label and model against its checksum")
