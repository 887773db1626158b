"""Single-frame ultrasound images grouped into loops: grouping rules, timing, frames, MP4, HTTP, viewer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom.dataset import Dataset

from modules.cardiology.groups import (
    acquisition_groups,
    content_time_ms,
    group_timing,
    parse_group_id,
)
from modules.cardiology.video import read_mp4_frames
from sample_data.cardiology import echo_image_sequence, echo_study
from sample_data.radiology import write
from server.archive.archive import StoredInstance
from server.imaging.frames import read_frame_bytes
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import make_settings

BOUNDARY = b"--tessera-cardiology-frame"


def _stored(ds: Dataset, frames: int = 1) -> StoredInstance:
    return StoredInstance(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        path=Path("/nonexistent"),
        size=0,
        sha256="",
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        number_of_frames=frames,
        samples_per_pixel=1,
        bits_allocated=8,
        photometric_interpretation="MONOCHROME2",
        frame_index=None,
    )


def _items(datasets: list[Dataset]) -> list[tuple[StoredInstance, Dataset]]:
    return [(_stored(ds), ds) for ds in datasets]


@pytest.fixture(scope="module")
def stills() -> list[Dataset]:
    return echo_image_sequence(n_frames=6, rows=60, columns=80)


def test_two_acquisitions_in_one_series_make_two_groups(stills: list[Dataset]) -> None:
    series = str(stills[0].SeriesInstanceUID)
    shuffled = [stills[i] for i in (7, 2, 0, 11, 5, 1, 9, 3, 6, 10, 4, 8)]
    groups = acquisition_groups(series, _items(shuffled))
    assert [g.number for g in groups] == [1, 2]
    assert [len(g.members) for g in groups] == [6, 6]
    # play order is InstanceNumber order, whatever order the archive lists them in
    assert [int(h.InstanceNumber) for _, h in groups[0].members] == [1, 2, 3, 4, 5, 6]
    assert [int(h.InstanceNumber) for _, h in groups[1].members] == [7, 8, 9, 10, 11, 12]
    assert groups[1].loop_id == f"group/{series}/2"
    assert parse_group_id(groups[1].loop_id) == (series, 2)
    assert parse_group_id(str(stills[0].SOPInstanceUID)) is None


def test_geometry_and_identity_split_or_exclude(stills: list[Dataset]) -> None:
    series = str(stills[0].SeriesInstanceUID)
    first = [ds.copy() for ds in stills[:6]]
    # another depth in the middle of an acquisition: still one loop, each frame its own regions
    for ds in first[3:]:
        ds.SequenceOfUltrasoundRegions = [r.copy() for r in ds.SequenceOfUltrasoundRegions]
        ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY = 0.1
    (group,) = acquisition_groups(series, _items(first))
    assert [regions[0].delta_y for regions in group.frame_regions()] == [0.08] * 3 + [0.1] * 3
    # another image size in the middle: not the same loop
    items = [(replace(i, rows=61) if n >= 3 else i, h) for n, (i, h) in enumerate(_items(first))]
    assert sorted(len(g.members) for g in acquisition_groups(series, items)) == [3, 3]
    # no acquisition date/time and no number: never grouped
    anonymous = [ds.copy() for ds in stills[:6]]
    for ds in anonymous:
        for keyword in ("AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionNumber"):
            delattr(ds, keyword)
    assert acquisition_groups(series, _items(anonymous)) == []
    # a multi-frame loop or an image of another series is left alone; one image is no group
    multi = echo_study()[0]
    assert acquisition_groups(series, [(_stored(multi, 48), multi), *_items(stills[:1])]) == []


def test_timing_from_frame_time_then_content_time_then_default(stills: list[Dataset]) -> None:
    timed = echo_image_sequence(n_frames=4, rows=40, columns=60, with_frame_time=True, frame_time_ms=33.0)[:4]
    timing = group_timing(timed)
    assert timing.source == "FrameTime"
    assert timing.times_ms == (0.0, 33.0, 66.0, 99.0)

    timing = group_timing(stills[:6])  # ContentTime 40 ms apart
    assert timing.source == "ContentTime"
    assert np.allclose(timing.times_ms, [0, 40, 80, 120, 160, 200])
    assert timing.durations_ms[-1] == pytest.approx(40.0)
    assert timing.fps == pytest.approx(25.0)

    first, second = content_time_ms(stills[0]), content_time_ms(stills[1])
    assert first is not None and second is not None and second - first == pytest.approx(40.0)

    backwards = [ds.copy() for ds in stills[:3]]
    backwards[2].ContentTime = backwards[0].ContentTime
    timing = group_timing(backwards)
    assert timing.source == "default"
    assert any("strictly increase" in w for w in timing.warnings)

    missing = [ds.copy() for ds in stills[:3]]
    del missing[1].ContentTime
    timing = group_timing(missing)
    assert timing.source == "default"
    assert timing.times_ms[1] == pytest.approx(1000 / 30)


# -- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    out = tmp_path_factory.mktemp("cardio-groups")
    settings = make_settings(out / "data", extra={"cardiology_video_on_ingest": False})
    running = BackgroundServer.start(settings)
    for ds in [*echo_image_sequence(n_frames=8, rows=120, columns=160), echo_study()[0]]:
        assert running.ctx.archive.ingest_path(write(ds, out / "in")).ok
    yield running
    running.stop()


@pytest.fixture(scope="module")
def uids(server: BackgroundServer) -> dict[str, str]:
    ds = echo_image_sequence(n_frames=8, rows=120, columns=160)[0]
    return {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID)}


def test_study_index_lists_each_group_once(server: BackgroundServer, uids: dict[str, str]) -> None:
    index = requests.get(f"{server.url}/cardiology/studies/{uids['study']}/loops", timeout=10).json()
    groups = [e for e in index["loops"] if e.get("group")]
    assert [e["sop_instance_uid"] for e in groups] == [
        f"group/{uids['series']}/1",
        f"group/{uids['series']}/2",
    ]
    assert [e["number_of_frames"] for e in groups] == [8, 8]
    assert len(index["loops"]) == 3  # the two groups and the multi-frame A4C; no single images


def test_group_loop_json_frames_and_stream(server: BackgroundServer, uids: dict[str, str]) -> None:
    base = f"{server.url}/cardiology/loops/group/{uids['series']}/2"
    info = requests.get(base, timeout=10).json()
    assert info["number_of_frames"] == 8
    assert info["timing_source"] == "ContentTime"
    assert info["frame_times_ms"] == [i * 40.0 for i in range(8)]
    assert info["fps"] == pytest.approx(25.0)
    assert info["regions"] and info["regions"][0]["units"] == ["cm", "cm"]
    assert info["ecg"]["present"] is False
    assert len(info["group"]["members"]) == 8
    assert info["frames_url"] == f"/cardiology/loops/group/{uids['series']}/2/frames"

    # frame n of the group is the n-th image of the acquisition, byte for byte (JPEG baseline)
    members = info["group"]["members"]
    fifth = requests.get(f"{base}/frames/5.jpg", timeout=10)
    assert fifth.status_code == 200 and fifth.headers["Content-Type"] == "image/jpeg"
    stored = server.ctx.archive.instance_by_uid(members[4])
    assert stored is not None
    assert fifth.content == read_frame_bytes(stored, 0).rstrip(b"\0")
    assert requests.get(f"{base}/frames/9.jpg", timeout=10).status_code == 404

    stream = requests.get(f"{base}/frames", timeout=10)
    assert stream.status_code == 200
    assert stream.content.count(b"Content-Type: image/jpeg") == 8
    assert f"/cardiology/loops/group/{uids['series']}/2/frames/8.jpg".encode() in stream.content

    for missing in (f"group/{uids['series']}/3", "group/1.2.3/1"):
        response = requests.get(f"{server.url}/cardiology/loops/{missing}", timeout=10)
        assert response.status_code == 404
        assert "group" in response.json()["detail"]


def test_group_mp4_has_the_group_frames_and_timing(server: BackgroundServer, uids: dict[str, str]) -> None:
    base = f"{server.url}/cardiology/loops/group/{uids['series']}/1"
    response = requests.get(f"{base}.mp4", timeout=60)
    assert response.status_code == 200, response.text
    times, frames, _tags = read_mp4_frames(response.content)
    assert len(frames) == 8
    assert np.allclose(np.diff(times), 40.0, atol=0.5)
    assert requests.get(base, timeout=10).json()["video"]["status"] == "ready"


@pytest.mark.browser
def test_viewer_plays_a_group_in_the_grid(server: BackgroundServer, uids: dict[str, str]) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/cardiology/static/viewer.html?study={uids['study']}&series={uids['series']}")
        page.wait_for_function(
            "() => window.cardiology && window.cardiology.state().cells.length >= 2"
            " && window.cardiology.state().cells.slice(0, 2).every((c) => c.loaded === c.frames && c.frames === 8)",
            timeout=20000,
        )
        state = page.evaluate("window.cardiology.state()")
        assert [c["sop"] for c in state["cells"][:2]] == [
            f"group/{uids['series']}/1",
            f"group/{uids['series']}/2",
        ]
        assert state["cells"][0]["fps"] == pytest.approx(25.0)
        page.wait_for_function("() => window.cardiology.state().cells[0].frame > 0", timeout=5000)
        browser.close()
    assert errors == []


def test_first_frame_and_first_loop_json_for_the_viewer_start(
    server: BackgroundServer, uids: dict[str, str]
) -> None:
    """What viewer.html's boot.js asks for at once: frame 1 of the series' first loop (named in
    X-Loop-Id) and the study index carrying that loop's JSON."""
    url = f"{server.url}/cardiology/studies/{uids['study']}/series/{uids['series']}/first-frame.jpg"
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    assert response.headers["X-Loop-Id"] == f"group/{uids['series']}/1"
    first = requests.get(f"{server.url}/cardiology/loops/group/{uids['series']}/1/frames/1.jpg", timeout=10)
    assert response.content == first.content
    index = requests.get(
        f"{server.url}/cardiology/studies/{uids['study']}/loops",
        params={"series": uids["series"]},
        timeout=10,
    ).json()
    assert index["first"]["sop_instance_uid"] == f"group/{uids['series']}/1"
    assert index["first"]["number_of_frames"] == 8
    assert (
        "first"
        not in requests.get(f"{server.url}/cardiology/studies/{uids['study']}/loops", timeout=10).json()
    )
    missing = requests.get(f"{server.url}/cardiology/studies/1.2.3/series/1.2.4/first-frame.jpg", timeout=10)
    assert missing.status_code == 404
