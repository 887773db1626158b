"""Mammography: time until the 8-image hanging (current + prior) is fully drawn, cold and warm,
and tomosynthesis slices per second once cached; with same-run baselines.

One Tessera server (in this process) over the demo exams of sample_data/mammography.py, and
a headless Chromium (Debian's, through Playwright):

* ``cold``: a fresh data folder, no pyramid built yet (background pre-building is switched
  off), a fresh browser context: navigation → every viewport's tiles drawn
  (``body[data-drawn=true]``, i.e. OpenSeadragon's fully-loaded for all 8 images).
* ``warm server``: pyramids built and tiles in the server's cache, a fresh browser context
  (no browser cache): what the next reader on another workstation sees.
* ``warm browser``: the same browser context reloading (tiles from the browser cache).
* baseline: the 8 images fetched as whole rendered frames through the generic WADO-RS
  ``/frames/1/rendered`` route (decode + window + encode per request), 8 at a time — what a
  viewer without the pyramid would wait for before drawing anything.
* tomosynthesis: all slices of a stack over HTTP once warm (sequential, keep-alive), and in
  the viewer: slices painted per second while stepping one slice per animation frame.

    .venv/bin/python tests/bench/bench_mammography.py [--size 1024x1280] [--runs 3]

Targets (DESIGN.md): hanging < 1.5 s warm; tomosynthesis >= 30 slices/s once cached.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom import dcmread

from sample_data.mammography import CURRENT, RIVERA, write_mammography_demo
from server.config import load_settings
from server.serve import BackgroundServer
from tests.bench.measure import Figure, record
from tests.browser import CHROMIUM, CHROMIUM_ARGS


def start_server(data_dir: Path) -> BackgroundServer:
    settings = load_settings(
        {},
        data_dir=data_dir,
        port=0,
        dicom_enabled=False,
        extra={"mammography_prebuild": False},
    )
    return BackgroundServer.start(settings)


def time_hanging(browser: Any, url: str, reload_too: bool = False) -> tuple[float, float | None]:
    """Seconds from navigation until all viewports are drawn (and again on reload, same context)."""
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-drawn='true']", timeout=60000)
    first = time.perf_counter() - start
    second = None
    if reload_too:
        start = time.perf_counter()
        page.reload()
        page.wait_for_selector("body[data-drawn='true']", timeout=60000)
        second = time.perf_counter() - start
    context.close()
    return first, second


def baseline_rendered(server: BackgroundServer, files: list[Path]) -> float:
    """The 8 current+prior views as whole rendered frames (generic route), 8 requests at once."""
    paths = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID.endswith(".1.2") and "Synthesized" not in str(ds.SeriesDescription):
            paths.append(
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}/frames/1/rendered"
            )
    host, port = "127.0.0.1", server.port

    def fetch(path: str) -> int:
        connection = http.client.HTTPConnection(host, port)
        connection.request("GET", path, headers={"Accept": "image/jpeg"})
        body = connection.getresponse().read()
        connection.close()
        return len(body)

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(fetch, paths))
    assert len(sizes) == 8 and all(sizes)
    return time.perf_counter() - start


def tomo_http(server: BackgroundServer, sop: str, frames: int) -> float:
    """Slices per second over one keep-alive connection, every slice already rendered once."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port)
    paths = [
        f"/mammography/images/{sop}/slab?center={i}&thickness=1&mode=mip&size=1024" for i in range(frames)
    ]
    for path in paths:  # warm: build and cache
        connection.request("GET", path)
        connection.getresponse().read()
    start = time.perf_counter()
    for _ in range(3):
        for path in paths:
            connection.request("GET", path)
            connection.getresponse().read()
    elapsed = time.perf_counter() - start
    connection.close()
    return 3 * frames / elapsed


