"""The cardiology viewer in a real headless Chromium: playback rate, lock-step grid, ECG, calipers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from sample_data.cardiology import echo_study, stress_echo_study, twelve_lead_ecg
from sample_data.radiology import write
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import make_settings

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).parent / "artifacts"

# Samples the displayed frame on every animation frame for `ms`, unwrapping the loop, and
# returns displayed frames per second of real time (per cell) and the largest phase spread.
SAMPLE_JS = """
async (ms) => {
  const samples = [];
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    await new Promise((r) => requestAnimationFrame(r));
    samples.push([performance.now(), window.cardiology.state()]);
  }
  const cells = samples[0][1].cells.length;
  const rates = [];
  for (let c = 0; c < cells; c++) {
    let advanced = 0;
    for (let i = 1; i < samples.length; i++) {
      const n = samples[i][1].cells[c].frames;
      const d = samples[i][1].cells[c].frame - samples[i - 1][1].cells[c].frame;
      advanced += d >= 0 ? d : d + n;
    }
    rates.push((1000 * advanced) / (samples[samples.length - 1][0] - samples[0][0]));
  }
  let spread = 0;
  for (const [, state] of samples) {
    const phases = state.cells.map((c) => c.phase).filter((p) => p !== null);
    spread = Math.max(spread, Math.max(...phases) - Math.min(...phases));
  }
  let maxGap = 0;
  for (let i = 1; i < samples.length; i++) maxGap = Math.max(maxGap, samples[i][0] - samples[i - 1][0]);
  return { rates, spread, samples: samples.length, maxGap };
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """One server for the module, loaded once; videos are not made on ingest (the viewer plays
    frames), so the browser gets the CPU."""
    out = tmp_path_factory.mktemp("cardio-browser")
    settings = make_settings(out / "data", extra={"cardiology_video_on_ingest": False})
    running = BackgroundServer.start(settings)
    for ds in [*echo_study(), *stress_echo_study(rows=120, columns=160), twelve_lead_ecg()]:
        assert running.ctx.archive.ingest_path(write(ds, out / "in")).ok
    yield running
    running.stop()


