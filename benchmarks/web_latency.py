"""The web station's response times, in a real browser (Debian's chromium) on a real `extremeaug web`:
from a paint click to the first frame that shows it, from *Segment* to the result shown, and the server's
memory (resident set) with the project open and after segmenting.

    python benchmarks/web_latency.py                                   # phantoms (no data needed)
    python benchmarks/web_latency.py --train-min 1.5 \
        --scans ../shared/data/ivd-mr-t2-lumbar/case11 ../shared/data/ivd-mr-t2-lumbar/case20

With --scans A B: A (A_image.nii.gz + A_mask.nii.gz) trains a model of the default width for --train-min
minutes, B (a 67-slice lumbar MRI in the shared set) is segmented from the page.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from web_server import CHROMIUM, choose_views, phantom_project, web_server  # noqa: E402

from extremeaug.project import Project, RunSpec, TrainConfig  # noqa: E402


def rss_mib(port: int) -> float:
    """Resident memory of the `extremeaug web` process serving the port (Linux)."""
    pid = next(d.name for d in Path("/proc").iterdir() if d.name.isdigit() and f"\0{port}\0".encode()
               in (d / "cmdline").read_bytes() and b"web" in (d / "cmdline").read_bytes())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def real_project(folder: Path, train: str, segment: str, minutes: float) -> Path:
    root = folder / "project"
    with Project.create(root) as project:
        project.add(f"{train}_image.nii.gz", f"{train}_mask.nii.gz", "train")
        project.add(f"{segment}_image.nii.gz", case_id="unseen")
        project.train(RunSpec(TrainConfig(augment=2, epochs=100), device="cpu", time_budget_min=minutes))
        while project.run().active:
            time.sleep(1)
        assert project.status().active_version == 1, project.run()
    return root


def frame_after(page, action) -> float:
    """Seconds from `action` to the first new frame of the first slice view."""
    before = page.eval_on_selector("img.image-display-area", "e => e.src")
    t0 = time.perf_counter()
    action()
    page.wait_for_function("s => document.querySelector('img.image-display-area').src !== s", arg=before,
                           timeout=30000, polling=5)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", nargs=2, metavar=("TRAIN", "SEGMENT"), help="path prefixes of two scans")
    ap.add_argument("--train-min", type=float, default=2.0)
    ap.add_argument("--strokes", type=int, default=15)
    ap.add_argument("--views", default="slices", help="the page's view layout: sagittal, slices, slices and 3D")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="web-latency-"))
    root = real_project(folder, *a.scans, a.train_min) if a.scans else phantom_project(folder, trained=True)
    case = "unseen" if a.scans else "phantom_1"
    with web_server(root) as url, sync_playwright() as p:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        idle = rss_mib(port)
        page = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"]).new_page(
            viewport={"width": 1600, "height": 900})
        page.goto(url)
        page.wait_for_selector(f"#ea-case-{case}", timeout=60000)
        page.click(f"#ea-case-{case}")
        page.wait_for_function(f"(document.querySelector('#ea-message') || {{innerText: ''}})"
                               f".innerText.includes('{case}')")
        choose_views(page, a.views)
        page.wait_for_timeout(1500)
        t0 = time.perf_counter()
        page.click("#ea-segment")
        page.wait_for_function("document.querySelector('#ea-job').innerText.startsWith('segmented')", timeout=600000,
                               polling=20)
        segment_s = time.perf_counter() - t0
        page.wait_for_timeout(1500)
        opened = rss_mib(port)
        page.click("button:has(.mdi-brush)")
        box = page.locator("img.image-display-area").first.bounding_box()
        times = []
        for i in range(a.strokes):
            x, y = box["x"] + box["width"] * (0.3 + 0.03 * i), box["y"] + box["height"] * 0.5
            page.mouse.move(x, y)
            page.wait_for_timeout(300)
            times.append(frame_after(page, lambda: (page.mouse.down(), page.mouse.up())))
            page.wait_for_timeout(300)
        times.sort()
        print(f"scan: {case} ({'real MRI' if a.scans else 'phantom'}); views: {a.views}; server {url}")
        print(f"Segment click -> result shown: {segment_s:.2f} s")
        print(f"paint click -> first frame showing it: median {1000 * statistics.median(times):.0f} ms, "
              f"p90 {1000 * times[int(0.9 * (len(times) - 1))]:.0f} ms, max {1000 * times[-1]:.0f} ms "
              f"(n={len(times)})")
        print(f"server memory (RSS): {idle:.0f} MiB with the project open, {opened:.0f} MiB after segmenting "
              "and painting")


if __name__ == "__main__":
    main()
