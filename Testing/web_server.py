"""A real `extremeaug web` process on a phantom project, for the web station's tests and its benchmark."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from extremeaug.data.phantom import write_phantoms
from extremeaug.project import Project, RunSpec, TrainConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = RunSpec(TrainConfig(augment=3, epochs=1, width=4), device="cpu")


def phantom_project(folder: Path, trained: bool = False) -> Path:
    """Three phantoms (discs, vertebral bodies, canal), the first labeled; with `trained`, a tiny model v1."""
    pairs = write_phantoms(folder / "phantoms", 3, structures=True)
    root = folder / "project"
    with Project.create(root) as project:
        project.add(str(pairs[0][0]), str(pairs[0][1]), "phantom_0")
        for i in (1, 2):
            project.add(str(pairs[i][0]), case_id=f"phantom_{i}")
        if trained:
            project.train(TINY)
            deadline = time.monotonic() + 600
            while project.run().active and time.monotonic() < deadline:
                time.sleep(0.5)
            assert project.status().active_version == 1, project.run()
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def web_server(root: Path, *args: str, host: str = "127.0.0.1", log: Path = None):
    """`extremeaug web ROOT` in its own process; yields its base URL once it answers."""
    port = free_port()
    log = log or root.parent / f"web-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "extremeaug", "web", str(root), "--host", host,
                                    "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited {process.returncode}: {log.read_text(errors='replace')}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except urllib.error.HTTPError:   # 401 without a token: it answers
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the server did not answer: {log.read_text(errors='replace')}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def choose_views(page, layout: str) -> None:
    """Pick the page's view layout in its Views menu, as a person does."""
    page.locator(".v-select:has(#ea-layout) .v-field").click()
    page.locator(".v-overlay .v-list-item", has_text=layout).first.click()
    page.wait_for_timeout(1000)
