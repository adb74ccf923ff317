"""`extremeaug web`: one project folder served as a labeling station in the browser.

trame-slicer gives the real MRML scene, the slice and 3D views (rendered off-screen, streamed as images)
and Slicer's segment editor effects; the module's Logic runs on that scene unchanged. This file wires them
to a trame server, puts the access check in front of every request and adds the transfer routes.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from aiohttp import web
from trame.app import get_server
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import SegmentEditorLogic
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from extremeaug.project import Project, login_name

from ExtremeAugSegmentLib import Results
from ExtremeAugSegmentLib.Logic import ExtremeAugSegmentLogic

from . import page
from .access import COOKIE, Access, Users
from .station import Station
from .transfer import Transfers

MAX_UPLOAD_MB = 2048
log = logging.getLogger(__name__)


def layouts() -> dict:
    sagittal, axial, coronal = (ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.axial_view(),
                                ViewLayoutDefinition.coronal_view())
    return {"sagittal": Layout(LayoutDirection.Vertical, [sagittal]),
            "slices": Layout(LayoutDirection.Horizontal,
                             [sagittal, Layout(LayoutDirection.Vertical, [axial, coronal])]),
            "slices and 3D": Layout(LayoutDirection.Horizontal, [
                Layout(LayoutDirection.Vertical, [sagittal, axial]),
                Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.threed_view(), coronal])])}


class WebStation:
    """The server, the scene, the station and the access check of one project folder."""

    def __init__(self, project: str | Path, host: str = "127.0.0.1", users: Optional[str | Path] = None,
                 max_upload_mb: Optional[float] = None, name: str = "extremeaug"):
        self.access = Access(host, Users(users) if users else None, login_name() or "local")
        self.root = Path(project).resolve()
        Project.open(self.root).close()   # not a project: said before the scene and its views are built
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):   # a server: no X, render through EGL
            os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        self.server = get_server(name, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        # trame would read its own options from our command line (--host, --port...): it gets none
        self.server.cli.parse_known_args = functools.partial(self.server.cli.parse_known_args, [])
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        # the views first: an effect's per-view pipeline made while its view is being created gets no view
        # (trame-slicer 2.0.0 registers a view after creating it), and that effect then fails when chosen
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict(layouts())
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer)
        self.logic = ExtremeAugSegmentLogic(self.slicer.scene)
        self.logic.openProject(str(self.root))
        self._layers = Results.SliceLayers(self.slicer.scene)
        self._clients = {}   # websocket client id -> user
        self._wslink = None
        self.station = Station(self.logic, self.server.state, self.user, self.show)
        self.ui, editor_ui = page.build(self.server, self.station, self.layout_manager, self.root.name)
        self.editor_logic.set_ui(editor_ui)
        self.layout_manager.set_layout("slices")
        self.server.state.ea_layouts, self.server.state.ea_layout = list(layouts()), "slices"
        self.server.state.change("ea_layout")(lambda ea_layout, **_: self.layout_manager.set_layout(ea_layout))
        self.server.state.trame__title = f"ExtremeAugSegment · {self.root.name}"
        self.transfers = Transfers(self.root, int((max_upload_mb or MAX_UPLOAD_MB) * 2**20), lambda r: r["ea_user"],
                                   self._uploaded)
        self.server.controller.on_server_bind.add(self._bind)
        self.server.controller.on_server_ready.add(lambda **_: self.station.start())

    # -- the scene ----------------------------------------------------------------------------------
    def show(self, volume, segmentation, overlay) -> None:
        """A volume in every slice view (the overlay over it when given) and its result in the editor."""
        changed = self._layers.show(volume, overlay)
        if overlay is None:
            self._layers.hideOverlay()
        editor = self.slicer.segmentation_editor
        editor.deactivate_effect()
        editor.set_active_segmentation(segmentation, volume)
        if changed:
            self.slicer.display_manager.reset_views()

    def user(self) -> str:
        """The user of the request being handled (the websocket that sent the click)."""
        client = getattr(self._wslink, "last_active_client_id", None)
        return self._clients.get(client, self.access.local_user if self.access.users is None else "unknown")

    def _uploaded(self, message: str) -> None:
        with self.server.state:
            self.station.refresh()
            self.station.say(message)

    # -- HTTP -------------------------------------------------------------------------------------
    def _bind(self, wslink_server) -> None:
        self._wslink = wslink_server
        wslink_server.app.middlewares.append(self._guard)
        wslink_server.app.add_routes(self.transfers.routes())
        for handler in getattr(wslink_server, "_ws_handlers", []):   # who each websocket belongs to
            handler.onConnect = self._remembering(handler.onConnect)

    def _remembering(self, on_connect):
        async def onConnect(request, client_id):
            self._clients[client_id] = request["ea_user"]
            await on_connect(request, client_id)
        return onConnect

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        origin = request.headers.get("Origin")
        if origin and origin.split("://", 1)[-1] != request.host:
            return web.Response(status=403, text="a page of another site may not use this station\n")
        token = request.query.get("token")
        user = self.access.user(request.cookies.get(COOKIE), token)
        if user is None:
            return web.Response(status=401, text="this station needs a valid token: open the address you were "
                                                 "given (it ends in ?token=...)\n")
        request["ea_user"] = user
        if token:   # first visit: the token moves into an HttpOnly cookie and out of the address bar
            response = web.HTTPSeeOther(str(request.rel_url.with_query({})))
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.secure)
            return response
        return await handler(request)

    def serve(self, port: int = 8080, host: str = "127.0.0.1", **kwargs) -> None:
        self.server.start(host=host, port=port, open_browser=False, timeout=0, show_connection_info=True,
                          **kwargs)
