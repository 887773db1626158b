"""The pathology routes over real HTTP (DZI, tiles, caching validators, info, errors) and the viewer in Chromium."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Page

from sample_data.radiology import ct_series
from sample_data.wsi import SIZES, GeneratedSlide, generate
from server.archive.archive import Archive
from server.config import load_settings
from server.context import ServerContext
from server.modules import ModuleRegistry
from server.web.app import make_app
from tests.browser import CHROMIUM, CHROMIUM_ARGS


@dataclass
class Running:
    url: str
    slide: GeneratedSlide
    second: GeneratedSlide  # another stain of the same case, for side-by-side viewing
    ct_series_uid: str
    ctx: ServerContext


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    slide = generate(SIZES["small"], tmp_path_factory.mktemp("wsi"))
    ihc = replace(SIZES["small"], series_number=2, stain="Ki-67", seed=8, specimen="S25-0042 A2")
    second = generate(ihc, tmp_path_factory.mktemp("wsi2"))
    archive = Archive(load_settings({}, data_dir=tmp_path_factory.mktemp("archive")))
    for path in [*slide.dicom_files, *second.dicom_files]:
        assert archive.ingest_path(path).ok
    for ds in ct_series(2):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert archive.ingest_bytes(buffer.getvalue()).ok
    ctx = ServerContext(archive.settings, archive, ThreadPoolExecutor(4), ModuleRegistry.discover())
    assert ctx.registry is not None and ctx.registry.get("pathology") is not None
    ctx.registry.setup(ctx)
    port = _free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = make_app(ctx).listen(port, "127.0.0.1")
        started.set()
        loop.run_forever()
        server.stop()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    yield Running(f"http://127.0.0.1:{port}", slide, second, str(ds.SeriesInstanceUID), ctx)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    ctx.executor.shutdown()
    archive.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body; errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def slide_url(server: Running) -> str:
    return f"{server.url}/pathology/slides/{server.slide.spec.series_instance_uid}"


def test_dzi_descriptor(server: Running) -> None:
    status, headers, body = get(slide_url(server) + ".dzi")
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    root = ET.fromstring(body)
    assert root.attrib["TileSize"] == "256" and root.attrib["Overlap"] == "0"
    assert root[0].attrib == {"Width": "2000", "Height": "1500"}
    assert headers["ETag"].startswith('"')
    assert get(slide_url(server) + ".dzi", {"If-None-Match": headers["ETag"]})[0] == 304


def test_info(server: Running) -> None:
    status, _, body = get(slide_url(server) + "/info")
    assert status == 200
    info = json.loads(body)
    assert (info["width"], info["height"]) == (2000, 1500)
    assert info["mpp_x"] == pytest.approx(0.25) and info["objective_power"] == 40
    assert len(info["levels"]) == 4 and info["dzi"]["levels"] == 12
    assert info["vendor"] == "Tessera Sample Data"
    assert info["optical_paths"][0]["identifier"] == "1"
    assert info["focal_planes"] == 1
    assert info["dzi"]["url"].endswith(f".dzi?v={info['dzi']['url'].split('?v=')[1]}")
    for kind in ("label", "overview", "thumbnail"):
        status, headers, image = get(server.url + info["associated_images"][kind])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(image)).format == "JPEG"


def test_passthrough_tile_bytes_and_caching_headers(server: Running) -> None:
    version = json.loads(get(slide_url(server) + "/info")[2])["dzi"]["url"].split("?v=")[1]
    status, headers, body = get(slide_url(server) + f"_files/11/2_1.jpeg?v={version}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    columns = server.slide.spec.level_sizes()[0][0] // 256 + 1
    assert body == server.slide.level_tiles[0][1 * columns + 2]
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    status, headers, body = get(slide_url(server) + "_files/11/2_1.jpeg", {"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["ETag"] == etag
    assert headers["Cache-Control"] == "no-cache"  # not under a versioned URL: may change, revalidate
    assert get(slide_url(server) + "_files/11/2_1.jpeg?v=old")[1]["Cache-Control"] == "no-cache"
    assert get(slide_url(server) + "_files/11/2_1.jpeg", {"If-None-Match": '"other"'})[0] == 200


def test_resampled_tiles_have_dzi_sizes(server: Running) -> None:
    for level, address, size in [
        (0, "0_0", (1, 1)),
        (3, "0_0", (8, 6)),
        (7, "0_0", (125, 94)),
        (9, "1_1", (244, 119)),
        (11, "7_5", (2000 - 1792, 1500 - 1280)),
    ]:
        status, _, body = get(slide_url(server) + f"_files/{level}/{address}.jpeg")
        assert status == 200
        assert Image.open(io.BytesIO(body)).size == size


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("_files/12/0_0.jpeg", 404),
        ("_files/11/8_0.jpeg", 404),
        ("_files/11/0_6.jpeg", 404),
        ("_files/0/1_0.jpeg", 404),
        ("_files/x/0_0.jpeg", 400),
        ("_files/11/0_0.png", 400),
        ("_files/11/0-0.jpeg", 400),
        ("_files/11/-1_0.jpeg", 400),
        ("_files/99999999999/0_0.jpeg", 400),
        ("/associated/macro.jpeg", 404),
    ],
)
def test_bad_tile_urls_are_problems(server: Running, path: str, status: int) -> None:
    code, headers, body = get(slide_url(server) + path)
    assert code == status
    assert headers["Content-Type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status and problem["detail"]


def test_not_a_slide_and_bad_uids(server: Running) -> None:
    for uid, status in [
        (server.ct_series_uid, 404),
        ("1.2.3.4", 404),
        ("not-a-uid", 400),
        ("1." * 40 + "1", 400),
    ]:
        code, headers, body = get(f"{server.url}/pathology/slides/{uid}.dzi")
        assert code == status, uid
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(body)["status"] == status
    # still serving after the errors
    assert get(slide_url(server) + "_files/11/0_0.jpeg")[0] == 200


def test_study_slides_for_the_case_panel(server: Running) -> None:
    study = server.slide.spec.study_instance_uid
    status, _, body = get(f"{server.url}/pathology/studies/{study}/slides")
    assert status == 200
    slides = json.loads(body)["slides"]
    assert [s["SeriesInstanceUID"] for s in slides] == [
        str(server.slide.spec.series_instance_uid),
        str(server.second.spec.series_instance_uid),
    ]
    assert slides[0]["thumbnail"].startswith("/pathology/slides/")


def test_module_claims_slides_only(server: Running) -> None:
    from server.modules import SeriesRecord

    registry = server.ctx.registry
    assert registry is not None
    module = registry.get("pathology")
    assert module is not None
    wsi = SeriesRecord("1.2", "1.2.3", "SM", frozenset({"1.2.840.10008.5.1.4.1.1.77.1.6"}))
    ct = SeriesRecord("1.2", "1.2.4", "CT", frozenset({"1.2.840.10008.5.1.4.1.1.2"}))
    assert module.claims(wsi) and not module.claims(ct)
    assert module.viewer_url("1.2", "1.2.3").startswith("/pathology/static/viewer.html?")


def test_viewer_page_is_served(server: Running) -> None:
    status, headers, body = get(f"{server.url}/pathology/static/viewer.html")
    assert status == 200 and b"viewer.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_annotations_round_trip_as_geojson(server: Running) -> None:
    url = f"{slide_url(server)}/annotations"
    collection = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [110, 10], [110, 60], [10, 10]]]},
                "properties": {"label": "tumour <b>", "color": "#FF0000", "extra": 1},
            },
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]}, "properties": {}},
        ],
    }
    request = urllib.request.Request(url + "?archive=1", json.dumps(collection).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        dicom = json.loads(response.read())["dicom"]
    assert dicom["stored"] is True
    # the same shapes are in the archive as a DICOM Microscopy Bulk Simple Annotations instance
    stored = server.ctx.archive.instance_by_uid(dicom["SOPInstanceUID"])
    assert stored is not None and stored.sop_class_uid == "1.2.840.10008.5.1.4.1.1.91.1"
    assert stored.study_instance_uid == str(server.slide.spec.study_instance_uid)
    ann = pydicom.dcmread(stored.path)
    groups = {g.AnnotationGroupLabel: g.GraphicType for g in ann.AnnotationGroupSequence}
    assert groups == {"tumour <b>": "POLYGON", "point": "POINT"}
    status, headers, body = get(url + "?download=1")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    saved = json.loads(body)
    assert saved["features"][0]["properties"] == {
        "label": "tumour <b>",
        "color": "#ff0000",
        "kind": "polygon",
    }
    assert saved["features"][1]["properties"]["kind"] == "point"
    for bad in [
        b"{",
        b'{"type": "Feature"}',
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}
                ],
            }
        ).encode(),
    ]:
        request = urllib.request.Request(url, bad, method="PUT")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=10)
        assert error.value.code == 400
        assert json.loads(error.value.read())["status"] == 400
    assert json.loads(get(url)[2]) == saved  # a rejected write leaves the saved collection alone
    assert "dicom" not in saved
    request = urllib.request.Request(
        url, json.dumps({"type": "FeatureCollection", "features": []}).encode(), method="PUT"
    )
    urllib.request.urlopen(request, timeout=10).close()


def test_new_instance_reassembles_the_slide(server: Running, tmp_path: Path) -> None:
    """A descriptor request notices a series that grew, even in another process."""
    library = server.ctx.registry.get("pathology").library  # type: ignore[union-attr]
    uid = str(server.slide.spec.series_instance_uid)
    before = library.open(uid)
    assert library.open(uid, revalidate=True) is before
    before.number_of_instances -= 1  # as if an instance arrived after this process opened it
    assert library.open(uid, revalidate=True) is not before


SCREENSHOTS = Path(__file__).parent / "artifacts"  # git-ignored, like the other browser tests


def wait_for_tiles(page: Page, count: int, timeout: float = 15.0) -> None:
    """Polls the viewer's drawn-tile counter (wait_for_function would need eval, which the CSP forbids)."""
    deadline = time.monotonic() + timeout
    while int(page.get_attribute("body", "data-tiles-drawn") or 0) < count:
        assert time.monotonic() < deadline, f"fewer than {count} tiles drawn in {timeout} s"
        page.wait_for_timeout(100)


