"""The orthopedics viewer in a real headless Chromium: calibrate on the ball, measure, place and resize a template,
save, reopen. Screenshots go to tests/artifacts/ (look at them)."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from modules.orthopedics.templates import TemplateLibrary, TemplatePlacement, placed_outlines
from sample_data.orthopedics import PELVIS, write_orthopedics_demo
from server.imaging.calibration import Calibration
from tests.browser import CHROMIUM, CHROMIUM_ARGS

ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url) as response:
        return json.loads(response.read())


def _screen(page: Any, point: tuple[float, float], columns: int) -> tuple[float, float]:
    """Image pixel (centre convention) to page coordinates, from the overlay (one SVG unit = one pixel)."""
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / columns
    return box["x"] + (point[0] + 0.5) * scale, box["y"] + (point[1] + 0.5) * scale


def _outline_width_px(doc: dict[str, Any], library: TemplateLibrary) -> float:
    """Expected width, in image pixels, of the placed template's first outline (server maths)."""
    calibration = Calibration.from_json(doc["calibration"])
    placed = doc["plan"]["templates"][0]
    template = library.get(placed["template_id"])
    _, points = placed_outlines(template, TemplatePlacement.from_json(placed), calibration)[0]
    xs = [p[0] for p in points]
    return max(xs) - min(xs)


def test_calibrate_measure_template_save_reopen(tessera_server: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    path = write_orthopedics_demo(tmp_path / "files")[0]
    assert tessera_server.ctx.archive.ingest_path(path).ok
    header = pydicom.dcmread(path, stop_before_pixels=True)
    sop = header.SOPInstanceUID
    url = (
        f"{tessera_server.url}/orthopedics/static/viewer.html?study={header.StudyInstanceUID}"
        f"&series={header.SeriesInstanceUID}"
    )
    library = TemplateLibrary()
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url)
            expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
            hud = page.locator("#calibration-hud")
            expect(hud).to_contain_text("imager-spacing-magnification")

            # Calibrate: the ball is proposed from the pixels, then accepted. A size of 0 is refused first.
            page.click("#find-ball")
            expect(page.locator("#proposal")).to_be_visible(timeout=15000)
            page.fill("#ball-diameter", "0")
            page.click("#accept-ball")
            expect(page.locator("#banner")).to_contain_text("greater than zero")
            expect(hud).to_contain_text("imager-spacing-magnification")
            page.click("#banner-close")
            page.fill("#ball-diameter", "25")
            page.click("#accept-ball")
            expect(hud).to_contain_text("user")
            calibration = _get(f"{tessera_server.url}/orthopedics/images/{sop}/calibration")
            assert calibration["source"] == "user"
            truth = PELVIS.patient_pixel_spacing_mm
            assert abs(calibration["mm_per_pixel"]["column"] / truth - 1) < 0.01

            # Measure the inter-teardrop distance (104 mm on the phantom).
            page.click("button[data-tool=length]")
            for name in ("teardrop_r", "teardrop_l"):
                x, y = _screen(page, PELVIS.px(name), PELVIS.columns)
                page.mouse.click(x, y)
            item = page.locator("#measurements li").first
            expect(item).to_contain_text("mm")
            value = float(re.search(r"length ([\d.]+) mm", item.inner_text())[1])  # type: ignore[index]
            # Clicks land on whole screen pixels (≈ 2 image pixels at this zoom): allow for that.
            assert abs(value - PELVIS.truth["inter_teardrop_mm"]) < 1.5

            # Place a 50 mm cup on the right hip and step it up one size.
            page.select_option("#template", "generic-cup-hemispherical")
            page.select_option("#template-size", "50")
            page.click("button[data-tool=place]")
            x, y = _screen(page, PELVIS.px("head_centre_r"), PELVIS.columns)
            page.mouse.click(x, y)
            template = page.locator("g.ortho-template").first
            expect(template).to_have_count(1)
            # getBBox: the outline's geometry in SVG user units, which are image pixels.
            width_50 = template.locator("polygon").first.evaluate("e => e.getBBox().width")
            page.click("#size-up")
            expect(page.locator("#selected-name")).to_contain_text("52 mm")
            width_52 = template.locator("polygon").first.evaluate("e => e.getBBox().width")
            assert abs(width_52 / width_50 - 52 / 50) < 0.005

            # A stem whose head centre sits 46 px (10 mm) below the cup's centre: the plan shows +10 mm.
            page.select_option("#template", "generic-stem-uncemented-standard")
            page.click("button[data-tool=place]")
            head = PELVIS.px("head_centre_r")
            page.mouse.click(*_screen(page, (head[0], head[1] + 46), PELVIS.columns))
            expect(page.locator("g.ortho-template")).to_have_count(2)
            expect(page.locator("#reconstruction")).to_contain_text("Planned (R): leg length +")
            change = float(re.search(r"leg length \+([\d.]+) mm", page.inner_text("#reconstruction"))[1])  # type: ignore[index]
            assert abs(change - 46 * PELVIS.patient_pixel_spacing_mm) < 0.8
            page.fill("#note", "Right THA planned: 52 mm cup")
            page.click("#save")
            expect(page.locator("#save-state")).to_contain_text("Saved revision 1")
            plan = _get(f"{tessera_server.url}/orthopedics/images/{sop}/plan")
            assert plan["plan"]["templates"][0]["size"] == "52"
            # The drawn outline has the width the server's template maths gives, at the screen scale.
            assert abs(width_52 - _outline_width_px(plan, library)) < 0.1
            expect(page.locator("body")).to_have_attribute("data-tiles", "loaded", timeout=20000)
            page.screenshot(path=str(ARTIFACTS / "orthopedics-plan.png"))

            # Reopen: the calibration, the measurement and the template come back.
            page.reload()
            expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
            expect(page.locator("#calibration-hud")).to_contain_text("user")
            expect(page.locator("#measurements li")).to_have_count(1)
            expect(page.locator("#measurements li").first).to_contain_text(f"{value:.1f} mm")
            expect(page.locator("g.ortho-template")).to_have_count(2)
            expect(page.locator("#reconstruction")).to_contain_text("Planned (R): leg length +")
            expect(page.locator("#note")).to_have_value("Right THA planned: 52 mm cup")
            expect(page.locator("body")).to_have_attribute("data-tiles", "loaded", timeout=20000)
            page.screenshot(path=str(ARTIFACTS / "orthopedics-reopened.png"))
        finally:
            browser.close()
    # The one refused request (marker size 0) is logged by the browser; nothing else may fail.
    assert [e for e in errors if "status of 400" not in e] == [], errors
    assert len(errors) <= 1, errors


