"""The web station's doors, on a real `extremeaug web` process off loopback: tokens, the cookie, foreign
pages, uploads through the command line's guards, downloads, and paths that try to leave the project."""
from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import module_lib_importable, one_line_error, run_cli

pytest.importorskip("trame_slicer", reason="needs the web extra (pip install -e '.[web]')")
module_lib_importable()
from web_server import phantom_project, web_server  # noqa: E402

from ExtremeAugWeb.access import Users  # noqa: E402
from extremeaug.project import Project  # noqa: E402


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-access")
    root = phantom_project(folder)
    users = Users(folder / "users.json")
    tokens = {"alice": users.add("alice"), "bob": users.add("bob")}
    with web_server(root, "--users", str(users.path), "--max-upload-mb", "8", host="0.0.0.0") as url:
        yield {"url": url, "root": root, "tokens": tokens, "folder": folder}


def request(url: str, path: str, method="GET", body=None, headers=None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def cookie(station, user="alice") -> dict:
    return {"Cookie": f"extremeaug_token={station['tokens'][user]}"}


def multipart(files: dict) -> tuple:
    boundary = uuid.uuid4().hex
    body = b""
    for field, (name, data) in files.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def nifti_bytes(image: sitk.Image, tmp: Path) -> bytes:
    path = tmp / f"{uuid.uuid4().hex}.nii.gz"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def outside_files(station) -> set:
    """Every file beside the project folder (where a traversal would land)."""
    return {p for p in station["folder"].rglob("*") if p.is_file() and station["root"] not in p.parents}


def test_a_request_without_a_valid_token_is_refused_off_loopback(station):
    for path, headers in (("/", {}), ("/?token=wrong", {}), ("/", {"Cookie": "extremeaug_token=wrong"}),
                          ("/download/phantom_0/label.nii.gz", {}), ("/ws", {})):
        response, body = request(station["url"], path, headers=headers)
        assert response.status == 401, (path, response.status)
        assert b"token" in body


def test_the_first_visit_moves_the_token_into_an_http_only_cookie(station):
    response, _ = request(station["url"], f"/?token={station['tokens']['alice']}")
    assert response.status == 303 and response.getheader("Location") == "/"
    set_cookie = response.getheader("Set-Cookie")
    assert f"extremeaug_token={station['tokens']['alice']}" in set_cookie
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    response, body = request(station["url"], "/index.html", headers=cookie(station))
    assert response.status == 200 and b"<html" in body.lower()


def test_a_page_of_another_site_may_not_use_the_station(station):
    response, _ = request(station["url"], "/", headers={**cookie(station), "Origin": "https://evil.example"})
    assert response.status == 403


def test_tokens_are_stored_as_salted_hashes_and_a_new_token_voids_the_old(tmp_path):
    users = Users(tmp_path / "users.json")
    first = users.add("carol")
    text = (tmp_path / "users.json").read_text()
    assert first not in text and "salt" in text
    assert Users(tmp_path / "users.json").who(first) == "carol"
    second = users.add("carol")
    again = Users(tmp_path / "users.json")
    assert again.who(second) == "carol" and again.who(first) is None and again.who("") is None


def test_another_host_without_a_users_file_is_refused(tmp_path):
    one_line_error(run_cli("web", tmp_path, "--host", "0.0.0.0", timeout=120), "--users")


def test_web_user_prints_the_token_once_and_it_opens_the_station(tmp_path):
    result = run_cli("web-user", tmp_path / "u.json", "dana")
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[1]
    assert Users(tmp_path / "u.json").who(token) == "dana"


def test_an_upload_is_a_case_added_by_its_user_through_the_command_line_checks(station, tmp_path):
    scan = sitk.ReadImage(str(station["folder"] / "phantoms" / "phantom_2_image.nii.gz"))
    mask = sitk.ReadImage(str(station["folder"] / "phantoms" / "phantom_2_mask.nii.gz"))
    shifted = sitk.Image(scan)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    body, headers = multipart({"scan": ("../../up_scan.nii.gz", nifti_bytes(shifted, tmp_path)),
                               "label": ("up_mask.nii.gz", nifti_bytes(_on(mask, shifted), tmp_path))})
    response, data = request(station["url"], "/upload", "POST", body, {**headers, **cookie(station, "bob")})
    assert response.status == 200, data
    reply = json.loads(data)
    assert reply["case"] == "up_scan" and reply["state"] == "manual"
    with Project.open(station["root"]) as project:
        case = project.case("up_scan")
        assert case.history[-1].accepted_by == "bob" and "uploaded by bob" in case.source
        assert not list((station["root"] / "jobs").glob(".upload-*")), "the upload's files were left behind"
    assert not (station["folder"] / "up_scan.nii.gz").exists()


def _on(mask: sitk.Image, scan: sitk.Image) -> sitk.Image:
    out = sitk.Image(mask)
    out.CopyInformation(scan)
    return out


def test_bad_uploads_are_refused_with_nothing_added(station, tmp_path):
    with Project.open(station["root"]) as project:
        before = [c.id for c in project.cases()]
    nan = sitk.GetImageFromArray(np.full((8, 16, 16), np.nan, np.float32))
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../evil.dcm", b"x" * 100)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.dcm", b"\0" * (20 << 20))   # 20 MiB unpacked, over the 8 MiB limit
    cases = [({"scan": ("nan.nii.gz", nifti_bytes(nan, tmp_path))}, "NaN"),
             ({"scan": ("series.zip", evil.getvalue())}, "outside the archive"),
             ({"scan": ("bomb.zip", bomb.getvalue())}, "limit"),
             ({"scan": ("big.nii.gz", b"\0" * (9 << 20))}, "limit"),
             ({"scan": ("notes.txt", b"hello")}, "NIfTI"),
             ({"label": ("m.nii.gz", b"")}, "choose a scan")]
    for files, needle in cases:
        body, headers = multipart(files)
        response, data = request(station["url"], "/upload", "POST", body, {**headers, **cookie(station)})
        assert response.status == 400 and needle.encode() in data, (needle, response.status, data)
    with Project.open(station["root"]) as project:
        assert [c.id for c in project.cases()] == before
    assert not any(p.name == "evil.dcm" for p in station["folder"].rglob("*"))
    assert not list((station["root"] / "jobs").glob(".upload-*"))