def wait_until_still(page: Page, timeout: float = 10.0) -> None:
    """Measuring clicks must land on a viewport that has stopped moving."""
    deadline = time.monotonic() + timeout
    page.wait_for_timeout(100)
    while page.get_attribute("body", "data-animating") != "false":
        assert time.monotonic() < deadline, "the viewer kept animating"
        page.wait_for_timeout(50)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_viewer_draws_tiles_zooms_and_measures(server: Running) -> None:
    """Headless Chromium opens a slide, sees tiles, zooms to 40×, measures a length and an area."""
    from playwright.sync_api import sync_playwright

    spec = server.slide.spec
    url = (
        f"{server.url}/pathology/static/viewer.html"
        f"?study={spec.study_instance_uid}&series={spec.series_instance_uid}"
    )
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            tiles: list[tuple[str, str]] = []
            page.on(
                "response",
                lambda r: (
                    tiles.append((r.url, r.headers.get("cache-control", ""))) if "_files/" in r.url else None
                ),
            )
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            wait_for_tiles(page, 4)
            assert "S25-0042 A1" in page.text_content("#slide-title")
            assert page.locator("#slides li").count() == 2
            assert page.text_content("#scalebar-text").endswith(("µm", "mm"))
            assert not page.is_visible("#views")  # one optical path, one focal plane: no controls
            # OpenSeadragon carries the descriptor's ?v= onto every tile: browsers may keep them for good
            assert tiles and all("?v=" in url and "immutable" in cache for url, cache in tiles), tiles[:3]

            drawn = int(page.get_attribute("body", "data-tiles-drawn") or 0)
            page.keyboard.press("5")  # 40× objective: one image pixel per screen pixel
            wait_for_tiles(page, drawn + 4)
            wait_until_still(page)
            assert page.text_content("#magnification") == "40×"
            scale = page.text_content("#scalebar-text")
            bar = page.locator("#scalebar-line").bounding_box()
            assert bar is not None
            width = bar["width"]
            value = float(scale.split()[0]) * (1000 if scale.endswith("mm") else 1)
            assert value / (width - 2) == pytest.approx(spec.mpp, rel=0.05)  # 2 px of border

            page.keyboard.press("l")
            box = page.locator("#viewer").bounding_box()
            assert box is not None
            x, y = box["x"] + 300, box["y"] + 300
            page.mouse.click(x, y)
            page.mouse.click(x + 400, y)  # 400 screen px at 40× = 400 image px = 100 µm
            page.wait_for_selector("#overlay text")
            length = page.text_content("#measurements li") or ""
            assert re.fullmatch(r"Length [0-9.]+ µm×", length), length
            assert float(length.split()[1]) == pytest.approx(100, rel=0.01)

            page.keyboard.press("a")
            for dx, dy in [(0, 0), (200, 0), (200, 200), (0, 200)]:
                page.mouse.click(x + dx, y + 100 + dy)
            page.keyboard.press("Enter")  # 200 × 200 px = 50 × 50 µm
            area = page.text_content("#measurements li:nth-child(2)") or ""
            assert re.fullmatch(r"Area [0-9,]+ µm²×", area), area
            assert float(area.split()[1].replace(",", "")) == pytest.approx(2500, rel=0.02)

            page.fill("#annotation-label", "mitosis")
            page.keyboard.press("Escape")
            page.locator("#annotation-label").blur()
            page.keyboard.press("p")
            page.mouse.click(x + 500, y + 150)
            page.keyboard.press("b")  # rectangle by dragging
            page.mouse.move(x + 300, y + 350)
            page.mouse.down()
            page.mouse.move(x + 400, y + 400, steps=5)
            page.mouse.move(x + 500, y + 450, steps=5)
            page.mouse.up()
            assert page.locator("#measurements li").count() == 4
            page.select_option("#field-area", "0.2376")
            page.keyboard.press("c")  # a high-power field around the point: it counts the point
            page.mouse.click(x + 480, y + 150)
            field = page.text_content("#measurements li:nth-child(5)") or ""
            assert re.fullmatch(r"Field 0\.238 mm², 1 counted mitosis×", field), field
            page.wait_for_timeout(300)
            _, _, saved = get(f"{slide_url(server)}/annotations")
            features = json.loads(saved)["features"]
            assert [f["properties"]["kind"] for f in features] == [
                "line",
                "polygon",
                "point",
                "rectangle",
                "field",
            ]
            assert features[2]["properties"]["label"] == "mitosis"
            assert (
                features[3]["geometry"]["type"] == "Polygon"
                and len(features[3]["geometry"]["coordinates"][0]) == 5
            )

            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            # flipped, the drawings stay on the tissue they were drawn on (mirrored on screen)
            line = page.locator("#overlay polyline").first
            before = [float(v) for v in (line.get_attribute("points") or "").replace(" ", ",").split(",")]
            page.keyboard.press("f")
            wait_until_still(page)
            after = [float(v) for v in (line.get_attribute("points") or "").replace(" ", ",").split(",")]
            assert after[0] == pytest.approx(box["width"] - before[0], abs=2)
            assert after[2] == pytest.approx(box["width"] - before[2], abs=2)
            assert after[1] == pytest.approx(before[1], abs=2)
            page.keyboard.press("f")
            wait_until_still(page)
            page.click("#archive")
            page.wait_for_selector("#save-state:has-text('Stored in the archive as DICOM')")
            page.screenshot(path=str(SCREENSHOTS / "pathology-viewer.png"))
        finally:
            browser.close()
    assert not [e for e in errors if "Content Security Policy" not in e], errors
    csp = [e for e in errors if "Content Security Policy" in e]
    assert not csp, csp


