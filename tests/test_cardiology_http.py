"""The cardiology module through HTTP on a running server: loops, frames, MP4, ECG, measurements, SR."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom import dcmread

from modules.cardiology import module
from modules.cardiology.video import read_mp4_frames
from sample_data.cardiology import LVPhantom, echo_loop, twelve_lead_ecg
from sample_data.radiology import OKAFOR, OKAFOR_US, us_multiframe, write
from server.modules import SeriesRecord
from server.serve import BackgroundServer
from tests.conftest import make_settings

BOUNDARY = b"--tessera-cardiology-frame"


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cardiology")
    untimed = echo_loop("A4C", instance_number=9, n_frames=6, rows=100, columns=140)
    del (
        untimed.FrameTime,
        untimed.CineRate,
        untimed.RecommendedDisplayFrameRate,
        untimed.SequenceOfUltrasoundRegions,
    )
    return {
        "a4c": write(echo_loop("A4C", instance_number=1), out),
        "a2c": write(echo_loop("A2C", instance_number=2), out),
        "untimed": write(untimed, out),
        "ecg": write(twelve_lead_ecg(), out),
        "renal": write(us_multiframe(4, patient=OKAFOR, study=OKAFOR_US), out),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cases: dict[str, Path]) -> Iterator[BackgroundServer]:
    """One server for the module's tests; videos are made on request here (one test checks the
    background job on its own server), to spare the CPU."""
    settings = make_settings(
        tmp_path_factory.mktemp("cardio-http"), extra={"cardiology_video_on_ingest": False}
    )
    running = BackgroundServer.start(settings)
    for path in cases.values():
        assert running.ctx.archive.ingest_path(path).ok
    yield running
    running.stop()


def _uid(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(dcmread(path, stop_before_pixels=True).get(keyword))


def _wait_ready(server: BackgroundServer, sop: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        info = requests.get(f"{server.url}/cardiology/loops/{sop}", timeout=10).json()
        if info["video"]["status"] == "ready" or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


def test_claims_cardiac_series_and_waveforms_not_renal_ultrasound() -> None:
    def record(sop_class: str, body: str = "", modality: str = "US") -> SeriesRecord:
        return SeriesRecord("1.2", "1.2.3", modality, frozenset({sop_class}), body_part_examined=body)

    assert module.claims(record("1.2.840.10008.5.1.4.1.1.3.1", "HEART"))
    assert module.claims(record("1.2.840.10008.5.1.4.1.1.12.1", "", "XA"))
    assert module.claims(record("1.2.840.10008.5.1.4.1.1.9.1.1", "", "ECG"))
    assert not module.claims(record("1.2.840.10008.5.1.4.1.1.3.1", "KIDNEY"))
    assert not module.claims(record("1.2.840.10008.5.1.4.1.1.2", "CHEST", "CT"))


def test_loop_json_and_background_video(tessera_server: BackgroundServer, cases: dict[str, Path]) -> None:
    server = tessera_server  # videos made on ingest: the default
    for key in ("a4c", "renal"):
        assert server.ctx.archive.ingest_path(cases[key]).ok
    sop = _uid(cases["a4c"])
    info = _wait_ready(server, sop)
    assert info["video"]["status"] == "ready"  # made after ingest, without anyone asking
    assert info["number_of_frames"] == 48 and len(info["frame_times_ms"]) == 48
    assert info["fps"] == 50 and info["timing_source"] == "FrameTime" and info["frame_times_ms"][1] == 20
    assert info["regions"][0]["units"] == ["cm", "cm"] and info["regions"][0]["delta"] == [0.04, 0.04]
    assert info["ecg"]["present"] and info["ecg"]["r_waves_ms"] == pytest.approx([60, 860], abs=2)
    assert info["view"] == "A4C" and info["video"]["url"].endswith(f"{sop}.mp4")
    assert (server.settings.derived_dir / "cardiology" / "video" / f"{sop}.mp4").exists()
    renal = _uid(cases["renal"])
    time.sleep(0.5)
    assert not (server.settings.derived_dir / "cardiology" / "video" / f"{renal}.mp4").exists()


def test_frames_are_passed_through_and_streamed_in_one_response(
    server: BackgroundServer, cases: dict[str, Path]
) -> None:
    sop = _uid(cases["a4c"])
    one = requests.get(f"{server.url}/cardiology/loops/{sop}/frames/7.jpg", timeout=10)
    assert one.status_code == 200 and one.headers["Content-Type"] == "image/jpeg"
    instance = server.ctx.archive.instance_by_uid(sop)
    assert instance is not None
    from server.imaging.frames import read_frame_bytes

    assert one.content == read_frame_bytes(instance, 6).rstrip(b"\0")  # stored JPEG, byte for byte
    stream = requests.get(f"{server.url}/cardiology/loops/{sop}/frames", timeout=20)
    assert stream.headers["Content-Type"].startswith("multipart/related")
    parts = [p for p in stream.content.split(BOUNDARY) if b"Content-Length" in p]
    assert len(parts) == 48
    head, body = parts[6].split(b"\r\n\r\n", 1)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert body[:length] == one.content
    missing = requests.get(f"{server.url}/cardiology/loops/{sop}/frames/49.jpg", timeout=10)
    assert missing.status_code == 404 and "outside 1..48" in missing.json()["detail"]


def test_mp4_served_with_ranges(server: BackgroundServer, cases: dict[str, Path]) -> None:
    sop = _uid(cases["a2c"])
    url = f"{server.url}/cardiology/loops/{sop}.mp4"
    full = requests.get(url, timeout=60)
    assert full.status_code == 200 and full.headers["Content-Type"] == "video/mp4"
    assert full.headers["Accept-Ranges"] == "bytes"
    times, frames, _tags = read_mp4_frames(full.content)
    assert len(frames) == 48 and times[1] == pytest.approx(20.0)
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == full.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(full.content)}"
    tail = requests.get(url, headers={"Range": "bytes=-64"}, timeout=10)
    assert tail.status_code == 206 and tail.content == full.content[-64:]
    bad = requests.get(url, headers={"Range": f"bytes={len(full.content) + 5}-"}, timeout=10)
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(full.content)}"


def test_bad_requests_answer_problem_json(server: BackgroundServer, cases: dict[str, Path]) -> None:
    unknown = requests.get(f"{server.url}/cardiology/loops/1.2.3.4", timeout=10)
    assert unknown.status_code == 404 and unknown.headers["Content-Type"] == "application/problem+json"
    assert "1.2.3.4" in unknown.json()["detail"]
    not_a_loop = requests.get(f"{server.url}/cardiology/loops/{_uid(cases['ecg'])}", timeout=10)
    assert not_a_loop.status_code == 409
    assert (
        requests.get(f"{server.url}/cardiology/loops/{_uid(cases['ecg'])}.mp4", timeout=10).status_code == 409
    )


def test_absent_timing_and_regions_get_the_documented_defaults(
    server: BackgroundServer, cases: dict[str, Path]
) -> None:
    info = requests.get(f"{server.url}/cardiology/loops/{_uid(cases['untimed'])}", timeout=10).json()
    assert info["timing_source"] == "default" and info["fps"] == 30
    assert info["timing_warnings"] and info["regions"] == []
    body = {
        "measurements": [
            {
                "kind": "distance",
                "sop_instance_uid": _uid(cases["untimed"]),
                "frame": 1,
                "points": [[0, 0], [30, 40]],
            }
        ]
    }
    study = _uid(cases["untimed"], "StudyInstanceUID")
    saved = requests.put(
        f"{server.url}/cardiology/studies/{study}/measurements", json=body, timeout=10
    ).json()
    assert saved["measurements"][0]["unit"] == "px" and saved["measurements"][0]["value"] == 50


def _pixels(
    half_width_cm: float, length_cm: float, cx: float = 200, apex_cm: float = 1.0
) -> list[list[float]]:
    """Annulus → apex → annulus of the phantom's cavity, in image pixels (0.04 cm per pixel)."""
    base_y = (apex_cm + length_cm) / 0.04
    return [
        [cx - half_width_cm / 0.04 * math.cos(t), base_y - length_cm / 0.04 * math.sin(t)]
        for t in np.linspace(0, math.pi, 41)
    ]


