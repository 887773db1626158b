"""Optical paths and focal planes: each (path, plane) of a slide is its own Deep Zoom image.

A small 3-plane, 2-path slide is written both TILED_FULL (frames ordered tile, plane,
path) and TILED_SPARSE (each frame naming its position, Z offset and path, shuffled);
every passthrough tile of every view must be the very frame stored for it, the default
URLs keep meaning "first path, first plane", bad selections are 404 problem+json, and
the viewer steps through the planes with Page Up / Page Down and switches paths.
"""

from __future__ import annotations

import asyncio
import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from modules.pathology.dicom_source import NoSuchView
from modules.pathology.slides import SlideLibrary
from sample_data.wsi import STACK_SPEC, GeneratedStack, write_stack
from server.archive.archive import Archive
from server.config import load_settings
from server.context import ServerContext
from server.modules import ModuleRegistry
from server.tiles import DeepZoom
from server.web.app import make_app
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_pathology_http import _free_port, get, wait_for_tiles

SCREENSHOTS = Path(__file__).parent / "artifacts"
LAYOUTS = ("full", "sparse")


@dataclass
class Stacks:
    url: str
    stacks: dict[str, GeneratedStack]
    library: SlideLibrary


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    generated = {
        layout: write_stack(
            replace(STACK_SPEC, series_number=number), tmp_path_factory.mktemp(layout), 3, layout
        )
        for number, layout in enumerate(LAYOUTS, start=1)
    }
    archive = Archive(load_settings({}, data_dir=tmp_path_factory.mktemp("archive")))
    for stack in generated.values():
        for path in stack.dicom_files:
            assert archive.ingest_path(path).ok
    ctx = ServerContext(archive.settings, archive, ThreadPoolExecutor(4), ModuleRegistry.discover())
    assert ctx.registry is not None
    ctx.registry.setup(ctx)
    module = ctx.registry.get("pathology")
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
    yield Stacks(f"http://127.0.0.1:{port}", generated, module.library)  # type: ignore[union-attr]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    ctx.executor.shutdown()
    archive.close()


def _uid(stack: GeneratedStack) -> str:
    return str(stack.spec.series_instance_uid)