def test_alignment_is_saved_per_slide_pair(server: Running) -> None:
    left, right = server.slide.spec.series_instance_uid, server.second.spec.series_instance_uid
    url = f"{server.url}/pathology/slides/{left}/alignments/{right}"
    assert json.loads(get(url)[2]) == {"offset_um": [0.0, 0.0], "rotation_deg": 0.0, "saved": False}
    body = json.dumps({"offset_um": [120.5, -40], "rotation_deg": -5}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, body, method="PUT"), timeout=10) as response:
        assert response.status == 200
    assert json.loads(get(url)[2]) == {"offset_um": [120.5, -40.0], "rotation_deg": 355.0, "saved": True}
    bad = urllib.request.Request(url, b'{"offset_um": [1]}', method="PUT")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(bad, timeout=10)
    assert error.value.code == 400
    assert get(f"{server.url}/pathology/slides/{left}/alignments/{server.ct_series_uid}")[0] == 404
    reset = json.dumps({"offset_um": [0, 0], "rotation_deg": 0}).encode()
    urllib.request.urlopen(urllib.request.Request(url, reset, method="PUT"), timeout=10).close()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_side_by_side_views_follow_each_other(server: Running) -> None:
    """Panning the left slide moves the right one to the same place in micrometres, plus the offset."""
    from playwright.sync_api import sync_playwright

    spec, other = server.slide.spec, server.second.spec
    url = (
        f"{server.url}/pathology/static/compare.html"
        f"?study={spec.study_instance_uid}&series={spec.series_instance_uid}&compare={other.series_instance_uid}"
    )
    errors: list[str] = []

    def centres(page: Page) -> list[tuple[float, ...]]:
        return [
            tuple(float(v) for v in (page.get_attribute("body", f"data-centre{i}") or "0,0,0").split(","))
            for i in (0, 1)
        ]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 700})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            deadline = time.monotonic() + 15
            while min(int(page.get_attribute("body", f"data-tiles{s}") or 0) for s in "ab") < 2:
                assert time.monotonic() < deadline, "tiles did not draw in both panes"
                page.wait_for_timeout(100)
            box = page.locator("#viewer-a").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + 300, box["y"] + 300)
            page.mouse.down()
            page.mouse.move(box["x"] + 200, box["y"] + 250, steps=8)
            page.mouse.up()
            page.mouse.wheel(0, -400)
            page.wait_for_timeout(1200)
            (ax, ay, az), (bx, by, bz) = centres(page)
            assert (bx, by, bz) == (
                pytest.approx(ax, abs=1),
                pytest.approx(ay, abs=1),
                pytest.approx(az, rel=0.01),
            )
            assert (ax, ay) != pytest.approx((spec.width * spec.mpp / 2, spec.height * spec.mpp / 2), abs=5)

            page.keyboard.press(" ")  # unlock, move the right slide by hand, lock: that is the offset
            right = page.locator("#viewer-b").bounding_box()
            assert right is not None
            page.mouse.move(right["x"] + 300, right["y"] + 300)
            page.mouse.down()
            page.mouse.move(right["x"] + 250, right["y"] + 300, steps=5)
            page.mouse.up()
            page.wait_for_timeout(800)
            page.keyboard.press(" ")
            (ax, ay, az), (bx, by, _) = centres(page)
            offset = bx - ax
            assert offset > 5 and by == pytest.approx(ay, abs=1)
            page.mouse.move(box["x"] + 300, box["y"] + 300)
            page.mouse.down()
            page.mouse.move(box["x"] + 350, box["y"] + 320, steps=5)
            page.mouse.up()
            page.wait_for_timeout(800)
            (ax, ay, _), (bx, by, _) = centres(page)
            assert bx - ax == pytest.approx(offset, abs=1) and by == pytest.approx(ay, abs=1)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "pathology-compare.png"))
        finally:
            browser.close()
    assert not errors, errors