def test_long_leg_alignment_and_an_uncalibrated_image(tessera_server: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from sample_data.orthopedics import LONG_LEG

    path = write_orthopedics_demo(tmp_path / "files")[1]
    ds = pydicom.dcmread(path)
    assert tessera_server.ctx.archive.ingest_path(path).ok
    # The same film with its spacing attributes removed: lengths must stay in pixels.
    bare = pydicom.dcmread(path)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "EstimatedRadiographicMagnificationFactor"):
        delattr(bare, keyword)
    bare.SOPInstanceUID = bare.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    bare_path = tmp_path / "bare.dcm"
    bare.save_as(bare_path, enforce_file_format=True)
    assert tessera_server.ctx.archive.ingest_path(bare_path).ok
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{tessera_server.url}/orthopedics/static/viewer.html?sop={ds.SOPInstanceUID}")
            expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
            expect(page.locator("#calibration-hud")).to_contain_text("pixel-spacing")
            page.click("button[data-tool=hka]")
            for name in ("hip_r", "knee_r", "ankle_r"):
                x, y = _screen(page, LONG_LEG.px(name), LONG_LEG.columns)
                page.mouse.click(x, y)
            item = page.locator("#measurements li").first
            expect(item).to_contain_text("varus")
            deviation = float(re.search(r"deviation ([\d.]+)", item.inner_text())[1])  # type: ignore[index]
            assert abs(deviation - LONG_LEG.truth["hka_deviation_r"]) < 0.5
            expect(page.locator("body")).to_have_attribute("data-tiles", "loaded", timeout=20000)
            page.screenshot(path=str(ARTIFACTS / "orthopedics-long-leg.png"))

            page.goto(f"{tessera_server.url}/orthopedics/static/viewer.html?sop={bare.SOPInstanceUID}")
            expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
            expect(page.locator("#calibration-hud")).to_have_text("No calibration · lengths in px")
            page.click("button[data-tool=length]")
            for name in ("hip_r", "knee_r"):
                x, y = _screen(page, LONG_LEG.px(name), LONG_LEG.columns)
                page.mouse.click(x, y)
            expect(page.locator("#measurements li").first).to_contain_text(" px")
            assert " mm" not in page.locator("#measurements li").first.inner_text()
            # A template cannot be placed at true scale without a calibration.
            page.click("button[data-tool=place]")
            page.mouse.click(*_screen(page, LONG_LEG.px("knee_r"), LONG_LEG.columns))
            expect(page.locator("#banner")).to_contain_text("calibrate")
            expect(page.locator("g.ortho-template")).to_have_count(0)
        finally:
            browser.close()
    assert not errors, errors