@pytest.fixture(scope="module")
def files(server: BackgroundServer) -> dict[str, list[Path]]:
    root = server.settings.data_dir.parent / "in" / "TES-0101"
    return {
        "echo": sorted((root / "ACC-2001").rglob("*.dcm")),
        "stress": sorted((root / "ACC-2002").rglob("*.dcm")),
        "ecg": sorted((root / "ACC-2003").rglob("*.dcm")),
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.errors = errors
    return page


def _sample(page: Any, ms: int = 1000) -> dict[str, Any]:
    """Playback samples from a moment the browser was not starved of CPU (no animation frame
    late by more than 150 ms: other work on this shared machine can stall Chromium)."""
    for _ in range(4):
        result: dict[str, Any] = page.evaluate(SAMPLE_JS, ms)
        if result["maxGap"] <= 150:
            return result
    raise AssertionError(f"Chromium was starved of CPU in every sample (last gap {result['maxGap']:.0f} ms)")


def _viewer_url(server: BackgroundServer, path: Path) -> str:
    ds = dcmread(path, stop_before_pixels=True)
    return f"{server.url}/cardiology/static/viewer.html?study={ds.StudyInstanceUID}&series={ds.SeriesInstanceUID}"


def _wait_loaded(page: Any, cells: int) -> None:
    try:
        page.wait_for_function(
            f"""() => {{
              const s = window.cardiology && window.cardiology.state();
              return s && s.cells.length === {cells} && s.cells.every((c) => c.frames > 0 && c.loaded === c.frames);
            }}""",
            timeout=30000,
        )
    except Exception as exc:  # say what the page was doing
        state = page.evaluate("window.cardiology && window.cardiology.state()")
        status = page.locator("#status").text_content()
        raise AssertionError(f"loops not loaded: {state!r}; status {status!r}; errors {page.errors}") from exc


def test_loop_plays_at_its_true_frame_rate(
    browser: Any, server: BackgroundServer, files: dict[str, list[Path]]
) -> None:
    page = _open(browser, _viewer_url(server, files["echo"][0]))
    page.click("[data-layout='1x1']")
    _wait_loaded(page, 1)
    state = page.evaluate("window.cardiology.state()")
    assert state["playing"] and state["cells"][0]["fps"] == 50
    assert state["firstFrameMs"] is not None
    result = _sample(page)
    assert result["rates"][0] == pytest.approx(50, rel=0.15)  # 20 ms per frame, as FrameTime says
    page.select_option("#speed", "0.5")
    half = _sample(page)
    assert half["rates"][0] == pytest.approx(25, rel=0.15)
    # pause and step: exactly one frame per click
    page.click("#play")
    before = page.evaluate("window.cardiology.state().cells[0].frame")
    page.click("#forward")
    page.wait_for_function(
        f"() => window.cardiology.state().cells[0].frame === {(before + 1) % 48}", timeout=5000
    )
    page.screenshot(path=str(ARTIFACTS / "cardiology_loop_1x1.png"))
    assert page.errors == []
    page.close()


def test_stress_echo_grid_plays_in_lock_step(
    browser: Any, server: BackgroundServer, files: dict[str, list[Path]]
) -> None:
    page = _open(browser, _viewer_url(server, files["stress"][0]))
    _wait_loaded(page, 16)
    assert page.evaluate("window.cardiology.state().layout") == "stress"
    titles = page.locator(".cell-title").all_text_contents()
    assert titles[:4] == ["REST · PLAX", "REST · PSAX", "REST · A4C", "REST · A2C"]
    assert titles[-1] == "RECOVERY · A2C"
    result = _sample(page)
    # every loop at the same point of its own R-R interval, within one frame of the shortest loop
    assert result["spread"] <= 1 / 22 + 0.01
    assert min(result["rates"]) > 10  # all of them moving
    page.screenshot(path=str(ARTIFACTS / "cardiology_stress_grid.png"))
    assert page.errors == []
    page.close()


def test_caliper_drawn_in_the_browser_is_calibrated_and_saved(
    browser: Any, server: BackgroundServer, files: dict[str, list[Path]]
) -> None:
    page = _open(browser, _viewer_url(server, files["echo"][0]))
    page.click("[data-layout='1x1']")
    _wait_loaded(page, 1)
    page.click("#play")  # pause
    page.click("[data-tool='distance']")
    box = page.locator("canvas.image").bounding_box()
    scale = min(box["width"] / 400, box["height"] / 300)
    left = box["x"] + (box["width"] - 400 * scale) / 2
    top = box["y"] + (box["height"] - 300 * scale) / 2
    page.mouse.move(left + 100 * scale, top + 150 * scale)
    page.mouse.down()
    page.mouse.move(left + 300 * scale, top + 150 * scale, steps=5)
    page.mouse.up()
    items = page.locator("#measurements li").all_text_contents()
    assert len(items) == 1 and "80.0 mm" in items[0]  # 200 px x 0.4 mm
    page.click("#save")
    page.wait_for_function("() => document.getElementById('save-state').textContent.startsWith('saved')")
    study = dcmread(files["echo"][0], stop_before_pixels=True).StudyInstanceUID
    saved = page.evaluate(f"fetch('/cardiology/studies/{study}/measurements').then((r) => r.json())")
    assert saved["measurements"][0]["value"] == pytest.approx(80.0, abs=0.5)
    page.screenshot(path=str(ARTIFACTS / "cardiology_caliper.png"))
    page.close()


def test_twelve_lead_ecg_page(browser: Any, server: BackgroundServer, files: dict[str, list[Path]]) -> None:
    page = _open(browser, _viewer_url(server, files["ecg"][0]))  # the viewer hands waveforms to ecg.html
    page.wait_for_selector("canvas.ecg-paper[data-drawn='true']", timeout=15000)
    assert "ecg.html" in page.url
    assert page.locator("#ecg-info").text_content() == "12 leads · 500 Hz · 10.0 s"
    width = page.evaluate("document.getElementById('ecg').getBoundingClientRect().width")
    assert width == pytest.approx((5 + 250 + 2) * 4, abs=1)  # 4 px/mm: pulse + 10 s at 25 mm/s + margin
    page.screenshot(path=str(ARTIFACTS / "cardiology_ecg.png"), full_page=True)
    assert page.errors == []
    page.close()


def test_viewer_maths_equals_the_servers(browser: Any, server: BackgroundServer) -> None:
    """measure.js gives the live values; they must be the ones the server saves."""
    import math

    import numpy as np

    from modules.cardiology.cine import caliper_distance, ultrasound_regions
    from modules.cardiology.lv_volume import lv_volumes
    from sample_data.cardiology import echo_loop

    def contour(half: float, length: float, tilt: float) -> list[list[float]]:
        points = [
            (-half * math.cos(t), -length * math.sin(t) * (1 + 0.1 * math.sin(3 * t)))
            for t in np.linspace(0, math.pi, 37)
        ]
        return [
            [x * math.cos(tilt) - y * math.sin(tilt), x * math.sin(tilt) + y * math.cos(tilt)]
            for x, y in points
        ]

    contours = {
        "A4C-ED": contour(25, 84, 0.1),
        "A2C-ED": contour(23, 82, -0.2),
        "A4C-ES": contour(17, 74, 0.05),
        "A2C-ES": contour(16, 73, 0.0),
    }
    page = _open(browser, f"{server.url}/cardiology/static/ecg.html")
    js = page.evaluate("async (c) => (await import('/cardiology/static/measure.js')).lvVolumes(c)", contours)
    py = lv_volumes(contours)
    assert js["method"] == py.method
    assert (js["edv_ml"], js["esv_ml"], js["ef_percent"]) == pytest.approx(
        (py.edv_ml, py.esv_ml, py.ef_percent), rel=1e-9
    )
    regions = [r.as_json() for r in ultrasound_regions(echo_loop("A4C", n_frames=1, rows=60, columns=80))]
    js_distance = page.evaluate(
        "async (r) => (await import('/cardiology/static/measure.js')).distance(r, [3.5, 7.25], [61.5, 40])",
        regions,
    )
    py_distance = caliper_distance(
        ultrasound_regions(echo_loop("A4C", n_frames=1, rows=60, columns=80)), (3.5, 7.25), (61.5, 40)
    )
    assert (js_distance["value"], js_distance["unit"]) == (pytest.approx(py_distance.value), py_distance.unit)
    page.close()


def _trace(page: Any, sop: str, points: list[tuple[float, float]]) -> None:
    """Click an LV contour (image pixels) on a loop's canvas, double-click the last point."""
    box = page.locator(f".cell[data-sop='{sop}'] canvas.image").bounding_box()
    scale = min(box["width"] / 400, box["height"] / 300)
    left = box["x"] + (box["width"] - 400 * scale) / 2
    top = box["y"] + (box["height"] - 300 * scale) / 2
    screen = [(left + x * scale, top + y * scale) for x, y in points]
    for x, y in screen[:-1]:
        page.mouse.click(x, y)
    page.mouse.dblclick(*screen[-1])


def test_ef_traced_in_the_viewer(
    browser: Any, server: BackgroundServer, files: dict[str, list[Path]]
) -> None:
    """Biplane Simpson from contours clicked on the phantom at ED and ES, in lock-step A4C + A2C."""
    import math

    from sample_data.cardiology import LVPhantom

    phantom = LVPhantom()

    def contour(half_cm: float, length_cm: float) -> list[tuple[float, float]]:
        base = (1.0 + length_cm) / 0.04
        return [
            (
                200 - half_cm / 0.04 * math.cos(math.pi * k / 24),
                base - length_cm / 0.04 * math.sin(math.pi * k / 24),
            )
            for k in range(25)
        ]

    a4c, a2c = (str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files["echo"][:2])
    page = _open(browser, _viewer_url(server, files["echo"][0]))
    _wait_loaded(page, 3)
    page.click("#play")  # pause
    page.click(f".cell[data-sop='{a4c}'] .cell-title")

    def frame_of(sop: str) -> int:
        return int(page.evaluate(f"window.cardiology.state().cells.find((c) => c.sop === '{sop}').frame"))

    def step_to(frame: int) -> None:
        for _ in range(50):
            before = frame_of(a4c)
            if before == frame:
                break
            page.click("#forward")
            page.wait_for_function(  # the next animation frame has drawn the step
                f"() => window.cardiology.state().cells.find((c) => c.sop === '{a4c}').frame !== {before}"
            )
        page.wait_for_function(
            f"() => window.cardiology.state().cells.filter((c) => c.frame === {frame}).length >= 2",
            timeout=5000,
        )

    step_to(3)  # the first frame of the cardiac cycle: the R wave, end-diastole
    assert frame_of(a4c) == frame_of(a2c) == 3
    page.click("[data-tool='lv']")
    for label, sop, half in (("A4C-ED", a4c, phantom.a_ed_cm), ("A2C-ED", a2c, phantom.b_ed_cm)):
        page.select_option("#lv-label", label)
        _trace(page, sop, contour(half, phantom.length_ed_cm))
    step_to(17)  # 280 ms later: end-systole
    assert frame_of(a4c) == frame_of(a2c) == 17
    for label, sop, half in (("A4C-ES", a4c, phantom.a_es_cm), ("A2C-ES", a2c, phantom.b_es_cm)):
        page.select_option("#lv-label", label)
        _trace(page, sop, contour(half, phantom.length_es_cm))
    page.wait_for_function("() => document.getElementById('ef').textContent.includes('biplane')")
    text = page.locator("#ef").text_content()
    shown_ef = float(text.split("EF ")[1].split(" %")[0])
    assert abs(shown_ef - phantom.ef_percent) < 2.0
    page.click("#save")
    page.wait_for_function("() => document.getElementById('save-state').textContent.includes('server EF')")
    study = dcmread(files["echo"][0], stop_before_pixels=True).StudyInstanceUID
    saved = page.evaluate(f"fetch('/cardiology/studies/{study}/measurements').then((r) => r.json())")
    assert saved["lv"]["method"] == "biplane"
    assert saved["lv"]["ef_percent"] == pytest.approx(shown_ef, abs=0.06)
    assert [m["frame"] for m in saved["measurements"] if m["kind"] == "lv"] == [4, 4, 18, 18]
    page.screenshot(path=str(ARTIFACTS / "cardiology_ef_traced.png"))
    assert page.errors == []
    page.close()


def test_the_preloaded_index_and_frame_1_are_asked_for_once(
    browser: Any, server: BackgroundServer, files: dict[str, list[Path]]
) -> None:
    """The page's Link preloads are what boot.js / viewer.js use: each of the study index and
    frame 1 is one request, whichever script runs first, and frame 1 reaches the canvas."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url.split("/cardiology/", 1)[-1]))
    page.goto(_viewer_url(server, files["echo"][0]))
    page.wait_for_function("() => window.cardiology && window.cardiology.state().firstFrameMs !== null")
    index = [url for url in asked if "/loops?series=" in url]
    frame1 = [url for url in asked if url.endswith("/first-frame.jpg")]
    assert len(index) == 1 and len(frame1) == 1, asked
    marks = page.evaluate("performance.getEntriesByType('mark').map((m) => m.name)")
    assert "cardiology:frame1-drawn" in marks and "cardiology:modules" in marks
    page.close()
