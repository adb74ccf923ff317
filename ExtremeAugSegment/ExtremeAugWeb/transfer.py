"""Scans in and labels out over HTTP, through the same checks as the command line.

An upload is streamed to a file inside the project folder (never the client's name: a fixed name with an
allowed suffix), up to a size limit, and handed to `Project.add` in a worker thread with its own database
connection: reading, checking and hashing a scan takes seconds and must not hold the page's event loop. A
DICOM series comes as a .zip; each member is checked before anything is extracted (no absolute path, no
'..', no link, a total size limit), so nothing lands outside the upload's own folder.
A download is a case's current label, written by the project as NIfTI or Slicer .seg.nrrd.
"""
from __future__ import annotations

import asyncio
import secrets
import shutil
import sqlite3
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from aiohttp import web

from extremeaug.common.errors import ExtremeAugError
from extremeaug.common.files import database_error_text, write_failure
from extremeaug.project import Project

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".zip")   # .seg.nrrd ends in .nrrd
DOWNLOADS = {"label.nii.gz": ".nii.gz", "label.seg.nrrd": ".seg.nrrd"}
CHUNK = 1 << 20


def suffix_of(name: str) -> str:
    lower = name.lower()
    for suffix in (".seg.nrrd",) + SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise ExtremeAugError(f"{name!r}: upload a NIfTI (.nii, .nii.gz), NRRD, MHA file or a DICOM series as .zip")


def safe_extract(archive: Path, folder: Path, limit: int) -> Path:
    """A zip's members into `folder`, refused whole if any member would land outside it or the total is
    over `limit` bytes; returns the folder holding the DICOM files."""
    with zipfile.ZipFile(archive) as z:
        members = z.infolist()
        total = 0
        for m in members:
            path = PurePosixPath(m.filename.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
                raise ExtremeAugError(f"the zip's member {m.filename!r} points outside the archive; nothing added")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise ExtremeAugError(f"the zip's member {m.filename!r} is a link; nothing added")
            total += m.file_size
        if total > limit:
            raise ExtremeAugError(f"the zip unpacks to {total / 2**20:.0f} MiB, over the {limit / 2**20:.0f} MiB "
                                  "limit; nothing added")
        z.extractall(folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        raise ExtremeAugError("the zip holds no file; nothing added")
    return files[0].parent


class Transfers:
    """The /upload and /download routes of one project. `who(request)` is the request's user;
    `changed()` refreshes the page's state after an upload (called on the event loop)."""

    def __init__(self, root: Path, limit_bytes: int, who: Callable[[web.Request], str],
                 changed: Callable[[str], None]):
        self.root, self.limit, self.who, self.changed = Path(root), limit_bytes, who, changed

    def routes(self):
        return [web.post("/upload", self.upload), web.get("/download/{case}/{what}", self.download)]

    async def upload(self, request: web.Request) -> web.Response:
        folder = self.root / "jobs" / f".upload-{secrets.token_hex(6)}"
        try:
            folder.mkdir(parents=True)
            files = await self._receive(request, folder)
            if "scan" not in files:
                raise ExtremeAugError("choose a scan file to upload")
            case = await asyncio.get_running_loop().run_in_executor(None, self._add, files, folder,
                                                                    self.who(request))
        except ExtremeAugError as error:
            return web.Response(status=400, text=f"{error}\n")
        except OSError as error:   # the upload could not be stored (a full disk): said, nothing added
            return web.Response(status=507, text=f"{write_failure(folder, error)}\n")
        except sqlite3.DatabaseError as error:
            return web.Response(status=503, text=f"{database_error_text(error, self.root)}\n")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.changed(f"added case {case.id}: {case.state.value}" + (" (it was in the project already)"
                                                                    if case.existing else ""))
        if "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther("./")
        return web.json_response({"case": case.id, "state": case.state.value, "existing": case.existing})

    async def _receive(self, request: web.Request, folder: Path) -> dict:
        """The form's files on disk: {field: (path, the client's file name)}, at most `limit` bytes in all."""
        if not request.content_type.startswith("multipart/"):
            raise ExtremeAugError("send the scan as multipart/form-data (the page's Upload form)")
        files, total = {}, 0
        reader = await request.multipart()
        async for part in reader:
            if part.name not in ("scan", "label") or not part.filename:
                continue
            path = folder / f"{part.name}{suffix_of(part.filename)}"
            with path.open("wb") as out:
                while chunk := await part.read_chunk(CHUNK):
                    total += len(chunk)
                    if total > self.limit:
                        raise ExtremeAugError(f"the upload is over the {self.limit / 2**20:.0f} MiB limit "
                                              "(--max-upload-mb); nothing added")
                    out.write(chunk)
            files[part.name] = (path, part.filename)
        return files

    def _add(self, files: dict, folder: Path, user: str):
        def source(field: str) -> Path:
            path, _ = files[field]
            if path.name.endswith(".zip"):
                return safe_extract(path, folder / field, self.limit)
            return path

        name = Path(files["scan"][1].replace("\\", "/")).name
        with Project.open(self.root) as project:
            return project.add(source("scan"), source("label") if "label" in files else None,
                               project.new_case_id(name[: -len(suffix_of(name))] or "scan"),
                               source=f"uploaded by {user}: {name}", by=user)

    async def download(self, request: web.Request) -> web.StreamResponse:
        what = request.match_info["what"]
        if what not in DOWNLOADS:
            raise web.HTTPNotFound(text=f"download label.nii.gz or label.seg.nrrd, not {what!r}\n")
        out = self.root / "jobs" / f".download-{secrets.token_hex(6)}{DOWNLOADS[what]}"
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._export, request.match_info["case"], out)
            body = out.read_bytes()
        except ExtremeAugError as error:
            raise web.HTTPNotFound(text=f"{error}\n")
        except OSError as error:
            raise web.HTTPInsufficientStorage(text=f"{write_failure(out, error)}\n")
        finally:
            out.unlink(missing_ok=True)
        return web.Response(body=body, content_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{request.match_info["case"]}{DOWNLOADS[what]}"'})

    def _export(self, case_id: str, out: Path) -> Optional[Path]:
        with Project.open(self.root) as project:
            return project.export_label(case_id, out)