def test_ischial_lld_and_dicom_implant_templates(tessera_server: Any, tmp_path: Path) -> None:
    """The LLD tool measured against the ischial line (chosen beside it), and a DICOM Generic
    Implant Template from the archive listed under its source and placed at true scale; a
    malformed one is named, not fatal."""
    from playwright.sync_api import expect, sync_playwright

    from sample_data.orthopedics import generic_implant_template

    path = write_orthopedics_demo(tmp_path / "files")[0]
    archive = tessera_server.ctx.archive
    assert archive.ingest_path(path).ok
    malformed = generic_implant_template(54.0, hpgl=b"IN;SP1;PU0,0;PD10,10,20;")
    for i, ds in enumerate((generic_implant_template(50.0), generic_implant_template(52.0), malformed)):
        git_path = tmp_path / f"git{i}.dcm"
        ds.save_as(git_path, enforce_file_format=True)
        assert archive.ingest_path(git_path).ok
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{tessera_server.url}/orthopedics/static/viewer.html?sop={sop}")
            expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
            expect(page.locator("button[data-tool=leg-length-ischial]")).to_have_count(0)  # one LLD tool

            page.select_option("#lld-reference", "leg-length-ischial")
            page.click("button[data-tool=leg-length]")
            expect(page.locator("#prompt")).to_contain_text("ischial tuberosity")
            for name in (
                "ischial_tuberosity_r",
                "ischial_tuberosity_l",
                "lesser_trochanter_r",
                "lesser_trochanter_l",
            ):
                page.mouse.click(*_screen(page, PELVIS.px(name), PELVIS.columns))
            item = page.locator("#measurements li").first
            expect(item).to_contain_text("LLD (ischial)")
            expect(item).to_contain_text("vs ischial line")
            difference = float(re.search(r"difference right minus left (-?[\d.]+) mm", item.inner_text())[1])  # type: ignore[index]
            assert abs(difference - PELVIS.truth["leg_length_difference_r_minus_l"]) < 1.0

            group = page.locator("#template optgroup[label='DICOM GIT (archive)']")
            expect(group.locator("option")).to_have_count(1)
            expect(group.locator("option")).to_contain_text(
                "Hemispherical press-fit cup (Tessera Generic Implants) · DICOM GIT"
            )
            expect(page.locator("#template-problems li")).to_contain_text(malformed.SOPInstanceUID)
            page.select_option("#template", group.locator("option").get_attribute("value"))
            page.select_option("#template-size", "52")
            page.click("button[data-tool=place]")
            page.mouse.click(*_screen(page, PELVIS.px("head_centre_r"), PELVIS.columns))
            template = page.locator("g.ortho-template").first
            expect(template).to_have_count(1)
            page.fill("#rotation", "0")  # cups are placed at 40°: upright, the shell spans its diameter
            page.press("#rotation", "Enter")
            width = template.locator("polygon").first.evaluate("e => e.getBBox().width")
            calibration = _get(f"{tessera_server.url}/orthopedics/images/{sop}/calibration")
            assert abs(width - 52.0 / calibration["mm_per_pixel"]["column"]) < 1.0
            expect(page.locator("body")).to_have_attribute("data-tiles", "loaded", timeout=20000)
            page.screenshot(path=str(ARTIFACTS / "orthopedics-ischial-git.png"))
        finally:
            browser.close()
    assert not errors, errors
