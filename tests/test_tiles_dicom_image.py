"""The grayscale pyramid source: tiles equal the windowed full image, built once, errors are clear."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset

from sample_data.mammography import CURRENT, mammogram, tomosynthesis
from sample_data.radiology import rgb_secondary_capture
from server.config import Settings
from server.context import ServerContext
from server.imaging.rendering import Window, to_display
from server.serve import build_context
from server.tiles import DeepZoom, TileNotFound
from server.tiles.dicom_image import (
    NotAGrayscaleImage,
    halve,
    open_dicom_image,
    pyramid_store,
)

SHAPE = (1100, 700)  # rows, columns: three levels (1100 → 550 → 275 rows)


def _bytes(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def mg_ctx(sqlite_settings: Settings) -> Iterator[ServerContext]:
    ctx = build_context(sqlite_settings)
    yield ctx
    ctx.executor.shutdown(wait=True)
    ctx.archive.close()


def _store(ctx: ServerContext, ds: FileDataset) -> str:
    outcome = ctx.archive.ingest_bytes(_bytes(ds))
    assert outcome.ok, outcome.reason
    return str(ds.SOPInstanceUID)


def _full(ds: FileDataset) -> np.ndarray:
    return dcmread(io.BytesIO(_bytes(ds))).pixel_array


def test_level_zero_regions_equal_the_windowed_full_image(mg_ctx: ServerContext) -> None:
    ds = mammogram(CURRENT, "R", "CC", 1, seed=7, shape=SHAPE, sigmoid=True)
    sop = _store(mg_ctx, ds)
    source = open_dicom_image(mg_ctx, sop)
    assert [(lv.width, lv.height) for lv in source.levels] == [(700, 1100), (350, 550), (175, 275)]
    full = _full(ds)
    for window in (None, Window(2000, 1500), Window(2400, 800, "sigmoid")):
        expected = to_display(full, ds, window)
        region = source.windowed(window).read_region(0, 300, 600, 512, 512)
        got = np.asarray(region.convert("L"))
        assert got.shape == (500, 400)  # clipped at the edges
        assert np.array_equal(got, expected[600:1100, 300:700])


def test_downsampled_levels_are_means_of_the_stored_values(mg_ctx: ServerContext) -> None:
    ds = mammogram(CURRENT, "L", "MLO", 2, seed=8, shape=SHAPE)
    source = open_dicom_image(mg_ctx, _store(mg_ctx, ds))
    full = _full(ds)
    level1 = source.read_values(1, 0, 0, 350, 550)
    assert np.array_equal(level1, halve(full))
    block = full[:2, :2].astype(float).mean()
    assert abs(int(level1[0, 0]) - block) <= 0.5
    # Windowed from the pyramid = windowed full image seen at half size, within rounding.
    window = Window(2100, 2600)
    rendered = np.asarray(source.windowed(window).read_region(1, 0, 0, 350, 550).convert("L")).astype(float)
    windowed_full = to_display(full, ds, window).astype(float)
    reference = windowed_full.reshape(550, 2, 350, 2).mean(axis=(1, 3))
    difference = np.abs(rendered - reference)
    linear = (windowed_full.reshape(550, 2, 350, 2).min(axis=(1, 3)) > 0) & (reference < 255)
    assert difference[linear].max() <= 1.0  # where the window is linear: rounding only
    assert (difference > 1.0).mean() < 0.01  # clipping at the skin line: a thin rim


def test_dzi_tiles_match_within_jpeg_rounding(mg_ctx: ServerContext) -> None:
    ds = mammogram(CURRENT, "R", "MLO", 3, seed=9, shape=SHAPE)
    source = open_dicom_image(mg_ctx, _store(mg_ctx, ds))
    deepzoom = DeepZoom(source.windowed(None), quality=95)
    assert deepzoom.tile_size == 512
    top = deepzoom.level_count - 1
    tile = deepzoom.read_tile(top, 1, 1)
    assert tile.media_type == "image/jpeg"
    got = np.asarray(Image.open(io.BytesIO(tile.data)).convert("L")).astype(float)
    expected = to_display(_full(ds), ds)[512:1024, 512:700].astype(float)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 1.5


def test_pyramid_is_built_once_under_concurrent_first_requests(mg_ctx: ServerContext) -> None:
    ds = mammogram(CURRENT, "L", "CC", 4, seed=10, shape=SHAPE)
    sop = _store(mg_ctx, ds)
    sources = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            sources.append(open_dicom_image(mg_ctx, sop))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    store = pyramid_store(mg_ctx)
    assert store.builds == 1
    assert len({id(s.pyramid) for s in sources}) == 1
    root: Path = mg_ctx.settings.derived_dir / "pyramids"
    built = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    assert built == [f"{store.key_of(sources[0].instance)}.zarr"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_file_voi_lut_sequence_is_used_when_no_window_is_asked(mg_ctx: ServerContext) -> None:
    ds = mammogram(CURRENT, "R", "CC", 5, seed=11, shape=(600, 500))
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new("LUTData", "US", [v * 16 for v in range(4096)])
    lut.LUTExplanation = "CONTRAST"
    ds.VOILUTSequence = [lut]
    source = open_dicom_image(mg_ctx, _store(mg_ctx, ds))
    assert source.has_voi_lut
    got = np.asarray(source.windowed(None).read_region(0, 0, 0, 500, 600).convert("L"))
    full = _full(ds)
    expected = np.rint(full.astype(float) * 16 * 255 / 65535).astype(np.uint8)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert [name for name, _ in source.presets] == ["STANDARD", "DENSE"]


def test_multi_frame_stacks_and_frame_bounds(mg_ctx: ServerContext) -> None:
    ds, stack = tomosynthesis(CURRENT, "L", "CC", 10, seed=12, slices=6, shape=(300, 240))
    sop = _store(mg_ctx, ds)
    source = open_dicom_image(mg_ctx, sop, frame=2)
    assert source.number_of_frames == 6
    assert np.array_equal(source.read_values(0, 0, 0, 240, 300), stack[2])
    assert np.array_equal(source.read_frames(0, 1, 3), stack[1:4])
    assert source.identity != open_dicom_image(mg_ctx, sop, frame=3).identity
    with pytest.raises(TileNotFound):
        open_dicom_image(mg_ctx, sop, frame=6)
    with pytest.raises(TileNotFound):
        source.read_values(5, 0, 0, 1, 1)


def test_unknown_and_colour_instances_are_refused(mg_ctx: ServerContext) -> None:
    with pytest.raises(LookupError):
        open_dicom_image(mg_ctx, "1.2.3.4.5")
    rgb = rgb_secondary_capture()
    with pytest.raises(NotAGrayscaleImage):
        open_dicom_image(mg_ctx, _store(mg_ctx, rgb))


def test_calibration_is_at_the_breast_plane(mg_ctx: ServerContext) -> None:
    ds = mammogram(CURRENT, "R", "CC", 6, seed=13, shape=(600, 500))
    source = open_dicom_image(mg_ctx, _store(mg_ctx, ds))
    assert source.calibration.source.value == "imager-spacing-magnification"
    assert source.mpp == pytest.approx((200 / 1.07, 200 / 1.07))
