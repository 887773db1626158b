"""Mammography over HTTP (hanging JSON, image info, tiles, slabs, bad input), slab maths and measurements."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import FileDataset

from modules.mammography.measurements import area, distance
from modules.mammography.tomosynthesis import SlabMode, relative_slice, slab, slab_range
from sample_data.mammography import (
    CURRENT,
    PRIOR,
    RIVERA,
    mammogram,
    tomosynthesis,
    write_mammography_demo,
)
from server.imaging.calibration import resolve_calibration
from server.imaging.rendering import to_display
from server.serve import BackgroundServer
from tests.conftest import make_settings

# ---- slab maths ------------------------------------------------------------------------------


def test_slab_range_is_centred_and_shifted_inside_the_stack() -> None:
    assert slab_range(10, 1, 24) == (10, 10)
    assert slab_range(10, 5, 24) == (8, 12)
    assert slab_range(10, 4, 24) == (9, 12)
    assert slab_range(0, 5, 24) == (0, 4)
    assert slab_range(23, 5, 24) == (19, 23)
    assert slab_range(3, 100, 24) == (0, 23)


def test_slab_mip_and_average_of_the_right_slices() -> None:
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4096, (24, 6, 5), dtype=np.uint16)
    first, last = slab_range(10, 5, 24)
    chosen = stack[first : last + 1]
    assert np.array_equal(slab(chosen, SlabMode.MIP), stack[8:13].max(axis=0))
    expected = np.rint(stack[8:13].astype(float).mean(axis=0)).astype(np.uint16)
    assert np.array_equal(slab(chosen, SlabMode.AVERAGE), expected)
    assert slab(chosen, SlabMode.AVERAGE).dtype == np.uint16
    with pytest.raises(ValueError):
        slab(stack[:0], SlabMode.MIP)


def test_relative_slice_keeps_the_same_depth() -> None:
    assert relative_slice(0, 24, 40) == 0
    assert relative_slice(23, 24, 40) == 39
    assert relative_slice(12, 25, 49) == 24
    assert relative_slice(5, 1, 10) == 0


# ---- measurements ----------------------------------------------------------------------------


def test_distance_and_area_use_the_magnification_factor() -> None:
    ds = mammogram(CURRENT, "R", "CC", 1, seed=1, shape=(64, 48))
    calibration = resolve_calibration(ds).active
    assert calibration.source.value == "imager-spacing-magnification"
    d = distance((0, 0), (100, 0), calibration)
    assert d.unit == "mm" and d.value == pytest.approx(100 * 0.2 / 1.07)
    assert d.plane == "patient" and "1.07" in d.calibration
    a = area([(0, 0), (10, 0), (10, 10), (0, 10)], calibration)
    assert a.unit == "mm²" and a.value == pytest.approx(100 * (0.2 / 1.07) ** 2)


def test_distance_without_magnification_is_at_the_detector() -> None:
    ds = mammogram(CURRENT, "R", "CC", 1, seed=1, shape=(64, 48))
    del ds.EstimatedRadiographicMagnificationFactor
    calibration = resolve_calibration(ds).active
    d = distance((0, 0), (30, 40), calibration)
    assert d.value == pytest.approx(50 * 0.2) and d.plane == "detector"
    del ds.ImagerPixelSpacing
    uncalibrated = distance((0, 0), (30, 40), resolve_calibration(ds).active)
    assert (uncalibrated.value, uncalibrated.unit) == (50, "px")


# ---- over HTTP -------------------------------------------------------------------------------


def _bytes(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mammography_demo(
        tmp_path_factory.mktemp("mg"), shape=(640, 512), tomo_shape=(320, 256), slices=12
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_files: list[Path]) -> Iterator[BackgroundServer]:
    running = BackgroundServer.start(make_settings(tmp_path_factory.mktemp("server")))
    for path in demo_files:
        assert running.ctx.archive.ingest_path(path).ok
    yield running
    running.stop()


def get(server: BackgroundServer, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(server.url + path) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(server: BackgroundServer, path: str) -> Any:
    status, _, body = get(server, path)
    assert status == 200, body
    return json.loads(body)


def test_hanging_of_the_demo_exam(server: BackgroundServer) -> None:
    study = CURRENT.uid_for(RIVERA)
    document = get_json(server, f"/mammography/studies/{study}/hanging")
    assert document["protocol"]["id"] == "screening-with-prior"
    assert [p["StudyInstanceUID"] for p in document["priors"]] == [PRIOR.uid_for(RIVERA)]
    first = {v["id"]: v for v in document["stages"][0]["viewports"]}
    assert {k: v["image"]["label"] for k, v in first.items()} == {
        "RCC": "RCC",
        "LCC": "LCC",
        "RMLO": "RMLO",
        "LMLO": "LMLO",
    }
    assert not any(v["mirrored"] for v in first.values())
    assert first["LCC"]["tomosynthesis"]["kind"] == "tomosynthesis"
    assert [o["kind"] for o in document["other_images"]] == ["synthesized"]
    eight = document["stages"][3]["viewports"]
    assert len(eight) == 8 and all(v["image"] for v in eight)
    assert {v["image"]["StudyInstanceUID"] for v in eight if v["is_prior"]} == {PRIOR.uid_for(RIVERA)}
    # Every placed image (and stack) comes with the same info its info route answers: no round trip.
    placed = {
        image["SOPInstanceUID"]
        for stage in document["stages"]
        for v in stage["viewports"]
        for image in (v["image"], v["tomosynthesis"])
        if image
    }
    assert set(document["images"]) == placed
    for sop in [v["image"]["SOPInstanceUID"] for v in eight[:2]] + [
        first["LCC"]["tomosynthesis"]["SOPInstanceUID"]
    ]:
        assert document["images"][sop] == get_json(server, f"/mammography/images/{sop}/info")
    # The prior study itself hangs with no prior of its own.
    prior = get_json(server, f"/mammography/studies/{PRIOR.uid_for(RIVERA)}/hanging")
    assert prior["protocol"]["id"] == "screening" and prior["priors"] == []
    # Choosing a prior explicitly, and a bad one.
    chosen = get_json(server, f"/mammography/studies/{study}/hanging?prior={PRIOR.uid_for(RIVERA)}")
    assert chosen["priors"][0]["StudyInstanceUID"] == PRIOR.uid_for(RIVERA)
    status, headers, _ = get(server, f"/mammography/studies/{study}/hanging?prior=1.2.3")
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    assert get(server, "/mammography/studies/1.2.3/hanging")[0] == 404
    assert get(server, "/mammography/studies/not-a-uid/hanging")[0] == 400
    assert get(server, f"/mammography/studies/{study}/hanging?protocol=nope")[0] == 404


def test_image_info_tiles_and_window(server: BackgroundServer, demo_files: list[Path]) -> None:
    path = next(p for p in demo_files if p.name == "02-LCC.dcm" and "2025" in str(p))
    ds = dcmread(path)
    sop = str(ds.SOPInstanceUID)
    info = get_json(server, f"/mammography/images/{sop}/info")
    assert (info["width"], info["height"], info["label"], info["chest_wall"]) == (512, 640, "LCC", "left")
    assert info["calibration"]["source"] == "imager-spacing-magnification"
    assert [p["name"] for p in info["presets"]] == ["STANDARD", "DENSE"]
    assert info["default_window"]["function"] == "sigmoid"
    status, headers, body = get(server, f"/mammography/images/{sop}/frames/0.dzi")
    assert status == 200 and b'TileSize="512"' in body and b'Width="512" Height="640"' in body
    # The top DZI level (10 for 640 px) tile 0_0 is the windowed full image's top-left 512 × 512.
    for window, query in ((None, ""), ((2000.0, 1000.0), "?window=2000,1000")):
        status, headers, body = get(server, f"/mammography/images/{sop}/frames/0_files/10/0_0.jpeg{query}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        got = np.asarray(Image.open(io.BytesIO(body)).convert("L")).astype(float)
        from server.imaging.rendering import Window

        expected = to_display(ds.pixel_array, ds, Window(*window) if window else None)[:512, :512]
        assert np.abs(got - expected).mean() < 1.5
    etag = headers["Etag"]
    request = urllib.request.Request(
        f"{server.url}/mammography/images/{sop}/frames/0_files/10/0_0.jpeg?window=2000,1000",
        headers={"If-None-Match": etag},
    )
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(request)
    assert not_modified.value.code == 304
    assert get(server, f"/mammography/images/{sop}/frames/0_files/10/9_9.jpeg")[0] == 404
    assert get(server, f"/mammography/images/{sop}/frames/0_files/10/0_0.jpeg?window=abc")[0] == 400
    assert get(server, f"/mammography/images/{sop}/frames/3.dzi")[0] == 404
    assert get(server, "/mammography/images/1.2.3.4/info")[0] == 404


def test_slab_route_renders_the_mip_of_the_right_slices(
    server: BackgroundServer, demo_files: list[Path]
) -> None:
    path = next(p for p in demo_files if "Tomosynthesis" in p.name and "2025" in str(p))
    ds = dcmread(path)
    stack = ds.pixel_array
    sop = str(ds.SOPInstanceUID)
    status, _, body = get(server, f"/mammography/images/{sop}/slab?center=6&thickness=3&mode=mip&size=512")
    assert status == 200
    got = np.asarray(Image.open(io.BytesIO(body)).convert("L")).astype(float)
    expected = to_display(stack[5:8].max(axis=0), ds).astype(float)
    assert got.shape == expected.shape and np.abs(got - expected).mean() < 1.5
    status, _, body = get(
        server, f"/mammography/images/{sop}/slab?center=6&thickness=3&mode=average&size=512"
    )
    average = np.asarray(Image.open(io.BytesIO(body)).convert("L")).astype(float)
    assert np.abs(average - got).mean() > 0.5  # a different picture
    assert get(server, f"/mammography/images/{sop}/slab?center=99")[0] == 404
    assert get(server, f"/mammography/images/{sop}/slab?mode=median")[0] == 400


def test_bad_input_is_displayed_with_notices(tmp_path: Path) -> None:
    running = BackgroundServer.start(make_settings(tmp_path / "bad"))
    try:
        no_laterality = mammogram(CURRENT, "R", "CC", 1, seed=1, shape=(96, 80))
        for keyword in ("ImageLaterality", "Laterality"):
            delattr(no_laterality, keyword)
        no_laterality.SeriesDescription = "CC"
        unknown = mammogram(CURRENT, "L", "CC", 2, seed=2, shape=(96, 80))
        unknown.ViewCodeSequence[0].CodeValue = "999999999"
        del unknown.ViewPosition
        unknown.SeriesDescription = "special view"
        bare_tomo, _ = tomosynthesis(
            CURRENT, "R", "MLO", 3, seed=3, slices=4, shape=(96, 80), functional_groups=False
        )
        for ds in (no_laterality, unknown, bare_tomo):
            assert running.ctx.archive.ingest_bytes(_bytes(ds)).ok
        document = get_json(running, f"/mammography/studies/{CURRENT.uid_for(RIVERA)}/hanging")
        first = {v["id"]: v for v in document["stages"][0]["viewports"]}
        assert first["RMLO"]["image"]["kind"] == "tomosynthesis"
        assert any("functional groups" in n for n in first["RMLO"]["image"]["notices"])
        others = {o["SOPInstanceUID"]: o for o in document["other_images"]}
        assert set(others) == {str(no_laterality.SOPInstanceUID), str(unknown.SOPInstanceUID)}
        assert any(
            "laterality not recorded" in n for n in others[str(no_laterality.SOPInstanceUID)]["notices"]
        )
        assert any("unknown view code 999999999" in n for n in others[str(unknown.SOPInstanceUID)]["notices"])
        assert len(document["notices"]) >= 3
        # Each is still drawable.
        for ds in (no_laterality, unknown, bare_tomo):
            assert (
                get(running, f"/mammography/images/{ds.SOPInstanceUID}/frames/0_files/0/0_0.jpeg")[0] == 200
            )
        info = get_json(running, f"/mammography/images/{bare_tomo.SOPInstanceUID}/info")
        assert info["frames"] == 4 and any("functional groups" in n for n in info["notices"])
    finally:
        running.stop()


def test_cad_sr_marks(server: BackgroundServer, demo_files: list[Path]) -> None:
    from modules.mammography.cad import read_cad_sr
    from sample_data.mammography import LEFT_UOQ_MASS, mass_center

    cad_path = next(p for p in demo_files if "CAD" in p.name)
    lcc = dcmread(next(p for p in demo_files if p.name == "02-LCC.dcm" and "2025" in str(p)))
    report = read_cad_sr(dcmread(cad_path))
    assert report.notices == []
    on_lcc = [m for m in report.marks if m.sop_instance_uid == lcc.SOPInstanceUID]
    assert {m.role for m in on_lcc} == {"center", "outline"}  # by reference and by value
    center = next(m for m in on_lcc if m.role == "center")
    assert center.points[0] == pytest.approx(
        list(mass_center("L", "CC", (640, 512), LEFT_UOQ_MASS)), abs=0.01
    )
    assert center.certainty == 87 and center.finding == "Mammographic breast mass"
    # The mark sits on the drawn mass: brighter than the breast around it.
    x, y = (round(v) for v in center.points[0])
    pixels = lcc.pixel_array.astype(float)
    assert pixels[y - 3 : y + 4, x - 3 : x + 4].mean() > pixels[y - 3 : y + 4, x + 60 : x + 67].mean() + 300
    document = get_json(server, f"/mammography/studies/{CURRENT.uid_for(RIVERA)}/cad")
    assert len(document["reports"]) == 1 and len(document["marks"]) == 4
    assert {m["SOPInstanceUID"] for m in document["marks"]} >= {str(lcc.SOPInstanceUID)}
    assert get_json(server, f"/mammography/studies/{PRIOR.uid_for(RIVERA)}/cad")["marks"] == []


def test_a_burst_of_first_tiles_is_recorded_once(server: BackgroundServer, demo_files: list[Path]) -> None:
    """A viewer asks for an image's first screen of tiles at once: one audit record covers them all
    (each waiting for its own committed record, one after another, delayed the first screen)."""
    from concurrent.futures import ThreadPoolExecutor

    from server.security.audit import AuditFilter
    from server.security.service import security_of

    path = next(p for p in demo_files if p.name == "03-RMLO.dcm" and "2024" in str(p))
    sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    tiles = [
        f"/mammography/images/{sop}/frames/0_files/{level}/0_0.jpeg?window={w},2000"
        for level in (8, 9, 10)
        for w in (1000, 1500, 2000, 2500)
    ]
    with ThreadPoolExecutor(len(tiles)) as pool:
        assert [status for status, _, _ in pool.map(lambda t: get(server, t), tiles)] == [200] * len(tiles)
    trail = security_of(server.ctx).audit
    records = [r for r in trail.iterate(AuditFilter()) if f"/images/{sop}/frames/" in r["resource"]]
    assert len(records) == 1, [r["resource"] for r in records]


def test_module_claims_and_builds_pyramids_ahead(server: BackgroundServer) -> None:
    import time

    from modules.mammography import module
    from server.modules import SeriesRecord

    def series(*sop_classes: str, modality: str = "MG") -> SeriesRecord:
        return SeriesRecord("1.2", "1.2.3", modality, frozenset(sop_classes))

    assert module.claims(series("1.2.840.10008.5.1.4.1.1.1.2"))
    assert module.claims(series("1.2.840.10008.5.1.4.1.1.13.1.3"))
    assert module.claims(series("1.2.840.10008.5.1.4.1.1.88.50", modality="SR"))
    assert not module.claims(series("1.2.840.10008.5.1.4.1.1.2", modality="CT"))
    assert module.viewer_url("1.2", "1.2.3").startswith("/mammography/static/viewer.html?study=1.2")
    # Every image stored by the fixture gets its pyramid built in the background.
    root = server.ctx.settings.derived_dir / "pyramids"
    deadline = time.monotonic() + 20
    while len([p for p in root.glob("*.zarr")]) < 11:
        assert time.monotonic() < deadline, sorted(p.name for p in root.iterdir())
        time.sleep(0.1)
