"""Colour management: ICC profile in /info, ``?color=srgb`` tiles converted, stored tiles untouched.

The wide-gamut slide carries a matrix/TRC RGB profile written here byte by byte (Wide Gamut
RGB primaries, D50, gamma 2.2): its pixel values mean more saturated colours than the same
values in sRGB, so converted tiles must come out more saturated. An sRGB profile changes
nothing beyond JPEG tolerance.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image, ImageCms

from sample_data.wsi import SIZES, GeneratedSlide, generate
from server.config import load_settings
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import free_port

SCREENSHOTS = Path(__file__).parent / "artifacts"
D50 = (0.9642, 1.0, 0.8249)
WIDE_GAMUT = {  # Wide Gamut RGB colorants, adapted to D50 (Lindbloom)
    b"rXYZ": (0.7165, 0.2587, 0.0),
    b"gXYZ": (0.1010, 0.7247, 0.0512),
    b"bXYZ": (0.1467, 0.0166, 0.7739),
}


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values: tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in values)


def _description(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">II", 0, 0)  # no Unicode description
        + struct.pack(">HB", 0, 0)
        + b"\0" * 67  # no ScriptCode description
    )


def matrix_trc_profile(
    description: str, colorants: dict[bytes, tuple[float, float, float]], gamma: float
) -> bytes:
    """An ICC v2 RGB display profile: description, D50 white, three colorants, one gamma curve per channel."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [
        (b"desc", _description(description)),
        (b"wtpt", _xyz(D50)),
        *[(signature, _xyz(xyz)) for signature, xyz in colorants.items()],
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0No copyright, test data\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 24  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # perceptual
        + b"".join(_s15(v) for v in D50)
        + b"\0" * 48  # creator, ID, reserved
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def restamped(slide: GeneratedSlide, out: Path, series_number: int, profile: bytes | None) -> list[Path]:
    """The slide's files as another series of the same study, with ``profile`` (None: no profile)."""
    study = str(slide.spec.study_instance_uid)
    series = pydicom.uid.generate_uid(entropy_srcs=[study, str(series_number)])
    paths = []
    out.mkdir(parents=True, exist_ok=True)
    for path in slide.dicom_files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber = series, series_number
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[series, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ContainerIdentifier = f"{ds.ContainerIdentifier} #{series_number}"
        for item in ds.OpticalPathSequence:
            if profile is None:
                del item.ICCProfile
            else:
                item.ICCProfile = profile
        paths.append(out / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@dataclass
class Slides:
    url: str
    slide: GeneratedSlide
    srgb: str  # series UIDs
    wide: str
    none: str


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slides]:
    slide = generate(SIZES["small"], tmp_path_factory.mktemp("wsi"))
    out = tmp_path_factory.mktemp("variants")
    wide = restamped(slide, out / "wide", 11, matrix_trc_profile("Wide Gamut RGB (test)", WIDE_GAMUT, 2.2))
    bare = restamped(slide, out / "none", 12, None)
    settings = load_settings(
        {},
        data_dir=tmp_path_factory.mktemp("archive"),
        port=0,
        dicom_enabled=False,
        dicom_port=free_port(),
        worker_threads=2,
    )
    server = BackgroundServer.start(settings)
    try:
        for path in [*slide.dicom_files, *wide, *bare]:
            assert server.ctx.archive.ingest_path(path).ok
        uid = lambda paths: str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)  # noqa: E731
        yield Slides(server.url, slide, str(slide.spec.series_instance_uid), uid(wide), uid(bare))
    finally:
        server.stop()


def base(slides: Slides, series: str) -> str:
    return f"{slides.url}/pathology/slides/{series}"


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def saturation(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1) - rgb.min(axis=-1)


def test_info_tells_whether_there_is_a_profile(slides: Slides) -> None:
    srgb = requests.get(base(slides, slides.srgb) + "/info", timeout=10).json()
    assert srgb["icc_profile"] is True and "sRGB" in srgb["icc_profile_description"]
    assert srgb["optical_paths"][0]["icc_profile"] is True
    wide = requests.get(base(slides, slides.wide) + "/info", timeout=10).json()
    assert wide["icc_profile"] is True and wide["icc_profile_description"] == "Wide Gamut RGB (test)"
    bare = requests.get(base(slides, slides.none) + "/info", timeout=10).json()
    assert bare["icc_profile"] is False and bare["icc_profile_description"] is None


def test_stored_tiles_stay_passthrough_and_srgb_is_its_own_variant(slides: Slides) -> None:
    url = base(slides, slides.wide) + "_files/11/3_2.jpeg"
    stored = requests.get(url, timeout=10)
    assert stored.content == slides.slide.level_tiles[0][2 * 8 + 3]  # byte-for-byte the stored frame
    assert requests.get(url + "?color=stored", timeout=10).content == stored.content
    managed = requests.get(url + "?color=srgb", timeout=10)
    assert managed.status_code == 200 and managed.headers["Content-Type"] == "image/jpeg"
    assert managed.headers["ETag"] != stored.headers["ETag"]
    again = requests.get(url + "?color=srgb", headers={"If-None-Match": managed.headers["ETag"]}, timeout=10)
    assert again.status_code == 304
    assert requests.get(url + "?color=srgb", timeout=10).content == managed.content  # cached, stable
    assert requests.get(url, timeout=10).content == stored.content  # the variants do not mix in the cache


