"""The side-by-side page in Chromium: each slide has the single viewer's colour toggle (ICC → sRGB)
and its read-only DICOM annotations layer (dashed, a toggle per source), drawn where the shapes are
on that slide and following the synchronised pan. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from sample_data.wsi import SIZES, generate
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_pathology_color import (
    SCREENSHOTS,
    WIDE_GAMUT,
    matrix_trc_profile,
    restamped,
    saturation,
)
from tests.test_pathology_dicom_annotations import other_tool_ann, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]

LEFT_OUTLINE = np.array([[200.0, 150.0], [700.0, 160.0], [650.0, 600.0], [220.0, 560.0]], dtype=np.float32)
RIGHT_OUTLINE = np.array([[900.0, 300.0], [1300.0, 320.0], [1250.0, 700.0]], dtype=np.float32)
RIGHT_POINTS = [np.array([[500.0, 400.0]], dtype=np.float32), np.array([[800.0, 900.0]], dtype=np.float32)]


def polygon_points(page: Any, selector: str) -> list[list[float]]:
    points = page.get_attribute(selector, "points") or ""
    return [[float(v) for v in pair.split(",")] for pair in points.split()]


def on_screen(page: Any, pane: int, outline: np.ndarray) -> list[list[float]]:
    """Where the pane's viewer puts these level-0 pixels, asked of OpenSeadragon itself."""
    return list(
        page.evaluate(
            """([pane, points]) => points.map(([x, y]) => {
                const p = window.tesseraCompare.panes[pane].viewer.viewport
                  .imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
                return [p.x, p.y];
            })""",
            [pane, outline.tolist()],
        )
    )


def assert_drawn_at(page: Any, pane: int, outline: np.ndarray) -> list[list[float]]:
    side = "ab"[pane]
    drawn = polygon_points(page, f"#dicom-overlay-{side} polygon")
    np.testing.assert_allclose(drawn, on_screen(page, pane, outline), atol=1.5)
    return drawn


