"""`extremeaug project ...`: the labeling project and its bootstrap loop on the command line."""
from __future__ import annotations

import json
import math
import sys
import time

from ..errors import ExtremeAugError
from .store import Store

BAR = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"   # the worker's ETA (it knows the budget)


def _print_json(obj) -> None:
    def clean(v):
        if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    print(json.dumps(clean(obj), indent=1))


def cmd_init(a) -> int:
    from ..cli import _labels
    if not 0 <= a.val_fraction < 1:
        raise ExtremeAugError("--val-fraction must be in [0, 1)")
    with Store.create(a.dir, plane=a.plane, val_fraction=a.val_fraction, label_values=_labels(a.label_values)) as s:
        print(f"created project {s.root} (plane {a.plane}, validation fraction {a.val_fraction})")
    return 0


def cmd_add(a) -> int:
    from .cases import add_case
    with Store.open(a.dir) as store:
        c = add_case(store, a.scan, a.label, a.id, a.split)
    print(f"added case {c['id']}: {c['state']}" + (f", {c['split']} split" if c["split"] else ""))
    return 0


def cmd_accept(a) -> int:
    from .cases import accept
    with Store.open(a.dir) as store:
        c = accept(store, a.case, a.label, a.split, "manual" if a.manual else "corrected")
    print(f"case {c['id']}: {c['state']} label stored ({c['label']}), {c['split']} split; "
          f"{len(c['history'])} label file(s) in its history")
    return 0


def cmd_cases(a) -> int:
    from .cases import case_summary, list_cases
    with Store.open(a.dir) as store:
        rows = [case_summary(store, a.case)] if a.case else list_cases(store)
    if a.json:
        _print_json(rows if not a.case else rows[0])
        return 0
    for r in rows:
        unsure = f"  uncertainty {r['uncertainty']:.3f} (v{r['auto_version']})" if r["uncertainty"] is not None else ""
        print(f"{r['id']:<24} {r['state']:<10} {r['split'] or '-':<11}{unsure}")
    return 0


def cmd_train(a) -> int:
    from . import runs
    with Store.open(a.dir) as store:
        if a.resume:
            config = {"device": a.device if a.device != "auto" else None, "time_budget_min": a.time_budget}
        else:
            config = runs.new_config(store, a.device, a.time_budget, a.checkpoint_minutes, augment=a.augment,
                                     epochs=a.epochs, batch_size=a.batch_size, width=a.width, lr=a.lr, loss=a.loss,
                                     seed=a.seed)
        run_id = runs.start(store, config, a.resume)
        print(f"training run {run_id} started in the background (log: {runs.run_dir(store, run_id) / 'worker.log'})")
        if not a.wait:
            print(f"follow it with: extremeaug project status {store.root}")
            return 0
        return _follow(store, run_id)


