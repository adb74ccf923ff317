"""The clinician's loop clicked in a real browser (Debian's Chromium through playwright) on a real
`extremeaug web` process: select, segment (the overlay appears while the server keeps answering), paint a
stroke with real mouse events, accept (the label names its user), two users on one case, training progress
and Cancel. Screenshots of each step go to $EXTREMEAUG_WEB_SCREENSHOTS when it is set (docs/images/)."""
from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import module_lib_importable, run_cli

pytest.importorskip("trame_slicer", reason="needs the web extra (pip install -e '.[web]')")
playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
module_lib_importable()
from web_server import CHROMIUM, TINY, choose_views, phantom_project, web_server  # noqa: E402

from ExtremeAugWeb.access import Users  # noqa: E402
from extremeaug.project import Project  # noqa: E402

if CHROMIUM is None:   # the README's test command installs it; without it this file cannot run
    pytest.skip("needs Debian's chromium (apt-get install chromium)", allow_module_level=True)
SHOTS = os.environ.get("EXTREMEAUG_WEB_SCREENSHOTS")


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-browser")
    root = phantom_project(folder, trained=True)
    users = Users(folder / "users.json")
    tokens = {"alice": users.add("alice"), "bob": users.add("bob")}
    with web_server(root, "--users", str(users.path)) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pages = {}
        for name, token in tokens.items():
            page = browser.new_context(viewport={"width": 1600, "height": 900}).new_page()
            page.goto(f"{url}?token={token}")
            page.wait_for_selector("#ea-case-phantom_0", timeout=60000)
            pages[name] = page
        yield {"url": url, "root": root, "pages": pages, "tokens": tokens}
        browser.close()


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"web-{name}.png"))


def text_has(page, selector: str, needle: str, timeout=60000) -> None:
    page.wait_for_function("([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
                           arg=[selector, needle], timeout=timeout)


def case_json(station, case_id: str) -> dict:
    result = run_cli("project", "cases", station["root"], case_id, "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def paint_stroke(page, segment: str) -> None:
    """Choose a segment and Paint, and drag across the middle of the first (sagittal) slice view, as a
    person does (the tiny test model gives every voxel to the first structure: another one is painted)."""
    page.locator(f"#ea-editor .v-list-item:has(input[value='{segment}'])").click()   # the name is a field
    page.click("button:has(.mdi-brush)")
    box = page.locator("img.image-display-area").first.bounding_box()
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x + 6 * i, y, steps=2)
    page.mouse.up()
    page.wait_for_timeout(800)


def test_the_page_lists_the_cases_and_every_tab_sees_the_same_selection(station):
    alice, bob = station["pages"]["alice"], station["pages"]["bob"]
    shot(alice, "1-cases")
    for case in ("phantom_0", "phantom_1", "phantom_2"):
        assert alice.locator(f"#ea-case-{case}").is_visible()
    assert "manual" in alice.inner_text("#ea-case-phantom_0") and "unlabeled" in alice.inner_text("#ea-case-phantom_1")
    alice.click("#ea-case-phantom_1")
    text_has(alice, "#ea-message", "phantom_1: unlabeled")
    text_has(bob, "#ea-message", "phantom_1: unlabeled")   # one shared state: the other user sees it too


def test_segment_shows_the_result_and_its_overlay_while_the_server_answers_other_requests(station):
    page = station["pages"]["alice"]
    page.click("#ea-case-phantom_1")
    text_has(page, "#ea-message", "phantom_1")
    page.click("#ea-segment")
    text_has(page, "#ea-job", "segmenting", timeout=30000)
    started = time.monotonic()
    request = urllib.request.Request(f"{station['url']}download/phantom_0/label.nii.gz",
                                     headers={"Cookie": f"extremeaug_token={station['tokens']['bob']}"})
    with urllib.request.urlopen(request, timeout=30) as response:   # another request, answered during the job
        assert response.status == 200 and len(response.read()) > 0
    answered = time.monotonic() - started
    assert "segmenting" in page.inner_text("#ea-job"), "the job ended before the other request was answered"
    text_has(page, "#ea-job", "segmented 1 case(s)", timeout=120000)
    text_has(page, "#ea-case-phantom_1", "auto")
    assert page.locator("#ea-overlay").is_enabled(), "the uncertainty overlay is not offered"
    shot(page, "2-segmented")
    print(f"another request answered in {answered:.2f} s while the segmentation ran")


