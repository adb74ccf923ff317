"""The page: trame-slicer's slice/3D views and segment editor on the left, the station's panel on the right.

Widgets only; what a button does is `Station`'s. Every control a test or a clinician looks for carries an
`id` (ea-...), so browser tests find it as a person does, by what it is, not by where it is drawn.
"""
from __future__ import annotations

from trame.widgets import html
from trame.widgets.vuetify3 import (VAlert, VBtn, VCard, VCardText, VCardTitle, VCheckbox, VCol, VDivider,
                                    VNavigationDrawer, VProgressLinear, VRow, VSelect, VSparkline, VSwitch, VTable,
                                    VTextField)
from trame_slicer.app.ui import SegmentEditorUI, SegmentEditorUndoRedoUI, ViewerLayout

from .station import Station

CASE_COLUMNS = (("Case", "id"), ("State", "state"), ("Split", "split"), ("Model", "model"),
                ("Uncertainty", "uncertainty"), ("Correction", "effort"))
VERSION_COLUMNS = (("Version", "version"), ("Scans", "scans"), ("Val. Dice", "dice"), ("HD95 mm", "hd95"),
                   ("Per structure", "structures"), ("Correction", "effort"), ("Active", "active"))


def _table(rows: str, columns, row_id: str, click=None, extra=None) -> None:
    with VTable(density="compact", hover=True, style="font-size: 12px;"):
        with html.Thead(), html.Tr():
            for title, _ in columns:
                html.Th(title)
            if extra:
                html.Th("")
        with html.Tbody():
            with html.Tr(v_for=f"row in {rows}", key=f"row.{columns[0][1]}", id=(f"'{row_id}-' + row.{columns[0][1]}",),
                         click=click, style="cursor: pointer;",
                         classes=("{'bg-blue-darken-3': row.id && row.id === ea_case}",)):
                for _, key in columns:
                    html.Td(f"{{{{ row.{key} }}}}")
                if extra:
                    with html.Td():
                        extra()


def build(server, station: Station, layout_manager, title: str):
    """The page -> (its layout, the segment editor's widgets, which trame-slicer's editor logic drives)."""
    with ViewerLayout(server, title="ExtremeAugSegment", is_drawer_visible=True) as layout:
        layout.title.set_text(f"ExtremeAugSegment · {title}")
        with layout.drawer:
            editor = SegmentEditorUI(id="ea-editor")
        with layout.undo_redo:
            SegmentEditorUndoRedoUI(editor_ui=editor)
        with layout.content:
            layout_manager.initialize_layout_grid(layout)
        with layout, VNavigationDrawer(permanent=True, location="right", width=520, id="ea-panel"):
            _panel(station)
    return layout, editor