def _passthrough_tiles(dz: DeepZoom) -> Iterator[tuple[int, int, int, int, int]]:
    """(DZI level, column, row, stored level, stored index) of every tile served as a stored frame."""
    for level in range(dz.level_count):
        columns, rows = dz.level_tiles[level]
        for row in range(rows):
            for column in range(columns):
                plan = dz.plan(level, column, row)
                if plan.passthrough is not None:
                    stored_columns = dz.source.levels[plan.source_level].columns
                    yield level, column, row, plan.source_level, row * stored_columns + column


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_view_passes_its_own_stored_frames_through(stacks: Stacks, layout: str) -> None:
    stack = stacks.stacks[layout]
    slide = stacks.library.open(_uid(stack))
    assert slide.source.planes == {"1": 3, "2": 3}
    assert slide.source.views()[0] == ("1", 0)
    seen: set[bytes] = set()
    for path_index, path in enumerate(stack.optical_paths):
        for plane in range(stack.focal_planes):
            dz = slide.view(path, plane)
            assert len(dz.source.levels) == len(stack.tiles)
            checked = 0
            for level, column, row, stored_level, index in _passthrough_tiles(dz):
                expected = stack.tiles[stored_level][(path_index, plane)][index]
                assert dz.read_tile(level, column, row).data == expected, (path, plane, level, column, row)
                checked += 1
            assert checked >= 12  # every full-resolution tile at least
            seen.add(dz.read_tile(dz.level_count - 1, 1, 1).data)
    assert len(seen) == 6  # six views, six different pictures
    # no selection, or the first path's first plane named explicitly: the historical pyramid
    assert slide.view(None, 0) is slide.deepzoom is slide.view("1", 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_views_over_http(stacks: Stacks, layout: str) -> None:
    stack = stacks.stacks[layout]
    base = f"{stacks.url}/pathology/slides/{_uid(stack)}"
    status, _, body = get(f"{base}/info")
    assert status == 200
    info = json.loads(body)
    assert info["focal_planes"] == 3 and [p["identifier"] for p in info["optical_paths"]] == ["1", "2"]
    views = info["views"]
    assert [(v["optical_path"], v["focal_plane"]) for v in views] == [
        (p, z) for p in ("1", "2") for z in range(3)
    ]
    assert views[0]["dzi"] == info["dzi"]["url"]  # the default URL is the first path's first plane
    versions = set()
    top_tiles = {}
    for view in views:
        status, headers, descriptor = get(f"{stacks.url}{view['dzi']}")
        assert status == 200, view
        assert ET.fromstring(descriptor).get("TileSize") == "256"
        query = urlsplit(view["dzi"]).query
        versions.add(parse_qs(query)["v"][0])
        # as OpenSeadragon asks: the descriptor's query string on the tile URL
        tile_url = f"{base}_files/10/2_1.jpeg?{query}"
        status, headers, tile = get(tile_url)
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert "immutable" in headers["Cache-Control"]
        p, z = stack.optical_paths.index(view["optical_path"]), view["focal_plane"]
        assert tile == stack.tiles[0][(p, z)][1 * 4 + 2], view
        top_tiles[(p, z)] = tile
    assert len(versions) == 6  # every view has its own ?v=, so immutable tiles never collide
    # the same view by selection alone (no ?v=): same bytes, revalidated
    status, headers, tile = get(f"{base}_files/10/2_1.jpeg?path=2&z=1")
    assert status == 200 and tile == top_tiles[(1, 1)] and headers["Cache-Control"] == "no-cache"
    status, _, tile = get(f"{base}_files/10/2_1.jpeg")
    assert tile == top_tiles[(0, 0)]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("path=3", 404),
        ("path=1&z=3", 404),
        ("z=7", 404),
        ("path=2&z=99", 404),
        ("z=-1", 400),
        ("z=a", 400),
        ("path=" + "x" * 80, 400),
    ],
)
def test_bad_selections_are_problems(stacks: Stacks, query: str, status: int) -> None:
    base = f"{stacks.url}/pathology/slides/{_uid(stacks.stacks['full'])}"
    for url in (f"{base}.dzi?{query}", f"{base}_files/10/0_0.jpeg?{query}"):
        got, headers, body = get(url)
        assert got == status, url
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(body)["status"] == status
    assert get(f"{base}_files/10/0_0.jpeg")[0] == 200  # and the server keeps serving


def test_a_missing_view_raises_in_the_library(stacks: Stacks) -> None:
    slide = stacks.library.open(_uid(stacks.stacks["sparse"]))
    with pytest.raises(NoSuchView):
        slide.view("1", 3)
    with pytest.raises(NoSuchView):
        slide.view("9", 0)