def test_a_painted_stroke_accepted_in_the_page_is_a_corrected_label_named_by_its_user(station):
    page = station["pages"]["alice"]
    page.click("#ea-case-phantom_1")
    text_has(page, "#ea-message", "phantom_1: auto")
    paint_stroke(page, "label 2")
    shot(page, "3-painted")
    page.click("#ea-accept")
    text_has(page, "#ea-message", "stored corrected label of phantom_1 for alice")
    text_has(page, "#ea-history", "by alice")
    shot(page, "4-accepted")
    case = case_json(station, "phantom_1")
    newest = case["history"][-1]
    assert case["state"] == "corrected" and newest["kind"] == "corrected" and newest["accepted_by"] == "alice"
    assert newest["correction"]["voxels_added"] > 0 and newest["correction"]["model_version"] == 1


def test_two_users_accepting_the_same_case_both_keep_their_labels(station):
    bob = station["pages"]["bob"]
    bob.click("#ea-case-phantom_1")
    text_has(bob, "#ea-message", "phantom_1: corrected")
    paint_stroke(bob, "label 3")
    bob.click("#ea-accept")
    text_has(bob, "#ea-message", "for bob")
    history = case_json(station, "phantom_1")["history"]
    assert [(h["kind"], h["accepted_by"]) for h in history[-2:]] == [("corrected", "alice"), ("corrected", "bob")]


def test_training_with_the_unlabeled_scans_shows_its_progress_in_the_page_and_cancel_stops_it(station):
    page = station["pages"]["alice"]
    page.fill("#ea-augment", "2")
    page.fill("#ea-epochs", "200")
    page.check("#ea-unlabeled")   # phantom_2 has no label: the run pseudo-labels it
    page.click("#ea-train")
    text_has(page, "#ea-train-text", "epoch", timeout=180000)
    first = page.inner_text("#ea-train-text")
    page.wait_for_function("t => document.querySelector('#ea-train-text').innerText !== t", arg=first,
                           timeout=120000)   # the progress moves without a reload
    shot(page, "5-training")
    assert page.locator("#ea-cancel").is_enabled()
    page.click("#ea-cancel")
    text_has(page, "#ea-train-text", "cancelled", timeout=180000)
    assert page.locator("#ea-resume").is_enabled()
    shot(page, "6-cancelled")
    with Project.open(station["root"]) as project:
        run = project.run()
        assert run.status.value == "cancelled"
        spec, _, unlabeled = project.job(run.id)
        assert spec.unlabeled and [case_id for case_id, _ in unlabeled] == ["phantom_2"]


def test_a_run_started_outside_the_page_shows_its_progress_there(station):
    page = station["pages"]["bob"]
    with Project.open(station["root"]) as project:   # as the command line or the Slicer module would
        project.train(TINY)
    text_has(page, "#ea-train-text", "finished: model version 2", timeout=300000)
    text_has(page, "#ea-versions", "2")


def test_the_3d_view_is_there_on_demand(station):
    page = station["pages"]["alice"]
    assert page.locator("img.image-display-area").count() == 3
    choose_views(page, "slices and 3D")
    page.wait_for_function("document.querySelectorAll('img.image-display-area').length === 4", timeout=30000)
    shot(page, "7-3d")
    choose_views(page, "slices")
    page.wait_for_function("document.querySelectorAll('img.image-display-area').length === 3", timeout=30000)
