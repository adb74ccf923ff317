"""The panel's slot wrapper and table filler (Qt; needs the Slicer application)."""
from __future__ import annotations

import functools
import inspect
import logging
import traceback

import qt
import slicer

MODULE_NAME = "ExtremeAugSegment"


def action(method):
    """A button's slot: errors become a message box, the panel is refreshed either way. PythonQt passes a
    signal's arguments (e.g. `clicked`'s `checked`) to a slot that takes *args, so only as many as the
    method declares are passed on."""
    accepted = len(inspect.signature(method).parameters) - 1

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            with slicer.util.WaitCursor():   # the short GUI-thread parts (reading, storing a label)
                return method(self, *args[:accepted])
        except Exception as e:   # shown to the user; the panel stays usable
            from extremeaug.common.errors import ExtremeAugError
            from extremeaug.common.files import os_error_text
            if isinstance(e, (ExtremeAugError, ValueError)):
                slicer.util.errorDisplay(str(e), windowTitle=MODULE_NAME)
            elif isinstance(e, OSError):   # the disk or file system said no: its words, not a traceback
                slicer.util.errorDisplay(os_error_text(e), windowTitle=MODULE_NAME)
            else:
                logging.error(traceback.format_exc())
                slicer.util.errorDisplay(f"{type(e).__name__}: {e}", windowTitle=MODULE_NAME,
                                         detailedText=traceback.format_exc())
        finally:
            self.safeRefresh()
    return wrapper


def withoutWaitCursor(dialog, *args, **kwargs):
    """A dialog opened from inside a slot: the slot's wait cursor is taken down over it (a wait cursor says
    "do not click") and put back after."""
    depth = 0
    while qt.QApplication.overrideCursor() is not None:
        qt.QApplication.restoreOverrideCursor()
        depth += 1
    try:
        return dialog(*args, **kwargs)
    finally:
        for _ in range(depth):
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)


def confirmWithoutWaitCursor(question: str) -> bool:
    return withoutWaitCursor(slicer.util.confirmOkCancelDisplay, question, MODULE_NAME)


def fillTable(table, rows) -> None:
    table.setRowCount(len(rows))
    for r, values in enumerate(rows):
        for col, value in enumerate(values):
            table.setItem(r, col, qt.QTableWidgetItem(value))
