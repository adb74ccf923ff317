"""Follow the project's background training run without blocking: each `poll` reads the database row and
only the progress lines appended since the last poll, so a GUI timer can call it every second.

The training curve goes into a table node with a plot chart (loss and training Dice against step), which
Slicer's plot view draws live.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

import vtk

from extremeaug.common.errors import ProjectBusy
from extremeaug.common.events import EventReader
from extremeaug.project import Project, RunState

from .Tables import runText

TABLE_NAME = "ExtremeAugSegment training curve"
CHART_NAME = "ExtremeAugSegment training"
SERIES = (("loss", (0.85, 0.25, 0.2)), ("training Dice", (0.2, 0.45, 0.85)))


@dataclass
class TrainingState:
    """The newest run (None before the first) and its training curve: (step, loss, training Dice)."""
    run: Optional[RunState] = None
    curve: List[Tuple[int, float, float]] = field(default_factory=list)
    ended: bool = False     # True at exactly one poll: the first after the watched run stopped being active
    skipped: bool = False   # the database was busy: this is the previous state, poll again at the next tick

    @property
    def status(self) -> str:
        return self.run.status.value if self.run else "idle"

    @property
    def active(self) -> bool:
        return bool(self.run and self.run.active)

    @property
    def fraction(self) -> float:
        return self.run.fraction if self.run else 0.0

    @property
    def text(self) -> str:
        return runText(self.run)

    @property
    def message(self) -> Optional[str]:
        return self.run.message if self.run else None

    @property
    def version(self) -> Optional[int]:
        return self.run.version if self.run else None


class TrainingMonitor:
    def __init__(self, project: Project, scene):
        self.project, self.scene = project, scene
        self.runId: Optional[str] = None
        self.reader: Optional[EventReader] = None
        self.curve: List[Tuple[int, float, float]] = []
        self._watching: Optional[str] = None   # the run seen active at the last poll
        self._last = TrainingState()

    def poll(self) -> TrainingState:
        """The run's state now. `ended` is set once per run, at the first poll that sees it stop, so a
        notification shown from it (even a modal dialog whose event loop lets the timer fire again) is
        shown once."""
        try:
            run = self.project.run()
        except ProjectBusy:
            return replace(self._last, ended=False, skipped=True)
        self._last = self._state(run)
        return self._last

    def _state(self, run: Optional[RunState]) -> TrainingState:
        if run is None:
            return TrainingState()
        if run.id != self.runId:
            self.runId, self.reader, self.curve = run.id, self.project.events(run.id), []
        for event in self.reader.read():
            if event["event"] == "start":   # a resumed run starts again at its checkpoint's step
                self.curve = [p for p in self.curve if p[0] <= event.get("resumed_at_step", 0)]
            elif event["event"] == "progress":
                self.curve.append((event["step"], event["loss"], event["dice"]))
        ended = self._watching == run.id and not run.active
        self._watching = run.id if run.active else None
        return TrainingState(run, list(self.curve), ended)

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
