"""What a front end polls: the project summary and the current run, from the database and the run's
small files only (no image or model is opened, so it stays fast on large projects)."""
from __future__ import annotations

from .runs import latest_run_status
from .store import Store

STATE_SQL = """
SELECT COALESCE(
    (SELECT kind FROM labels WHERE case_id = c.id AND kind IN ('manual', 'corrected') ORDER BY id DESC LIMIT 1),
    CASE WHEN EXISTS (SELECT 1 FROM labels WHERE case_id = c.id AND kind = 'auto') THEN 'auto' ELSE 'unlabeled' END
) AS state, COUNT(*) FROM cases c GROUP BY state
"""


def project_status(store: Store) -> dict:
    run = latest_run_status(store)
    states = {s: 0 for s in ("unlabeled", "auto", "manual", "corrected")}
    states.update(dict(store.conn.execute(STATE_SQL).fetchall()))
    splits = dict(store.conn.execute("SELECT split, COUNT(*) FROM cases WHERE split IS NOT NULL GROUP BY split"))
    return {"project": str(store.root), "cases": sum(states.values()), "states": states,
            "splits": {"train": splits.get("train", 0), "validation": splits.get("validation", 0)},
            "versions": store.conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0],
            "active_version": store.setting("active_version"),
            "settings": {k: store.setting(k) for k in ("plane", "val_fraction", "label_values")},
            "run": run}