def _follow(store: Store, run_id: str) -> int:
    """A progress bar fed by the worker's JSON lines; Ctrl-C stops following, not training."""
    from tqdm import tqdm

    from .runs import ACTIVE, EventReader, reap, run_dir
    reader, bar = EventReader(run_dir(store, run_id) / "progress.jsonl"), None
    try:
        while True:
            reap(store)
            run = store.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            for e in reader.read():
                if e["event"] == "start":
                    bar = bar or tqdm(total=e["steps_total"], initial=e["resumed_at_step"], unit="step", bar_format=BAR)
                elif e["event"] == "progress" and bar is not None:
                    bar.update(e["step"] - bar.n)
                    bar.set_postfix(epoch=e["epoch"], loss=e["loss"], dice=e["dice"],
                                    patches_s=e["patches_per_s"], eta_s=e["eta_s"])
                elif e["event"] == "phase" and e["phase"] != "training":
                    tqdm.write(f"[{run_id}] {e['phase']}")
            if run["status"] not in ACTIVE:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nstopped following; run {run_id} goes on in the background (`extremeaug project cancel` "
              "stops it)", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    if run["status"] == "finished":
        print(f"run {run_id} finished: model version {run['version']} is now active")
        return 0
    print(f"run {run_id} {run['status']}: {run['message'] or ''}", file=sys.stderr)
    return 1 if run["status"] == "cancelled" else 2


def cmd_status(a) -> int:
    from .status import project_status
    with Store.open(a.dir) as store:
        s = project_status(store)
    if a.json:
        _print_json(s)
        return 0
    states = ", ".join(f"{v} {k}" for k, v in s["states"].items())
    print(f"{s['project']}: {s['cases']} case(s): {states}; split {s['splits']['train']} train / "
          f"{s['splits']['validation']} validation; {s['versions']} model version(s), active: "
          f"{s['active_version'] or 'none'}")
    r = s["run"]
    if r:
        line = f"last run {r['id']}: {r['status']}"
        if r["status"] in ("starting", "running"):
            line += f" ({r['phase'] or 'starting'}"
            if r.get("progress"):
                p = r["progress"]
                eta = "?" if p["eta_s"] is None else time.strftime("%H:%M:%S", time.gmtime(p["eta_s"]))
                line += (f", step {p['step']}/{p['steps_total']}, epoch {p['epoch']}, loss {p['loss']:.3f}, Dice "
                         f"{p['dice']:.3f}, {p['patches_per_s']:.0f} patches/s, ETA {eta}")
            line += f", heartbeat {r['heartbeat_age_s']} s ago)" if r["heartbeat_age_s"] is not None else ")"
        if r["message"]:
            line += f": {r['message']}"
        print(line)
    return 0


def cmd_cancel(a) -> int:
    from .runs import cancel
    with Store.open(a.dir) as store:
        r = cancel(store)
    print(f"run {r['run']}: {r['status']}" + ("; `extremeaug project train --resume` continues it"
                                             if r["status"] in ("cancelled", "stopping") else ""))
    return 0


def cmd_segment(a) -> int:
    from .suggest import segment_cases, unlabeled_ids
    with Store.open(a.dir) as store:
        ids = list(a.case) + (unlabeled_ids(store) if a.unlabeled else [])
        if not ids:
            raise ExtremeAugError("name the cases to segment, or pass --unlabeled")
        segment_cases(store, list(dict.fromkeys(ids)), a.model, a.device, progress=lambda r: print(
            f"{r['id']}: {r['voxels']} voxels, uncertainty {r['uncertainty']:.3f} (model v{r['version']}); "
            f"{r['state']}"))
    return 0


def cmd_suggest(a) -> int:
    from .suggest import suggest
    with Store.open(a.dir) as store:
        s = suggest(store)
    if a.json:
        _print_json(s)
    else:
        print(f"{s['case']}: {s['reason']}" if s["case"] else s["reason"])
    return 0


def cmd_models(a) -> int:
    from .versions import list_versions, plot_versions
    with Store.open(a.dir) as store:
        rows = list_versions(store, rescore=not a.no_rescore, device=a.device)
    if a.plot:
        print(f"wrote {plot_versions(rows, a.plot)}", file=sys.stderr if a.json else sys.stdout)
    if a.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no model versions yet")

    def fmt(v, spec=".3f"):
        return "-" if v is None else format(v, spec)
    for r in rows:
        print(f"{'*' if r['active'] else ' '} v{r['version']}: {r['training_scans']} training scan(s), "
              f"{r['epochs_done']:.2f} epoch(s) at {r['augment']}x in {r['seconds']:.0f} s; validation Dice "
              f"{fmt(r['val_then_dice'])} on {r['val_then_cases']} case(s) then, {fmt(r['val_now_dice'])} on "
              f"{r['val_now_cases']} now (HD95 {fmt(r['val_now_hd95_mm'], '.2f')} mm)")
    return 0


def cmd_use(a) -> int:
    from .versions import use
    with Store.open(a.dir) as store:
        print(f"active model: v{use(store, a.version)}")
    return 0


def cmd_verify(a) -> int:
    from .cases import verify
    with Store.open(a.dir) as store:
        problems = verify(store)
    for p in problems:
        print(p)
    if problems:
        raise ExtremeAugError(f"{len(problems)} problem(s) with the stored files")
    print("every scan and label file is present and matches its checksum")
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

    c = cmd("init", cmd_init, "create a project in a new or empty folder")
    c.add_argument("--plane", default="auto", choices=["auto", "axial", "sagittal", "coronal"])
    c.add_argument("--val-fraction", type=float, default=0.25, help="share of labeled cases kept for validation")
    c.add_argument("--label-values", help="mask labels that are foreground, e.g. 201,202 (default: all > 0)")
    c = cmd("add", cmd_add, "register a scan, with its manual label if given")
    c.add_argument("scan")
    c.add_argument("--label", help="a manual mask for it")
    c.add_argument("--id", help="case id (default: the file name)")
    c.add_argument("--split", default="auto", choices=["auto", "train", "validation"])
    c = cmd("accept", cmd_accept, "store a corrected mask for a case (earlier labels are kept)")
    c.add_argument("case")
    c.add_argument("--label", required=True)
    c.add_argument("--split", default="auto", choices=["auto", "train", "validation"])
    c.add_argument("--manual", action="store_true", help="a delineation from scratch rather than a correction")
    c = cmd("cases", cmd_cases, "list the cases (or one case with its label history)")
    c.add_argument("case", nargs="?")
    c.add_argument("--json", action="store_true")
    c = cmd("train", cmd_train, "train in a background worker on the labeled training cases")
    c.add_argument("--augment", type=int, default=50)
    c.add_argument("--epochs", type=int, default=100)
    c.add_argument("--time-budget", type=float, metavar="MINUTES")
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--width", type=int)
    c.add_argument("--lr", type=float, default=3e-3)
    c.add_argument("--loss", default="dice", choices=["dice", "dice+bce"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c.add_argument("--checkpoint-minutes", type=float, default=2.0)
    c.add_argument("--wait", action="store_true", help="follow the run with a progress bar")
    c.add_argument("--resume", action="store_true", help="continue the last cancelled, failed or dead run")
    c = cmd("status", cmd_status, "cases, versions and the current run (with a dead-worker check)")
    c.add_argument("--json", action="store_true")
    cmd("cancel", cmd_cancel, "stop the running training (it checkpoints; --resume continues)")
    c = cmd("segment", cmd_segment, "segment cases with the active (or a given) model version")
    c.add_argument("case", nargs="*")
    c.add_argument("--unlabeled", action="store_true", help="every case without a human label")
    c.add_argument("--model", type=int, metavar="VERSION")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c = cmd("suggest", cmd_suggest, "the case to correct next, and why")
    c.add_argument("--json", action="store_true")
    c = cmd("models", cmd_models, "model versions with validation scores")
    c.add_argument("--json", action="store_true")
    c.add_argument("--plot", metavar="PNG", help="draw validation Dice against version and training scans")
    c.add_argument("--no-rescore", action="store_true", help="do not score old versions on new validation cases")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c = cmd("use", cmd_use, "make a model version the active one (roll back)")
    c.add_argument("version", type=int)
    cmd("verify", cmd_verify, "check every stored file against its checksum")