def _panel(station: Station) -> None:
    with VCard(variant="flat"):
        VAlert(v_if=("ea_error",), text=("ea_error",), type="error", density="compact", id="ea-error",
               closable=True, click_close="ea_error = ''")
        VAlert(v_if=("ea_message",), text=("ea_message",), type="info", density="compact", id="ea-message",
               variant="tonal")
        VCardTitle("Cases", classes="text-subtitle-1")
        with VCardText():
            _table("ea_cases", CASE_COLUMNS, "ea-case", click=(station.select, "[row.id]"))
            with VRow(dense=True, classes="mt-1"):
                VBtn("Suggest next case", id="ea-suggest", click=station.suggest, size="small", classes="ma-1")
                VBtn("Segment", id="ea-segment", click=station.segment, size="small", classes="ma-1",
                     disabled=("!ea_case || ea_job_running",))
                VBtn("Segment all unlabeled", id="ea-segment-all", click=station.segmentUnlabeled, size="small",
                     classes="ma-1", disabled=("ea_job_running",))
            with VRow(dense=True):
                VBtn("Accept correction", id="ea-accept", click=(station.accept, "[false]"), size="small",
                     color="primary", classes="ma-1", disabled=("!ea_case",))
                VBtn("Accept and next", id="ea-accept-next", click=(station.accept, "[true]"), size="small",
                     color="primary", variant="tonal", classes="ma-1", disabled=("!ea_case",))
                VSwitch(v_model=("ea_overlay",), label="Uncertainty overlay", density="compact", hide_details=True,
                        disabled=("!ea_has_overlay",), id="ea-overlay", classes="ml-2")
            VSelect(v_model=("ea_layout",), items=("ea_layouts",), label="Views", density="compact",
                    id="ea-layout", hide_details=True, classes="mt-2", style="max-width: 220px;")
            html.Div("{{ ea_job_text }}", id="ea-job", classes="text-caption")
            with html.Div(v_if=("ea_case",), classes="text-caption mt-1", id="ea-history"):
                html.Div("History of {{ ea_case }} (newest first):")
                html.Div("{{ h.text }}", v_for="h in ea_history", key="h.id")
                html.A("label (NIfTI)", id="ea-download-nifti", href=("'download/' + ea_case + '/label.nii.gz'",),
                       classes="mr-3")
                html.A("label (.seg.nrrd)", id="ea-download-seg", href=("'download/' + ea_case + '/label.seg.nrrd'",))
        VDivider()
        VCardTitle("Add a scan", classes="text-subtitle-1")
        with VCardText(), html.Form(action="upload", method="post", enctype="multipart/form-data", id="ea-upload"):
            html.Div("Scan (NIfTI, NRRD, MHA, or a DICOM series as .zip):", classes="text-caption")
            html.Input(type="file", name="scan", id="ea-upload-scan")
            html.Div("Its label (optional):", classes="text-caption")
            html.Input(type="file", name="label", id="ea-upload-label")
            VBtn("Upload", type="submit", size="small", id="ea-upload-submit", classes="mt-1")
        VDivider()
        VCardTitle("Train", classes="text-subtitle-1")
        with VCardText():
            with VRow(dense=True):
                with VCol():
                    VTextField(v_model=("ea_augment",), label="Augmentation (x)", type="number", density="compact",
                               id="ea-augment", hide_details=True)
                with VCol():
                    VTextField(v_model=("ea_epochs",), label="Epochs", type="number", density="compact",
                               id="ea-epochs", hide_details=True)
                with VCol():
                    VTextField(v_model=("ea_minutes",), label="Time budget (min, 0: none)", type="number",
                               density="compact", id="ea-minutes", hide_details=True)
                with VCol():
                    VSelect(v_model=("ea_device",), items=("ea_devices",), label="Device", density="compact",
                            id="ea-device", hide_details=True)
            VCheckbox(v_model=("ea_unlabeled",), label="Also learn from unlabeled scans (pseudo-labels, never stored)",
                      density="compact", id="ea-unlabeled", hide_details=True)
            with VRow(dense=True, classes="mt-1"):
                VBtn("Train from labeled scans", id="ea-train", click=station.train, size="small", color="primary",
                     classes="ma-1", disabled=("ea_training",))
                VBtn("Cancel", id="ea-cancel", click=station.cancel, size="small", classes="ma-1",
                     disabled=("!ea_training",))
                VBtn("Resume", id="ea-resume", click=station.resume, size="small", classes="ma-1",
                     disabled=("ea_training || !ea_resumable",))
            VProgressLinear(model_value=("ea_train_fraction",), height=6, color="primary", classes="mt-2")
            html.Div("{{ ea_train_text }}", id="ea-train-text", classes="text-caption")
            with html.Div(v_if=("ea_loss.length > 1",), id="ea-curve"):
                html.Div("loss", classes="text-caption")
                VSparkline(model_value=("ea_loss",), color="red", height=40, line_width=2, auto_draw=False)
                html.Div("training Dice", classes="text-caption")
                VSparkline(model_value=("ea_dice",), color="blue", height=40, line_width=2, auto_draw=False)
        VDivider()
        VCardTitle("Model versions", classes="text-subtitle-1")
        with VCardText(id="ea-versions"):
            _table("ea_versions", VERSION_COLUMNS, "ea-version",
                   extra=lambda: VBtn("Use", size="x-small", id=("'ea-use-' + row.version",),
                                      click=(station.useVersion, "[row.version]"), disabled=("row.active",)))
