"""Follow the project's background training run without blocking: each `poll` reads the database row and
only the progress lines appended since the last poll, so a GUI timer can call it every second.

The training curve goes into a table node with a plot chart (loss and training Dice against step), which
Slicer's plot view draws live.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import vtk

from extremeaug.project.runs import ACTIVE, EventReader, latest_run_status, run_dir
from extremeaug.project.store import Store

TABLE_NAME = "ExtremeAugSegment training curve"
CHART_NAME = "ExtremeAugSegment training"
SERIES = (("loss", (0.85, 0.25, 0.2)), ("training Dice", (0.2, 0.45, 0.85)))


@dataclass
class TrainingState:
    run: Optional[str] = None
    status: str = "idle"          # idle, starting, running, finished, cancelled, failed, died
    phase: Optional[str] = None   # queued, preparing, training, scoring, done
    active: bool = False
    fraction: float = 0.0
    text: str = "no training run"
    message: Optional[str] = None
    version: Optional[int] = None
    curve: List[Tuple[int, float, float]] = field(default_factory=list)   # (step, loss, training Dice)


class TrainingMonitor:
    def __init__(self, store: Store, scene):
        self.store, self.scene = store, scene
        self.runId: Optional[str] = None
        self.reader: Optional[EventReader] = None
        self.curve: List[Tuple[int, float, float]] = []

    def poll(self) -> TrainingState:
        run = latest_run_status(self.store)
        if run is None:
            return TrainingState()
        if run["id"] != self.runId:
            self.runId, self.reader, self.curve = run["id"], EventReader(run_dir(self.store, run["id"]) /
                                                                         "progress.jsonl"), []
        for event in self.reader.read():
            if event["event"] == "start":   # a resumed run starts again at its checkpoint's step
                self.curve = [p for p in self.curve if p[0] <= event.get("resumed_at_step", 0)]
            elif event["event"] == "progress":
                self.curve.append((event["step"], event["loss"], event["dice"]))
        progress = run.get("progress") or {}
        total, step = progress.get("steps_total") or 0, progress.get("step") or 0
        return TrainingState(run=run["id"], status=run["status"], phase=run["phase"],
                             active=run["status"] in ACTIVE, fraction=min(1.0, step / total) if total else 0.0,
                             text=_describe(run, progress), message=run["message"], version=run["version"],
                             curve=list(self.curve))

    def updatePlot(self):
        """The table + chart nodes of the current curve (created once, then updated); returns the chart."""
        table = self._node("vtkMRMLTableNode", TABLE_NAME)
        columns = [vtk.vtkFloatArray() for _ in range(3)]
        for array, name in zip(columns, ("step",) + tuple(s[0] for s in SERIES)):
            array.SetName(name)
            array.SetNumberOfValues(len(self.curve))
        for row, point in enumerate(self.curve):
            for array, value in zip(columns, point):
                array.SetValue(row, value)
        vtkTable = table.GetTable()
        while vtkTable.GetNumberOfColumns():
            vtkTable.RemoveColumn(0)
        for array in columns:
            vtkTable.AddColumn(array)
        table.Modified()
        chart = self._node("vtkMRMLPlotChartNode", CHART_NAME)
        if chart.GetNumberOfPlotSeriesNodes() == 0:
            chart.SetTitle("Training (background run)")
            chart.SetXAxisTitle("step")
            chart.SetYAxisTitle("loss / training Dice")
            for name, color in SERIES:
                series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
                series.SetAndObserveTableNodeID(table.GetID())
                series.SetXColumnName("step")
                series.SetYColumnName(name)
                series.SetPlotType(series.PlotTypeScatter)
                series.SetMarkerStyle(series.MarkerStyleNone)
                series.SetColor(*color)
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart

    def _node(self, className: str, name: str):
        return self.scene.GetFirstNode(name, className) or self.scene.AddNewNodeByClass(className, name)


def _describe(run: dict, progress: dict) -> str:
    status = run["status"]
    if status == "finished":
        return f"finished: model version {run['version']} is active"
    if status in ("failed", "died", "cancelled"):
        return f"{status}: {run['message'] or ''}".rstrip(": ")
    if not progress:
        return f"{run['phase'] or status}..."
    if run["phase"] == "scoring":
        return "training done; scoring on the validation cases..."
    eta = progress.get("eta_s")
    eta = f" · ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else ""
    return (f"epoch {progress.get('epoch')} · step {progress.get('step')}/{progress.get('steps_total')} · "
            f"loss {progress.get('loss', 0):.3f} · Dice {progress.get('dice', 0):.3f}{eta}")