def test_single_plane_slides_list_one_view(tmp_path: Path) -> None:
    from sample_data.wsi import SIZES, generate

    generated = generate(SIZES["small"], tmp_path / "wsi")
    archive = Archive(load_settings({}, data_dir=tmp_path / "data"))
    for path in generated.dicom_files:
        assert archive.ingest_path(path).ok
    slide = SlideLibrary(archive).open(str(generated.spec.series_instance_uid))
    info = slide.info()
    assert [(v["optical_path"], v["focal_plane"]) for v in info["views"]] == [("1", 0)]
    assert info["views"][0]["dzi"] == info["dzi"]["url"]
    archive.close()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_viewer_switches_focal_planes_and_optical_paths(stacks: Stacks) -> None:
    """Page Up / Page Down step through the planes, the select switches the path; the view stays put."""
    from playwright.sync_api import sync_playwright

    spec = stacks.stacks["full"].spec
    url = (
        f"{stacks.url}/pathology/static/viewer.html"
        f"?study={spec.study_instance_uid}&series={spec.series_instance_uid}"
    )
    errors: list[str] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("request", lambda r: requested.append(r.url) if "_files/" in r.url else None)
            page.goto(url)
            wait_for_tiles(page, 4)
            assert page.get_attribute("body", "data-focal-plane") == "0"
            assert page.text_content("#focal-plane") == "z 1/3"
            assert page.is_visible("#optical-path")
            assert page.locator("#optical-path option").count() == 2
            assert not any("z=" in u for u in requested)  # the default view: the historical URLs
            page.keyboard.press("4")  # 20×: into the full-resolution tiles
            page.wait_for_timeout(800)
            zoom = page.evaluate("() => window.tesseraPathology.viewer.viewport.getZoom()")
            SCREENSHOTS.mkdir(exist_ok=True)
            shots = []
            for plane in (1, 2):
                drawn = int(page.get_attribute("body", "data-tiles-drawn") or 0)
                page.keyboard.press("PageUp")
                wait_for_tiles(page, drawn + 2)
                page.wait_for_timeout(300)
                assert page.get_attribute("body", "data-focal-plane") == str(plane)
                assert page.text_content("#focal-plane") == f"z {plane + 1}/3"
                assert any(f"path=1&z={plane}&v=" in u for u in requested), requested[-3:]
                shots.append(page.locator("#viewer").screenshot())
            page.keyboard.press("PageUp")  # already at the top plane: nothing happens
            assert page.get_attribute("body", "data-focal-plane") == "2"
            # switching planes keeps the viewport where the pathologist was
            assert page.evaluate("() => window.tesseraPathology.viewer.viewport.getZoom()") == pytest.approx(
                zoom, rel=1e-6
            )
            drawn = int(page.get_attribute("body", "data-tiles-drawn") or 0)
            page.select_option("#optical-path", "2")
            wait_for_tiles(page, drawn + 2)
            page.wait_for_timeout(300)
            assert page.get_attribute("body", "data-optical-path") == "2"
            assert page.get_attribute("body", "data-focal-plane") == "2"  # the plane is kept
            assert any("path=2&z=2&v=" in u for u in requested)
            page.locator("body").click(position={"x": 5, "y": 5})  # focus off the select
            drawn = int(page.get_attribute("body", "data-tiles-drawn") or 0)
            page.keyboard.press("PageDown")
            wait_for_tiles(page, drawn + 2)
            assert page.get_attribute("body", "data-focal-plane") == "1"
            page.wait_for_timeout(300)
            page.screenshot(path=str(SCREENSHOTS / "pathology-focal-planes.png"))
            assert shots[0] != shots[1]  # the in-focus middle plane and the blurred top one differ
        finally:
            browser.close()
    assert not errors, errors


@pytest.mark.parametrize("planes", [1, 3])
def test_a_focus_map_is_not_a_z_stack(planes: int, tmp_path: Path) -> None:
    """TILED_SPARSE frames whose Z differs a little on every tile (a focus map) rank per position."""
    spec = replace(STACK_SPEC, series_number=7 + planes)
    stack = write_stack(spec, tmp_path / "stack", planes, "sparse", focus_map_um=1.0)
    archive = Archive(load_settings({}, data_dir=tmp_path / "data"))
    for file in stack.dicom_files:
        assert archive.ingest_path(file).ok
    slide = SlideLibrary(archive).open(_uid(stack))
    assert slide.source.planes == {"1": planes, "2": planes}
    for path_index, optical_path in enumerate(stack.optical_paths):
        for plane in range(planes):
            dz = slide.view(optical_path, plane)
            for level, column, row, stored_level, index in _passthrough_tiles(dz):
                expected = stack.tiles[stored_level][(path_index, plane)][index]
                assert dz.read_tile(level, column, row).data == expected, (optical_path, plane, level)
    archive.close()