def test_whole_server_on_sqlite_and_postgresql(
    db_url: str, tessera_server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """The real server wiring (entry point, setup, archive listener) over both databases."""
    import requests

    slide = generate(SIZES["small"], tmp_path / "wsi")
    served = tessera_server_factory()
    base = f"{served.url}/pathology/slides/{slide.spec.series_instance_uid}"
    for path in slide.dicom_files[:2]:  # two levels first: the slide opens with what has arrived
        assert served.ctx.archive.ingest_path(path).ok
    info = requests.get(base + "/info", timeout=10).json()
    assert len(info["levels"]) == 2 and info["associated_images"] == {}
    for path in slide.dicom_files[2:]:
        assert served.ctx.archive.ingest_path(path).ok
    deadline = time.monotonic() + 5
    while (
        len(requests.get(base + "/info", timeout=10).json()["levels"]) != 4
    ):  # the listener drops the old view
        assert time.monotonic() < deadline
        time.sleep(0.05)
    study = requests.get(f"{served.url}/api/studies/{slide.spec.study_instance_uid}", timeout=10).json()
    (series,) = study["series"]
    assert series["module"]["id"] == "pathology"
    assert series["viewer_url"].startswith("/pathology/static/viewer.html?")
    tile = requests.get(base + "_files/11/3_2.jpeg", timeout=10)
    assert tile.status_code == 200 and tile.content == slide.level_tiles[0][2 * 8 + 3]