def test_wide_gamut_tiles_become_more_saturated(slides: Slides) -> None:
    """Wide-gamut values shown on an sRGB screen look dull; converted, tissue colours gain saturation."""
    url = base(slides, slides.wide) + "_files/11/3_2.jpeg"
    stored = pixels(requests.get(url, timeout=10).content)
    managed = pixels(requests.get(url + "?color=srgb", timeout=10).content)
    tissue = saturation(stored) > 40
    assert tissue.mean() > 0.2, "the test tile should show tissue"
    gain = saturation(managed)[tissue].mean() - saturation(stored)[tissue].mean()
    assert gain > 15, gain
    # the same conversion done independently with little-cms on the decoded stored tile
    profile = ImageCms.ImageCmsProfile(
        io.BytesIO(matrix_trc_profile("Wide Gamut RGB (test)", WIDE_GAMUT, 2.2))
    )
    expected = ImageCms.profileToProfile(
        Image.fromarray(stored.astype(np.uint8)), profile, ImageCms.createProfile("sRGB"), outputMode="RGB"
    )
    assert expected is not None
    assert np.abs(managed - np.asarray(expected, dtype=np.int16)).mean() < 4.0  # JPEG re-encoding, 4:2:0
    # a resampled (lower-level) tile is converted too
    low = base(slides, slides.wide) + "_files/9/0_0.jpeg"
    tissue_low = saturation(pixels(requests.get(low, timeout=10).content))
    assert (
        saturation(pixels(requests.get(low + "?color=srgb", timeout=10).content)).mean()
        > tissue_low.mean() + 5
    )


def test_srgb_profile_leaves_pixels_alone(slides: Slides) -> None:
    url = base(slides, slides.srgb) + "_files/11/3_2.jpeg"
    stored = pixels(requests.get(url, timeout=10).content)
    managed = pixels(requests.get(url + "?color=srgb", timeout=10).content)
    difference = np.abs(managed - stored)
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 8


def test_associated_images_and_descriptors(slides: Slides) -> None:
    wide = base(slides, slides.wide)
    thumbnail = requests.get(wide + "/associated/thumbnail.jpeg", timeout=10)
    managed = requests.get(wide + "/associated/thumbnail.jpeg?color=srgb", timeout=10)
    assert managed.status_code == 200 and managed.headers["ETag"] != thumbnail.headers["ETag"]
    assert saturation(pixels(managed.content)).mean() > saturation(pixels(thumbnail.content)).mean() + 3
    dzi = requests.get(wide + ".dzi?color=srgb", timeout=10)
    assert dzi.status_code == 200 and dzi.text == requests.get(wide + ".dzi", timeout=10).text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("{none}_files/11/3_2.jpeg?color=srgb", 404),  # no profile: nothing to convert from
        ("{none}.dzi?color=srgb", 404),
        ("{none}/associated/label.jpeg?color=srgb", 404),
        ("{wide}_files/11/3_2.jpeg?color=p3", 400),
        ("{wide}.dzi?color=adobe", 400),
        ("{wide}_files/99/0_0.jpeg?color=srgb", 404),
    ],
)
def test_bad_colour_requests_are_problems(slides: Slides, path: str, status: int) -> None:
    url = f"{slides.url}/pathology/slides/" + path.format(none=slides.none, wide=slides.wide)
    response = requests.get(url, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert requests.get(base(slides, slides.none) + "_files/11/3_2.jpeg", timeout=10).status_code == 200


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_viewer_colour_toggle_redraws_tiles(slides: Slides) -> None:
    from playwright.sync_api import sync_playwright

    url = f"{slides.url}/pathology/static/viewer.html?study={slides.slide.spec.study_instance_uid}&series={slides.wide}"
    errors: list[str] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("request", lambda r: requested.append(r.url) if "_files/" in r.url else None)
            page.goto(url)
            wait_for_tiles(page, 4)
            assert page.is_visible("#color-mode")
            assert "Wide Gamut RGB (test)" in (page.get_attribute("#color-mode", "title") or "")
            page.wait_for_timeout(500)
            viewer = page.locator("#viewer")
            before = np.asarray(Image.open(io.BytesIO(viewer.screenshot())).convert("RGB"), dtype=np.int16)
            drawn = int(page.get_attribute("body", "data-tiles-drawn") or 0)
            page.select_option("#color-mode", "srgb")
            wait_for_tiles(page, drawn + 4)
            page.wait_for_timeout(800)
            after = np.asarray(Image.open(io.BytesIO(viewer.screenshot())).convert("RGB"), dtype=np.int16)
            assert any("color=srgb" in r for r in requested), requested[-3:]
            assert page.get_attribute("body", "data-color") == "srgb"
            tissue = saturation(before) > 40
            assert tissue.mean() > 0.05
            assert saturation(after)[tissue].mean() > saturation(before)[tissue].mean() + 10
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "pathology-colour-managed.png"))
            page.select_option("#color-mode", "stored")
            page.wait_for_timeout(800)
            assert page.get_attribute("body", "data-color") == "stored"
        finally:
            browser.close()
    assert not errors, errors


def wait_for_tiles(page: object, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while int(page.get_attribute("body", "data-tiles-drawn") or 0) < count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"fewer than {count} tiles drawn in {timeout} s"
        page.wait_for_timeout(100)  # type: ignore[attr-defined]