def test_a_label_downloads_as_nifti_and_as_a_slicer_segmentation(station, tmp_path):
    with Project.open(station["root"]) as project:
        stored = sitk.GetArrayFromImage(sitk.ReadImage(str(project.path(project.case("phantom_0").label))))
        names = [s.name for s in project.structures()]
    for what in ("label.nii.gz", "label.seg.nrrd"):
        response, data = request(station["url"], f"/download/phantom_0/{what}", headers=cookie(station))
        assert response.status == 200, data
        path = tmp_path / f"phantom_0.{what}"
        path.write_bytes(data)
        image = sitk.ReadImage(str(path))
        assert np.array_equal(sitk.GetArrayFromImage(image), stored)
    assert [image.GetMetaData(f"Segment{i}_Name") for i in range(len(names))] == names


def test_ids_and_paths_that_try_to_leave_the_project_are_refused(station):
    before = outside_files(station)
    for path in ("/download/..%2F..%2Fusers.json/label.nii.gz", "/download/phantom_0/..%2F..%2Fproject.db",
                 "/download/%2E%2E/label.nii.gz", "/download/phantom_0/label.seg.nrrd%00.txt",
                 "/download/nonexistent/label.nii.gz", "/download/phantom_1/label.nii.gz",
                 "/../users.json", "/%2e%2e/%2e%2e/users.json"):
        response, data = request(station["url"], path, headers=cookie(station))
        assert response.status in (400, 403, 404), (path, response.status)
        assert b'"users"' not in data and b"SQLite" not in data
    assert outside_files(station) == before


def test_the_server_refuses_to_start_on_a_folder_that_is_not_a_project(tmp_path):
    result = subprocess.run([sys.executable, "-m", "extremeaug", "web", str(tmp_path / "nothing")],
                            capture_output=True, text=True, timeout=120)
    one_line_error(result, "nothing")


def test_an_upload_onto_a_full_disk_is_one_clear_message_and_adds_nothing(tmp_path, mount):
    disk = mount.tiny_disk(64 * 1024)
    root = phantom_project(disk)
    scan = (disk / "phantoms" / "phantom_2_image.nii.gz").read_bytes()
    with web_server(root, log=tmp_path / "web.log") as url:
        filler = mount.fill(disk)
        body, headers = multipart({"scan": ("more.nii.gz", scan)})
        response, data = request(url, "/upload", "POST", body, headers)
        filler.unlink()
        assert response.status == 507 and b"the disk is full" in data and b"nothing was written" in data, data
        assert data.decode().count("\n") == 1 and b"Traceback" not in data
    with Project.open(root) as project:
        assert [c.id for c in project.cases()] == ["phantom_0", "phantom_1", "phantom_2"]
    assert not list((root / "jobs").glob(".upload-*"))
