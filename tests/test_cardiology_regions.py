"""Calibration per frame, measurements on grouped loops, Doppler velocity calipers, curve-data ECG."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from modules.cardiology.cine import curve_ecg, frame_regions, loop_ecg, point_value, ultrasound_regions
from modules.cardiology.video import read_mp4_frames
from sample_data.cardiology import (
    MITRAL_INFLOW,
    doppler_image,
    ecg_lead_ii,
    echo_image_sequence,
    echo_loop,
    legacy_curve_loop,
)
from sample_data.radiology import write
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import make_settings

ARTIFACTS = Path(__file__).parent / "artifacts"
DEEP_SERIES_NUMBER = 7


def deep_stills() -> list[Dataset]:
    """One acquisition of 8 single-frame images, 0.08 cm/px for 4 images, then 0.1 cm/px."""
    return echo_image_sequence(
        series_number=DEEP_SERIES_NUMBER, acquisitions=((3, "102000"),), n_frames=8, rows=120, columns=160,
        depth_change_at=4,
    )  # fmt: skip


# -- curve-data ECG ------------------------------------------------------------------------------


def test_curve_data_ecg_reads_like_the_waveform_ecg() -> None:
    legacy = legacy_curve_loop()
    assert "WaveformSequence" not in legacy
    trace = loop_ecg(legacy)
    assert trace is not None and trace.source == "CurveData 5000" and trace.unit == "mV"
    assert trace.sampling_hz == pytest.approx(500.0)
    expected = ecg_lead_ii(40 * 20.0, 800.0)
    assert trace.samples_mv.size == expected.size
    assert np.allclose(trace.samples_mv, expected, atol=1e-5)
    assert trace.r_waves_ms == pytest.approx((60.0,), abs=2.0)  # the phantom's R wave
    # a loop with both keeps the waveform sequence's ECG
    both = echo_loop("A4C", n_frames=4, rows=60, columns=80)
    both.update(legacy.group_dataset(0x5000))
    assert loop_ecg(both) is not None and loop_ecg(both).source == "WaveformSequence"  # type: ignore[union-attr]


def _curve_2d(group: int, times_s: np.ndarray, values: np.ndarray, units: list[str]) -> Dataset:
    """A 2-D curve listing (time, value) pairs as doubles: no descriptor, both axes stored."""
    ds = Dataset()
    data = np.column_stack([times_s, values]).astype("<f8")
    for element, vr, value in (
        (0x0005, "US", 2),
        (0x0010, "US", len(times_s)),
        (0x0020, "CS", "ECG"),
        (0x0030, "SH", units),
        (0x0103, "US", 3),
        (0x3000, "OB", data.tobytes()),
    ):
        ds.add_new((group << 16) | element, vr, value)
    return ds


def test_two_dimensional_curve_in_the_last_group_and_unreadable_curves() -> None:
    times = np.arange(0, 1.0, 0.004)  # 250 Hz, seconds
    values = np.sin(2 * np.pi * times)
    ds = _curve_2d(0x501E, times + 0.1, values, ["SEC", "MILV"])
    trace = curve_ecg(ds)
    assert trace is not None and trace.source == "CurveData 501E"
    assert trace.sampling_hz == pytest.approx(250.0)
    assert trace.offset_ms == pytest.approx(100.0)
    assert trace.samples_mv.max() == pytest.approx(1.0, abs=1e-3)
    # no time axis: not placed under the loop; an ECG curve in 5000 with no data: skipped
    assert curve_ecg(_curve_2d(0x5000, times, values, ["NONE", "MILV"])) is None
    empty = Dataset()
    empty.add_new(0x50000020, "CS", "ECG")
    assert curve_ecg(empty) is None
    # a curve that is not an ECG is not one
    other = _curve_2d(0x5002, times, values, ["SEC", "MILV"])
    other[0x50020020].value = "TAC"
    assert curve_ecg(other) is None
    # raw values without a voltage unit keep their scale and say so
    raw = curve_ecg(_curve_2d(0x5004, times, values * 800, ["SEC", "NONE"]))
    assert (
        raw is not None and raw.unit == "arbitrary" and raw.samples_mv.max() == pytest.approx(800, rel=1e-3)
    )


# -- regions per frame ---------------------------------------------------------------------------


def test_multiframe_per_frame_functional_groups_give_each_frame_its_regions() -> None:
    loop = echo_loop("A4C", n_frames=4, rows=60, columns=80, cm_per_px=0.05)
    assert [r[0].delta_y for r in frame_regions(loop, 4)] == [0.05] * 4
    per_frame = []
    for n in range(4):
        region = copy.deepcopy(loop.SequenceOfUltrasoundRegions[0])
        region.PhysicalDeltaX = region.PhysicalDeltaY = 0.05 if n < 2 else 0.07
        item, macro = Dataset(), Dataset()
        macro.SequenceOfUltrasoundRegions = Sequence([region])
        item.add_new(0x00189412, "SQ", Sequence([macro]))  # a functional group macro holding them
        per_frame.append(item)
    loop.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    assert [r[0].delta_y for r in frame_regions(loop, 4)] == [0.05, 0.05, 0.07, 0.07]
    # a per-frame sequence of the wrong length is not trusted: the image's regions hold
    assert [r[0].delta_y for r in frame_regions(loop, 5)] == [0.05] * 5


# -- Doppler --------------------------------------------------------------------------------------


def envelope_peak(pixels: np.ndarray, around_column: int, window: int = 30) -> tuple[float, int]:
    """(column, row) of a wave's peak found on the image as a reader would: the highest bright row
    of the spectrum near `around_column`, at the middle of the columns that reach it."""
    inflow = MITRAL_INFLOW
    spectrum = pixels[inflow.spectral_top : inflow.baseline_row, :] > 100
    columns = range(max(0, around_column - window), min(pixels.shape[1], around_column + window))
    tops = {c: int(np.flatnonzero(spectrum[:, c])[0]) for c in columns if spectrum[:, c].any()}
    best = min(tops.values())
    at = [c for c, top in tops.items() if top == best]
    return (at[0] + at[-1]) / 2, best + inflow.spectral_top


def test_doppler_velocities_and_times_from_the_image_within_2_percent() -> None:
    ds = doppler_image()
    regions = ultrasound_regions(ds)
    assert [r.spatial_format for r in regions] == ["2D", "spectral"]
    pixels = ds.pixel_array
    inflow = MITRAL_INFLOW
    for peaks, known in (
        (inflow.e_peaks_ms(), inflow.e_peak_cm_s),
        (inflow.a_peaks_ms(), inflow.a_peak_cm_s),
    ):
        for peak_ms in peaks[1:]:  # the first A wave is cut by the sweep's left edge
            column, row = envelope_peak(pixels, round(peak_ms / inflow.sweep_ms_per_px))
            reading = point_value(regions, (column, row))
            assert reading.unit == "cm/s" and reading.value == pytest.approx(known, rel=0.02)
            assert 1000 * reading.extra["time_s"] == pytest.approx(peak_ms, abs=0.02 * 240)
    # the 2D part has no velocity; a velocity below the baseline is negative
    assert not point_value(regions, (320, 60)).calibrated
    assert point_value(regions, (10, inflow.baseline_row + 10)).value == pytest.approx(-5.0)


# -- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    out = tmp_path_factory.mktemp("cardio-regions")
    settings = make_settings(out / "data", extra={"cardiology_video_on_ingest": False})
    running = BackgroundServer.start(settings)
    for ds in [*deep_stills(), doppler_image(), legacy_curve_loop()]:
        assert running.ctx.archive.ingest_path(write(ds, out / "in")).ok
    yield running
    running.stop()


@pytest.fixture(scope="module")
def uids() -> dict[str, str]:
    still = deep_stills()[0]
    return {
        "study": str(still.StudyInstanceUID),
        "deep": f"group/{still.SeriesInstanceUID}/1",
        "deep_series": str(still.SeriesInstanceUID),
        "doppler": str(doppler_image().SOPInstanceUID),
        "doppler_series": str(doppler_image().SeriesInstanceUID),
        "legacy": str(legacy_curve_loop().SOPInstanceUID),
        "legacy_series": str(legacy_curve_loop().SeriesInstanceUID),
    }


def _put(server: BackgroundServer, study: str, measurements: list[dict[str, Any]]) -> requests.Response:
    return requests.put(
        f"{server.url}/cardiology/studies/{study}/measurements",
        json={"measurements": measurements},
        timeout=30,
    )


def test_grouped_loop_json_gives_regions_per_frame(server: BackgroundServer, uids: dict[str, str]) -> None:
    info = requests.get(f"{server.url}/cardiology/loops/{uids['deep']}", timeout=10).json()
    assert info["number_of_frames"] == 8
    assert info["frame_region_set"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [s[0]["delta"] for s in info["region_sets"]] == [[0.08, 0.08], [0.1, 0.1]]
    assert info["regions"] == info["region_sets"][0]
    single = requests.get(f"{server.url}/cardiology/loops/{uids['legacy']}", timeout=10).json()
    assert single["region_sets"] is None and single["frame_region_set"] is None  # one set for all


def test_measurements_on_a_grouped_loop_use_and_cite_each_frame_image(
    server: BackgroundServer, uids: dict[str, str]
) -> None:
    members = requests.get(f"{server.url}/cardiology/loops/{uids['deep']}", timeout=10).json()["group"][
        "members"
    ]
    line = [[10, 20], [110, 20]]  # 100 px
    body = [
        {"id": "1", "kind": "distance", "sop_instance_uid": uids["deep"], "frame": 2, "points": line},
        {"id": "2", "kind": "distance", "sop_instance_uid": uids["deep"], "frame": 6, "points": line},
        {"id": "3", "kind": "area", "sop_instance_uid": uids["deep"], "frame": 7, "points": [[0, 0], [10, 0], [10, 10]]},
    ]  # fmt: skip
    response = _put(server, uids["study"], body)
    assert response.status_code == 200, response.text
    saved = response.json()["measurements"]
    assert [(m["value"], m["unit"]) for m in saved] == [
        (80.0, "mm"),
        (100.0, "mm"),
        (pytest.approx(0.5), "cm2"),
    ]
    assert [m["referenced_sop_instance_uid"] for m in saved] == [members[1], members[5], members[6]]
    assert all(m["referenced_frame"] is None for m in saved)  # single-frame images: no frame number

    outside = _put(server, uids["study"], [{**body[0], "frame": 9}])
    assert outside.status_code == 422 and "frame 9 is outside 1..8" in outside.json()["detail"]
    assert _put(server, uids["study"], body).status_code == 200

    stored = requests.post(f"{server.url}/cardiology/studies/{uids['study']}/measurements/sr", timeout=60)
    assert stored.status_code == 201, stored.text
    instance = server.ctx.archive.instance_by_uid(stored.json()["sop_instance_uid"])
    assert instance is not None
    sr = dcmread(instance.path)
    cited: list[tuple[str, Any]] = []

    def walk(items: Any) -> None:
        for item in items:
            for ref in item.get("ReferencedSOPSequence", []):
                cited.append((str(ref.ReferencedSOPInstanceUID), ref.get("ReferencedFrameNumber")))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert {uid for uid, _ in cited} == {members[1], members[5], members[6]}
    assert all(frame is None for _, frame in cited)
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert {members[1], members[5], members[6]} <= evidence


def test_grouped_loop_exports_with_calipers_as_mp4(server: BackgroundServer, uids: dict[str, str]) -> None:
    body: dict[str, Any] = {
        "measurements": [
            {
                "kind": "distance",
                "sop_instance_uid": uids["deep"],
                "frame": 1,
                "points": [[20, 60], [140, 60]],
            }
        ]
    }
    response = requests.post(
        f"{server.url}/cardiology/loops/{uids['deep']}/export.mp4", json=body, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "video/mp4"
    assert (
        "group" in response.headers["Content-Disposition"]
        and "/" not in response.headers["Content-Disposition"]
    )
    times, frames, _tags = read_mp4_frames(response.content)
    assert len(frames) == 8 and np.allclose(np.diff(times), 40.0, atol=0.5)
    for frame in frames:  # the yellow caliper on every frame, where the grey image has no colour
        r, g, b = (float(frame[59:62, 40:120, c].mean()) for c in range(3))
        assert r > 150 and g > 120 and b < 90
    bad = requests.post(f"{server.url}/cardiology/loops/{uids['deep']}/export.mp4", json=[], timeout=10)
    assert bad.status_code == 400


def test_doppler_velocity_measurements_on_the_server(server: BackgroundServer, uids: dict[str, str]) -> None:
    inflow = MITRAL_INFLOW
    e_col = inflow.e_peaks_ms()[0] / inflow.sweep_ms_per_px
    e_row = inflow.baseline_row - inflow.e_peak_cm_s / inflow.cm_s_per_px
    body = [
        {"kind": "velocity", "sop_instance_uid": uids["doppler"], "frame": 1, "points": [[e_col, e_row]]},
        {"kind": "distance", "sop_instance_uid": uids["doppler"], "frame": 1, "points": [[e_col, e_row], [e_col + 200, e_row]]},
    ]  # fmt: skip
    response = _put(server, uids["study"], body)
    assert response.status_code == 200, response.text
    velocity, interval = response.json()["measurements"]
    assert (velocity["value"], velocity["unit"]) == (pytest.approx(82.0), "cm/s")
    assert velocity["time_s"] == pytest.approx(0.592)
    assert (interval["value"], interval["unit"]) == (pytest.approx(800.0), "ms")
    outside = _put(server, uids["study"], [{**body[0], "points": [[320, 60]]}])
    assert outside.status_code == 422 and "no spectral Doppler region" in outside.json()["detail"]
    sr = requests.post(f"{server.url}/cardiology/studies/{uids['study']}/measurements/sr", timeout=60)
    assert sr.status_code == 201, sr.text


def test_curve_ecg_in_the_loop_json(server: BackgroundServer, uids: dict[str, str]) -> None:
    info = requests.get(f"{server.url}/cardiology/loops/{uids['legacy']}", timeout=10).json()
    assert info["ecg"]["present"] is True and info["ecg"]["source"] == "CurveData 5000"
    assert info["ecg"]["r_waves_ms"] == pytest.approx([60.0], abs=2.0)
    ecg = requests.get(f"{server.url}{info['ecg']['url']}", timeout=10).json()
    assert ecg["sampling_hz"] == 500.0 and ecg["unit"] == "mV" and len(ecg["samples_mv"]) == 400
    assert max(ecg["samples_mv"]) == pytest.approx(1.2, abs=0.1)


# -- in the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser: Any, server: BackgroundServer, study: str, series: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/cardiology/static/viewer.html?study={study}&series={series}")
    page.wait_for_function(
        "() => window.cardiology && window.cardiology.state().cells.length > 0", timeout=20000
    )
    page.click("[data-layout='1x1']")
    page.wait_for_function(
        "() => { const c = window.cardiology.state().cells[0]; return c && c.frames > 0 && c.loaded === c.frames && c.frame >= 0; }",
        timeout=20000,
    )
    page.errors = errors
    return page


@pytest.mark.browser
def test_doppler_calipers_in_the_browser_within_2_percent(
    browser: Any, server: BackgroundServer, uids: dict[str, str]
) -> None:
    inflow = MITRAL_INFLOW
    pixels = doppler_image().pixel_array
    e1 = envelope_peak(pixels, round(inflow.e_peaks_ms()[0] / inflow.sweep_ms_per_px))
    e2 = envelope_peak(pixels, round(inflow.e_peaks_ms()[1] / inflow.sweep_ms_per_px))
    a1 = envelope_peak(pixels, round(inflow.a_peaks_ms()[1] / inflow.sweep_ms_per_px))
    assert _put(server, uids["study"], []).status_code == 200  # no saved measurements to load
    page = _open(browser, server, uids["study"], uids["doppler_series"])
    assert page.evaluate("window.cardiology.state().cells[0].sop") == uids["doppler"]

    def point(column: float, row: int) -> list[float]:
        return page.evaluate(f"window.cardiology.clientPoint(0, {column + 0.5}, {row + 0.5})")

    page.click("[data-tool='velocity']")
    for column, row in (e1, a1):
        page.mouse.click(*point(column, row))
    page.click("[data-tool='distance']")
    for start, end in ((e1, e2), (e1, a1)):
        page.mouse.move(*point(*start))
        page.mouse.down()
        page.mouse.move(*point(*end), steps=5)
        page.mouse.up()
    readings = page.evaluate("window.cardiology.readings()")
    assert [(r["kind"], r["unit"]) for r in readings] == [
        ("velocity", "cm/s"), ("velocity", "cm/s"), ("distance", "ms"), ("distance", "ms"),
    ]  # fmt: skip
    known = [
        inflow.e_peak_cm_s,
        inflow.a_peak_cm_s,
        inflow.rr_ms,
        inflow.a_peaks_ms()[1] - inflow.e_peaks_ms()[0],
    ]
    for r, value in zip(readings, known, strict=True):
        assert r["value"] == pytest.approx(value, rel=0.02), r
    items = page.locator("#measurements li").all_text_contents()
    assert "cm/s" in items[0] and "ms" in items[2]
    page.evaluate("window.cardiology.save()")
    page.wait_for_function("() => document.getElementById('save-state').textContent.startsWith('saved')")
    saved = requests.get(f"{server.url}/cardiology/studies/{uids['study']}/measurements", timeout=10).json()
    for m, value in zip(saved["measurements"], known, strict=True):
        assert m["value"] == pytest.approx(value, rel=0.02), m
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "cardiology_doppler_calipers.png"))
    assert page.errors == []
    page.close()


@pytest.mark.browser
def test_curve_ecg_drawn_under_the_loop(browser: Any, server: BackgroundServer, uids: dict[str, str]) -> None:
    page = _open(browser, server, uids["study"], uids["legacy_series"])
    page.wait_for_function("() => window.cardiology.state().cells[0].ecg === 'CurveData 5000'", timeout=10000)
    page.wait_for_timeout(300)
    green = page.evaluate(
        """() => {
          const canvas = document.querySelector('.cell canvas.ecg');
          const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          let n = 0;
          for (let i = 0; i < data.length; i += 4) if (data[i + 1] > 150 && data[i] < 140) n += 1;
          return n;
        }"""
    )
    assert green > 200  # the trace is drawn
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "cardiology_curve_ecg.png"))
    assert page.errors == []
    page.close()


@pytest.mark.browser
def test_browser_calipers_use_the_regions_of_the_frame_measured(
    browser: Any, server: BackgroundServer, uids: dict[str, str]
) -> None:
    """A grouped loop deeper from frame 5 on: the same 100 px reads 80 mm on frame 2, 100 mm on frame 6."""
    assert _put(server, uids["study"], []).status_code == 200
    page = _open(browser, server, uids["study"], uids["deep_series"])
    assert page.evaluate("window.cardiology.state().cells[0].sop") == uids["deep"]
    if page.evaluate("window.cardiology.state().playing"):
        page.click("#play")
    page.click("[data-tool='distance']")
    for frame in (2, 6):
        for _ in range(50):
            before = page.evaluate("window.cardiology.state().cells[0].frame")
            if before == frame - 1:
                break
            page.click("#forward")
            page.wait_for_function(  # the next animation frame has drawn the step
                f"() => window.cardiology.state().cells[0].frame !== {before}", timeout=5000
            )
        start = page.evaluate("window.cardiology.clientPoint(0, 30, 60)")
        end = page.evaluate("window.cardiology.clientPoint(0, 130, 60)")
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=5)
        page.mouse.up()
    readings = page.evaluate("window.cardiology.readings()")
    assert [(r["frame"], r["unit"]) for r in readings] == [(2, "mm"), (6, "mm")]
    assert readings[0]["value"] == pytest.approx(80.0, rel=0.01)
    assert readings[1]["value"] == pytest.approx(100.0, rel=0.01)
    page.evaluate("window.cardiology.save()")
    page.wait_for_function("() => document.getElementById('save-state').textContent.startsWith('saved')")
    saved = requests.get(f"{server.url}/cardiology/studies/{uids['study']}/measurements", timeout=10).json()
    assert [m["value"] for m in saved["measurements"]] == [
        pytest.approx(80.0, rel=0.01),
        pytest.approx(100.0, rel=0.01),
    ]
    assert page.errors == []
    page.close()


@pytest.mark.browser
def test_a_still_first_in_the_grid_does_not_set_the_clock(
    browser: Any, server: BackgroundServer, uids: dict[str, str]
) -> None:
    """The Doppler still first in a 2×2 grid: the loops beside it play at their own rate (the
    clock follows the first loop that moves, not the still's one default-length frame)."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(
        f"{server.url}/cardiology/static/viewer.html?study={uids['study']}&series={uids['doppler_series']}"
    )
    page.wait_for_function(
        "() => { const s = window.cardiology && window.cardiology.state();"
        " return s && s.playing && s.cells.length === 3 && s.cells.every((c) => c.frames && c.loaded === c.frames); }",
        timeout=30000,
    )
    state = page.evaluate("window.cardiology.state()")
    assert state["layout"] == "2x2" and state["cells"][0]["sop"] == uids["doppler"]
    rates = page.evaluate(
        """async () => {
          const samples = [];
          const t0 = performance.now();
          while (performance.now() - t0 < 1500) {
            await new Promise((r) => requestAnimationFrame(r));
            samples.push([performance.now(), window.cardiology.state().cells]);
          }
          return [1, 2].map((c) => {
            let advanced = 0;
            for (let i = 1; i < samples.length; i++) {
              const d = samples[i][1][c].frame - samples[i - 1][1][c].frame;
              advanced += d >= 0 ? d : d + samples[i][1][c].frames;
            }
            return { rate: (1000 * advanced) / (samples[samples.length - 1][0] - samples[0][0]), fps: samples[0][1][c].fps };
          });
        }"""
    )
    for cell in rates:
        assert 0 < cell["rate"] <= 1.3 * cell["fps"], rates  # a spinning clock shows hundreds per second
    page.close()