def test_measurements_saved_exported_and_stored_as_sr(
    server: BackgroundServer, cases: dict[str, Path]
) -> None:
    a4c, a2c = _uid(cases["a4c"]), _uid(cases["a2c"])
    study = _uid(cases["a4c"], "StudyInstanceUID")
    phantom = LVPhantom()
    measurements = [
        {
            "id": "d1",
            "kind": "distance",
            "sop_instance_uid": a4c,
            "frame": 4,
            "points": [[137.5, 240], [262.5, 240]],
        },
        {
            "id": "a1",
            "kind": "area",
            "sop_instance_uid": a4c,
            "frame": 4,
            "points": [[100, 100], [150, 100], [150, 150], [100, 150]],
        },
    ]
    for view, sop, half_ed, half_es in (
        ("A4C", a4c, phantom.a_ed_cm, phantom.a_es_cm),
        ("A2C", a2c, phantom.b_ed_cm, phantom.b_es_cm),
    ):
        measurements.append(
            {
                "kind": "lv",
                "label": f"{view}-ED",
                "sop_instance_uid": sop,
                "frame": 4,
                "points": _pixels(half_ed, phantom.length_ed_cm),
            }
        )
        measurements.append(
            {
                "kind": "lv",
                "label": f"{view}-ES",
                "sop_instance_uid": sop,
                "frame": 18,
                "points": _pixels(half_es, phantom.length_es_cm),
            }
        )
    url = f"{server.url}/cardiology/studies/{study}/measurements"
    saved = requests.put(url, json={"measurements": measurements}, timeout=10)
    assert saved.status_code == 200, saved.text
    document = saved.json()
    distance = document["measurements"][0]
    assert distance["unit"] == "mm" and distance["value"] == pytest.approx(50.0, rel=0.01)
    assert document["measurements"][1]["unit"] == "cm2" and document["measurements"][1][
        "value"
    ] == pytest.approx(4.0)
    assert document["lv"]["method"] == "biplane"
    assert abs(document["lv"]["ef_percent"] - phantom.ef_percent) < 2.0
    again = requests.get(url + "?download=1", timeout=10)
    assert again.json()["lv"] == document["lv"]
    assert "attachment" in again.headers["Content-Disposition"]
    stored = requests.post(f"{url}/sr", timeout=30)
    assert stored.status_code == 201, stored.text
    instance = server.ctx.archive.instance_by_uid(stored.json()["sop_instance_uid"])
    assert instance is not None and instance.study_instance_uid == study
    sr = dcmread(instance.path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR, TID 1500
    text = str(sr)
    assert "Left ventricular Ejection fraction" in text and "Length" in text


def test_bad_measurements_are_refused_with_the_reason(
    server: BackgroundServer, cases: dict[str, Path]
) -> None:
    study = _uid(cases["a4c"], "StudyInstanceUID")
    url = f"{server.url}/cardiology/studies/{study}/measurements"
    one_point = {
        "measurements": [{"kind": "distance", "sop_instance_uid": _uid(cases["a4c"]), "points": [[1, 2]]}]
    }
    assert "exactly 2 points" in requests.put(url, json=one_point, timeout=10).json()["detail"]
    other_study = {
        "measurements": [
            {"kind": "distance", "sop_instance_uid": _uid(cases["renal"]), "points": [[1, 2], [3, 4]]}
        ]
    }
    assert requests.put(url, json=other_study, timeout=10).status_code == 422
    assert requests.put(url, data=b"{not json", timeout=10).status_code == 400
    assert (
        requests.get(f"{server.url}/cardiology/studies/1.2.3/measurements", timeout=10).json()["measurements"]
        == []
    )


def test_loop_exported_with_calipers(server: BackgroundServer, cases: dict[str, Path]) -> None:
    sop = _uid(cases["a4c"])
    body = {
        "measurements": [
            {"kind": "distance", "sop_instance_uid": sop, "frame": 1, "points": [[20, 280], [380, 280]]}
        ]
    }
    response = requests.post(f"{server.url}/cardiology/loops/{sop}/export.mp4", json=body, timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"] == "video/mp4"
    _times, frames, _ = read_mp4_frames(response.content)
    assert len(frames) == 48
    line = frames[10][280, 40:360]
    assert (line[:, 0] > 200).mean() > 0.9 and (
        line[:, 2] < 100
    ).mean() > 0.9  # the yellow caliper on every frame


def test_twelve_lead_waveform(server: BackgroundServer, cases: dict[str, Path]) -> None:
    record = requests.get(f"{server.url}/cardiology/waveforms/{_uid(cases['ecg'])}", timeout=10).json()
    labels = [c["label"] for c in record["channels"]]
    assert labels == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert record["sampling_hz"] == 500 and record["duration_ms"] == 10000
    lead = {c["label"]: np.array(c["samples_mv"]) for c in record["channels"]}
    assert np.allclose(lead["III"], lead["II"] - lead["I"], atol=0.003)  # Einthoven, to the µV rounding
    index = requests.get(
        f"{server.url}/cardiology/studies/{_uid(cases['ecg'], 'StudyInstanceUID')}/loops", timeout=10
    ).json()
    assert index["waveforms"][0]["sop_instance_uid"] == _uid(cases["ecg"])


def test_viewer_url_and_static_pages(server: BackgroundServer, cases: dict[str, Path]) -> None:
    url = module.viewer_url("1.2", "1.2.3")
    assert url.startswith("/cardiology/static/viewer.html?study=1.2")
    for key, claimed in (("a4c", True), ("ecg", True), ("renal", False)):
        study = requests.get(
            f"{server.url}/api/studies/{_uid(cases[key], 'StudyInstanceUID')}", timeout=10
        ).json()
        series = next(
            s for s in study["series"] if s["SeriesInstanceUID"] == _uid(cases[key], "SeriesInstanceUID")
        )
        assert (series["module"] == {"id": "cardiology", "title": "Cardiology"}) is claimed
        assert series["viewer_url"].startswith("/cardiology/static/viewer.html") is claimed
    for page in ("viewer.html", "viewer.js", "player.js", "measure.js", "ecg.html", "ecg.js", "viewer.css"):
        response = requests.get(f"{server.url}/cardiology/static/{page}", timeout=10)
        assert response.status_code == 200, page
        assert "script-src 'self'" in response.headers.get("Content-Security-Policy", "")


def test_viewer_page_asks_the_browser_to_preload_what_frame_1_needs(
    server: BackgroundServer, cases: dict[str, Path]
) -> None:
    """The page's Link headers name the study index and frame 1 exactly as boot.js asks for them
    (so the browser's preloads are the ones used), and carry nothing that is not a UID."""
    study, series = _uid(cases["a4c"], "StudyInstanceUID"), _uid(cases["a4c"], "SeriesInstanceUID")
    page = requests.get(f"{server.url}{module.viewer_url(study, series)}", timeout=10)
    assert page.status_code == 200 and "boot.js" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    links = page.headers["Link"]
    index = f"/cardiology/studies/{study}/loops?series={series}"
    frame1 = f"/cardiology/studies/{study}/series/{series}/first-frame.jpg"
    assert f"<{index}>; rel=preload; as=fetch; crossorigin" in links
    assert f"<{frame1}>; rel=preload; as=image" in links
    assert requests.get(f"{server.url}{index}", timeout=10).json()["first"]["series_instance_uid"] == series
    assert requests.get(f"{server.url}{frame1}", timeout=10).content[:2] == b"\xff\xd8"
    for query in ("study=1.2%3E%3Bx&series=1.3", "study=1.2&series=%3Cscript%3E", "series=1.3", ""):
        other = requests.get(f"{server.url}/cardiology/static/viewer.html?{query}", timeout=10)
        assert other.status_code == 200 and "Link" not in other.headers, query
    no_series = requests.get(f"{server.url}/cardiology/static/viewer.html?study={study}", timeout=10)
    assert (
        no_series.headers["Link"]
        == f"</cardiology/studies/{study}/loops?series=>; rel=preload; as=fetch; crossorigin"
    )
