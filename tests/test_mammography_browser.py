"""The mammography viewer in headless Chromium: the 8-image hanging draws each view in its place,
chest walls together (also for an image stored the other way round), stages by key, tomosynthesis."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from sample_data.mammography import CURRENT, PRIOR, RIVERA, write_mammography_demo
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import make_settings

if TYPE_CHECKING:
    from playwright.sync_api import Page

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    folder = tmp_path_factory.mktemp("mg-browser")
    paths = write_mammography_demo(folder, shape=(800, 640), tomo_shape=(400, 320), slices=12)
    running = BackgroundServer.start(make_settings(folder / "data"))
    for path in paths:
        if "2024" in str(path) and path.name == "02-LCC.dcm":
            # The prior LCC arrives stored the other way round (chest wall on the right):
            # the viewer must mirror it so the chest walls still meet.
            ds = dcmread(path)
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
            ds.PatientOrientation = ["P", "R"]
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            assert running.ctx.archive.ingest_bytes(buffer.getvalue()).ok
        else:
            assert running.ctx.archive.ingest_path(path).ok
    yield running
    running.stop()


def _poll(page: Page, expression: str, timeout: float = 20.0) -> None:
    """wait_for_function evaluates strings with eval, which the viewer's CSP forbids; poll instead."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def _halves(png: bytes) -> tuple[float, float]:
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(float)
    h, w = gray.shape
    body = gray[h // 6 : h - h // 6]  # skip the labels
    return float(body[:, : w // 2].mean()), float(body[:, w // 2 :].mean())


@pytest.mark.browser
def test_eight_image_hanging_in_chromium(server: BackgroundServer) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    study = CURRENT.uid_for(RIVERA)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(f"{server.url}/mammography/static/viewer.html?study={study}&stage=4")
            page.wait_for_selector("body[data-drawn='true']", timeout=20000)
            page.screenshot(path=str(ARTIFACTS / "mammography_hanging_8.png"))
            # Drawn from the hanging alone (it carries each image's info), and each image's tiles at
            # the one level its fitted view needs: no coarser placeholder level fetched first.
            assert not [url for url in requested if "/info" in url]
            levels: dict[str, set[int]] = {}
            for url in requested:
                if "_files/" in url:
                    sop = url.split("/images/")[1].split("/")[0]
                    levels.setdefault(sop, set()).add(int(url.split("_files/")[1].split("/")[0]))
            assert len(levels) == 8 and all(len(found) == 1 for found in levels.values()), levels
            expected = {
                "RCC": (1, 1, CURRENT, "right"),
                "LCC": (1, 2, CURRENT, "left"),
                "RMLO": (1, 3, CURRENT, "right"),
                "LMLO": (1, 4, CURRENT, "left"),
                "RCC-prior": (2, 1, PRIOR, "right"),
                "LCC-prior": (2, 2, PRIOR, "left"),
                "RMLO-prior": (2, 3, PRIOR, "right"),
                "LMLO-prior": (2, 4, PRIOR, "left"),
            }
            boxes = {}
            for vid, (_row, _column, _study, chest_wall) in expected.items():
                element = page.locator(f"[data-viewport='{vid}']")
                assert element.get_attribute("data-chest-wall") == chest_wall
                boxes[vid] = element.bounding_box()
                left, right = _halves(element.screenshot())
                # Tissue fills the chest-wall side; the nipple side fades to air.
                assert (right > left + 8) if chest_wall == "right" else (left > right + 8), (vid, left, right)
                label = element.locator(".mammo-label").inner_text()
                assert label.startswith(vid.split("-")[0])
                assert ("PRIOR" in label) == vid.endswith("prior")
            assert page.locator("[data-viewport='LCC-prior']").get_attribute("data-flipped") == "true"
            assert page.locator("[data-viewport='LCC']").get_attribute("data-flipped") == "false"
            # Grid places: rows then columns, right breast left of left breast, chest walls meeting.
            assert boxes["RCC"]["x"] < boxes["LCC"]["x"] < boxes["RMLO"]["x"] < boxes["LMLO"]["x"]
            assert boxes["RCC"]["y"] < boxes["RCC-prior"]["y"]
            assert abs(boxes["RCC"]["x"] - boxes["RCC-prior"]["x"]) < 2

            # Stage keys: 1 = the four current views.
            page.keyboard.press("1")
            page.wait_for_selector("body[data-stage='1'][data-drawn='true']", timeout=20000)
            assert page.locator(".mammo-viewport").count() == 4
            page.keyboard.press("x")  # CAD marks from the study's Mammography CAD SR
            page.wait_for_selector("body[data-cad='true']")
            page.wait_for_selector("[data-viewport='LCC'] polyline.cad")
            assert page.locator("[data-viewport='LMLO'] polyline.cad").count() == 1
            assert page.locator("[data-viewport='RCC'] .cad").count() == 0
            page.screenshot(path=str(ARTIFACTS / "mammography_stage1.png"))
            page.keyboard.press("x")
            # Window/level by dragging: every viewport re-renders server-side, the layout stays.
            before_wl = page.locator("[data-viewport='RCC']").bounding_box()
            page.keyboard.press("w")
            assert before_wl is not None
            page.mouse.move(before_wl["x"] + 200, before_wl["y"] + 200)
            page.mouse.down()
            page.mouse.move(before_wl["x"] + 100, before_wl["y"] + 300, steps=5)
            page.mouse.up()
            _poll(
                page,
                "performance.getEntriesByType('resource').filter(e => e.name.includes('window=')).length >= 4",
            )
            _poll(page, "document.body.dataset.drawn === 'true' || window.__mammo.drawn >= 4")
            left, right = _halves(page.locator("[data-viewport='RCC']").screenshot())
            assert right > left + 8  # still hung with the chest wall against the middle
            page.keyboard.press("0")
            page.keyboard.press("p")
            page.keyboard.press("ArrowRight")
            page.wait_for_selector("body[data-stage='2'][data-drawn='true']", timeout=20000)

            # Tomosynthesis: the LCC stack scrolls, and the label follows.
            page.keyboard.press("t")
            _poll(page, "window.__mammo.slicesShown > 0")
            lcc = page.locator("[data-viewport='LCC']")
            before = lcc.locator(".mammo-slice-label").inner_text()
            lcc.click()
            page.keyboard.press("ArrowDown")
            _poll(
                page,
                f"document.querySelector(\"[data-viewport='LCC'] .mammo-slice-label\").textContent !== {before!r}",
            )
            assert "Slice 8 / 12" in lcc.locator(".mammo-slice-label").inner_text()
            # The prior's stack of the same breast and view follows by relative depth.
            prior_label = page.locator("[data-viewport='LCC-prior'] .mammo-slice-label")
            _poll(
                page,
                "document.querySelector(\"[data-viewport='LCC-prior'] .mammo-slice-label\").textContent.startsWith('Slice 8 /')",
            )
            assert prior_label.inner_text().startswith("Slice 8 / 12")
            page.screenshot(path=str(ARTIFACTS / "mammography_tomo.png"))

            # A length on the current LCC (2D): millimetres at the breast, calibration named.
            page.keyboard.press("t")
            page.keyboard.press("1")
            page.wait_for_selector("body[data-stage='1'][data-drawn='true']", timeout=20000)
            page.keyboard.press("l")
            box = page.locator("[data-viewport='LCC']").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=5)
            page.mouse.up()
            item = page.locator("#measurements li").first.inner_text()
            assert (
                item.startswith("LCC: ")
                and " mm — " in item
                and "EstimatedRadiographicMagnificationFactor" in item
            )
            page.screenshot(path=str(ARTIFACTS / "mammography_measure.png"))

            # The report form: a finding with the viewer's mark, saved as SR, outputs linked.
            page.goto(f"{server.url}/mammography/static/report.html?study={study}")
            page.wait_for_selector("body[data-loaded='true']")
            page.check("input[name='composition'][value='c']")
            page.click("#add-finding")
            finding = page.locator("[data-finding='0']")
            finding.locator("[data-field='laterality']").select_option("L")
            finding.locator("[data-field='kind']").select_option("mass")
            finding.locator("[data-field='shape']").select_option("irregular")
            finding.locator("[data-field='margin']").select_option("spiculated")
            finding.locator("[data-field='attach']").select_option("0")  # the viewer's length mark
            assert "Marked on: LCC" in finding.locator(".marks").nth(1).inner_text()
            finding.locator("[data-field='assessment']").select_option("4B")
            page.select_option("#assessment-right", "1")
            page.select_option("#assessment-left", "4B")
            page.select_option("#assessment-overall", "4B")
            page.fill("#reader", "Okafor^Ngozi")
            page.click("#save")
            page.wait_for_selector("#outputs:not([hidden])", timeout=10000)
            assert page.locator("#saved").inner_text() == "Saved version 1"
            page.screenshot(path=str(ARTIFACTS / "mammography_report_form.png"), full_page=True)
            page.reload()  # re-opened from the stored SR
            page.wait_for_selector("body[data-loaded='true']")
            assert page.is_checked("input[name='composition'][value='c']")
            assert page.locator("[data-finding='0'] [data-field='margin']").input_value() == "spiculated"
            assert page.locator("#assessment-overall").input_value() == "4B"
            letter = page.request.get(f"{server.url}/mammography/reports/{study}/letter.html").text()
            assert "Your breast tissue is dense." in letter
        finally:
            browser.close()
    assert not errors