def tomo_browser(browser: Any, url: str, frames: int) -> float:
    """Slices painted per second in the viewer, stepping one slice per animation frame."""
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-drawn='true']", timeout=60000)
    page.keyboard.press("t")
    deadline = time.monotonic() + 30
    while page.evaluate("window.__mammo.slicesShown") < 2:  # both stacks of stage 2 showing
        assert time.monotonic() < deadline
        time.sleep(0.05)
    page.locator("[data-viewport='LCC']").click()
    time.sleep(1.5)  # prefetch of every slice (bitmaps) completes
    steps = 4 * frames
    result = page.evaluate(
        """async (steps) => {
            const before = window.__mammo.slicesShown;
            const start = performance.now();
            let direction = 1, position = 0, frames = steps / 4;
            for (let i = 0; i < steps; i += 1) {
              if (position + direction < 0 || position + direction >= frames) direction = -direction;
              position += direction;
              document.dispatchEvent(new KeyboardEvent("keydown", {key: direction > 0 ? "ArrowDown" : "ArrowUp", bubbles: true}));
              await new Promise((r) => requestAnimationFrame(r));
            }
            await new Promise((r) => setTimeout(r, 50));
            return {shown: window.__mammo.slicesShown - before, ms: performance.now() - start};
        }""",
        steps,
    )
    context.close()
    return float(result["shown"]) / (float(result["ms"]) / 1000.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1024x1280", help="columns x rows of each mammogram")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    columns, rows = (int(v) for v in args.size.lower().split("x"))
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="bench-mammo-"))
    files = write_mammography_demo(
        root / "files", shape=(rows, columns), tomo_shape=(rows // 2, columns // 2), slices=args.slices
    )
    study = CURRENT.uid_for(RIVERA)
    cold, warm_server, warm_browser, baselines, tomo_server, tomo_viewer = [], [], [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for run in range(args.runs):
            server = start_server(root / f"data{run}")
            try:
                for path in files:
                    assert server.ctx.archive.ingest_path(path).ok
                url = f"{server.url}/mammography/static/viewer.html?study={study}&stage=4"
                baselines.append(baseline_rendered(server, files))
                cold.append(time_hanging(browser, url)[0])
                warm, reload = time_hanging(browser, url, reload_too=True)
                warm_server.append(warm)
                warm_browser.append(reload or 0.0)
                tomo = next(p for p in files if "Tomosynthesis" in p.name and "2025" in str(p))
                tomo_server.append(
                    tomo_http(server, str(dcmread(tomo, stop_before_pixels=True).SOPInstanceUID), args.slices)
                )
                tomo_viewer.append(tomo_browser(browser, url.replace("stage=4", "stage=2"), args.slices))
            finally:
                server.stop()
        browser.close()

    def median(values: list[float]) -> float:
        return statistics.median(values)

    base = median(baselines)
    print(f"mammography hanging, 8 images of {columns}×{rows} px (12 bit), {args.runs} runs, medians:")
    print(f"  baseline: 8 whole rendered frames (WADO-RS /rendered)  {base * 1000:7.0f} ms")
    for name, values in (
        ("cold (pyramids built on first view)", cold),
        ("warm server, empty browser cache", warm_server),
        ("warm server and browser cache", warm_browser),
    ):
        print(f"  {name:<42} {median(values) * 1000:7.0f} ms   ({median(values) / base:4.2f}× baseline)")
        record(
            Figure(
                "mammography",
                f"hanging of 8 images {columns}×{rows}, {name}",
                "SQLite, 1 proc",
                "ms",
                median(values) * 1000,
                "8 whole WADO-RS /rendered frames",
                base * 1000,
                higher=False,
            )
        )
    print(f"tomosynthesis ({args.slices} slices of {columns // 2}×{rows // 2}), once cached:")
    print(f"  HTTP, sequential on one connection       {median(tomo_server):7.0f} slices/s")
    print(f"  viewer, one step per animation frame     {median(tomo_viewer):7.0f} slices/s")


if __name__ == "__main__":
    main()