def test_each_side_has_colour_and_dicom_annotations(
    tessera_server_factory: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    slide = generate(SIZES["small"], tmp_path / "wsi")  # its optical path carries an sRGB profile
    wide = restamped(
        slide, tmp_path / "wide", 11, matrix_trc_profile("Wide Gamut RGB (test)", WIDE_GAMUT, 2.2)
    )
    server = tessera_server_factory()
    for path in [*slide.dicom_files, *wide]:
        assert server.ctx.archive.ingest_path(path).ok
    left_base = pydicom.dcmread(wide[0], stop_before_pixels=True)
    right_base = pydicom.dcmread(slide.dicom_files[0], stop_before_pixels=True)
    left, right = str(left_base.SeriesInstanceUID), str(right_base.SeriesInstanceUID)
    DICOMwebClient(server.url + "/dicom-web").store_instances(
        [
            other_tool_ann(left_base, "2D", [("Tumour left", "POLYGON", [LEFT_OUTLINE])]),
            other_tool_ann(right_base, "2D", [("Necrosis right", "POLYGON", [RIGHT_OUTLINE])]),
            other_tool_ann(right_base, "2D", [("Mitoses right", "POINT", RIGHT_POINTS)]),
        ]
    )
    shapes = {}
    for side, series in (("a", left), ("b", right)):
        collection = requests.get(
            f"{server.url}/pathology/slides/{series}/dicom-annotations", timeout=20
        ).json()
        shapes[side] = len(collection["features"])
    assert shapes == {"a": 1, "b": 3}, shapes  # each slide has its own objects only

    url = (
        f"{server.url}/pathology/static/compare.html"
        f"?study={slide.spec.study_instance_uid}&series={left}&compare={right}"
    )
    errors: list[str] = []
    requested: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("request", lambda r: requested.append(r.url) if "_files/" in r.url else None)
            page.goto(url)
            wait_for(page, "data-dicom-shapesa", lambda v: v == "1")
            wait_for(page, "data-dicom-shapesb", lambda v: v == "3")
            wait_for(page, "data-tilesa", lambda v: int(v or 0) >= 4)
            wait_for(page, "data-tilesb", lambda v: int(v or 0) >= 4)
            page.wait_for_timeout(800)

            # -- the DICOM layer of each side: its own sources, drawn where the shapes are --------
            assert "Tumour outlines (OMV)" in (page.text_content("#dicom-sources-a") or "")
            assert page.locator("#dicom-sources-a li").count() == 1
            assert page.locator("#dicom-sources-b li").count() == 2
            assert "Other Microscopy Viewer" in (page.text_content("#dicom-sources-b li") or "")
            texts_a = " ".join(page.locator("#dicom-overlay-a text").all_text_contents())
            texts_b = " ".join(page.locator("#dicom-overlay-b text").all_text_contents())
            assert "Tumour left" in texts_a and "right" not in texts_a
            assert "Necrosis right" in texts_b and "Mitoses right" in texts_b and "left" not in texts_b
            assert page.locator("#dicom-overlay-b circle").count() == 2
            assert (page.get_attribute("#dicom-overlay-a polygon", "class") or "") == "dicom"  # dashed
            before_a = assert_drawn_at(page, 0, LEFT_OUTLINE)
            before_b = assert_drawn_at(page, 1, RIGHT_OUTLINE)
            page.screenshot(path=str(SCREENSHOTS / "pathology-compare-dicom-annotations.png"))

            # panning the left slide moves both (synced), and both layers stay on their shapes
            box = page.locator("#viewer-a").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 - 120, box["y"] + box["height"] / 2 - 90, steps=8)
            page.mouse.up()
            page.wait_for_timeout(1200)
            after_a = assert_drawn_at(page, 0, LEFT_OUTLINE)
            after_b = assert_drawn_at(page, 1, RIGHT_OUTLINE)
            assert abs(after_a[0][0] - before_a[0][0]) > 50 and abs(after_b[0][0] - before_b[0][0]) > 50

            # a toggle per source and per side: one side's choices leave the other alone
            page.locator("#dicom-sources-b li input").first.uncheck()
            assert page.locator("#dicom-overlay-b polygon").count() == 0
            assert page.locator("#dicom-overlay-b circle").count() == 2
            assert page.locator("#dicom-overlay-a polygon").count() == 1
            page.uncheck("#dicom-layer-a")
            assert page.locator("#dicom-overlay-a > *").count() == 0
            assert page.locator("#dicom-overlay-b circle").count() == 2

            # -- colour: each side its own select, named after its own profile ---------------------
            assert page.is_visible("#color-mode-a") and page.is_visible("#color-mode-b")
            assert "Wide Gamut RGB (test)" in (page.get_attribute("#color-mode-a", "title") or "")
            assert "sRGB" in (page.get_attribute("#color-mode-b", "title") or "")
            centre = page.get_attribute("body", "data-centre0")
            viewer_a = page.locator("#viewer-a")
            before = np.asarray(Image.open(io.BytesIO(viewer_a.screenshot())).convert("RGB"), dtype=np.int16)
            drawn = int(page.get_attribute("body", "data-tilesa") or 0)
            page.select_option("#color-mode-a", "srgb")
            wait_for(page, "data-tilesa", lambda v: int(v or 0) >= drawn + 4)
            page.wait_for_timeout(1000)
            after = np.asarray(Image.open(io.BytesIO(viewer_a.screenshot())).convert("RGB"), dtype=np.int16)
            managed = [r for r in requested if "color=srgb" in r]
            assert managed and all(f"/slides/{left}_files/" in r for r in managed), managed[-3:]
            assert page.get_attribute("body", "data-colora") == "srgb"
            assert page.get_attribute("body", "data-colorb") == "stored"
            assert page.get_attribute("body", "data-centre0") == centre  # the view stayed where it was
            tissue = saturation(before) > 40
            assert tissue.mean() > 0.05
            assert saturation(after)[tissue].mean() > saturation(before)[tissue].mean() + 10

            page.select_option("#color-mode-b", "srgb")
            page.wait_for_timeout(1500)
            assert any(f"/slides/{right}_files/" in r and "color=srgb" in r for r in requested)
            assert page.get_attribute("body", "data-colorb") == "srgb"
            page.check("#dicom-layer-a")
            assert_drawn_at(page, 0, LEFT_OUTLINE)
            page.screenshot(path=str(SCREENSHOTS / "pathology-compare-colour-managed.png"))
            page.select_option("#color-mode-a", "stored")
            page.wait_for_timeout(800)
            assert page.get_attribute("body", "data-colora") == "stored"
        finally:
            browser.close()
    assert not errors, errors
