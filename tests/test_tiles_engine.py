"""The tiling engine on its own: DZI math, tile planning, the tile cache, HTTP validators."""

from __future__ import annotations

import io
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.tiles import (
    CachedTile,
    DeepZoom,
    EncodedTile,
    FileHandleCache,
    Level,
    TileCache,
    TileNotFound,
    TileSource,
    dzi_level_dimensions,
    strong_etag,
)
from server.tiles.deepzoom import best_level_for_downsample
from server.tiles.filehandles import pread_if_cached
from server.tiles.http import etag_matches


class ArraySource:
    """A pyramid held in memory, stored tiles encoded as JPEG on demand."""

    def __init__(self, width: int, height: int, tile: int = 256, levels: int = 3) -> None:
        yy, xx = np.mgrid[0:height, 0:width]
        smooth = [128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 23.0), (xx + yy) % 256]
        base = np.stack(smooth, axis=-1).astype(np.uint8)
        self.images = [Image.fromarray(base)]
        self._levels = [Level(width, height, 1.0, tile, tile)]
        for _ in range(1, levels):
            w, h = -(-self.images[-1].width // 2), -(-self.images[-1].height // 2)
            self.images.append(self.images[-1].resize((w, h), Image.Resampling.BOX))
            self._levels.append(Level(w, h, (width / w + height / h) / 2, tile, tile))
        self.encoded_reads = 0
        self.region_reads = 0

    @property
    def levels(self) -> Sequence[Level]:
        return self._levels

    @property
    def mpp(self) -> tuple[float, float] | None:
        return (0.5, 0.5)

    @property
    def identity(self) -> str:
        return "array"

    def read_encoded_tile(self, level: int, column: int, row: int) -> EncodedTile | None:
        self.encoded_reads += 1
        t = self._levels[level].tile_width
        tile = self.images[level].crop((column * t, row * t, column * t + t, row * t + t))
        buffer = io.BytesIO()
        tile.save(buffer, "JPEG", quality=90)
        return EncodedTile(buffer.getvalue(), "image/jpeg")

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        self.region_reads += 1
        return self.images[level].crop((x, y, x + width, y + height))


def test_array_source_is_a_tile_source() -> None:
    assert isinstance(ArraySource(300, 200, levels=1), TileSource)


def test_dzi_levels_halve_rounding_up_to_one_pixel() -> None:
    sizes = dzi_level_dimensions(2000, 1500)
    assert sizes[0] == (1, 1)
    assert sizes[-1] == (2000, 1500)
    assert sizes[-2] == (1000, 750)
    assert sizes[-4] == (250, 188)  # 375 / 2 rounds up
    assert len(sizes) == 12  # ceil(log2(2000)) + 1
    assert dzi_level_dimensions(1, 1) == [(1, 1)]


def test_best_level_follows_openslide() -> None:
    downsamples = [1.0, 2.0, 4.0, 7.99]
    assert best_level_for_downsample(downsamples, 1.0) == 0
    assert best_level_for_downsample(downsamples, 1.9) == 0
    assert best_level_for_downsample(downsamples, 2.0) == 1
    assert best_level_for_downsample(downsamples, 8.0) == 3
    assert best_level_for_downsample(downsamples, 64.0) == 3


def test_descriptor_is_dzi_xml() -> None:
    dz = DeepZoom(ArraySource(1000, 700))
    root = ET.fromstring(dz.descriptor())
    assert root.tag == "{http://schemas.microsoft.com/deepzoom/2008}Image"
    assert root.attrib == {"Format": "jpeg", "Overlap": "0", "TileSize": "256"}
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert size is not None and size.attrib == {"Width": "1000", "Height": "700"}


def test_tile_counts_and_edge_sizes() -> None:
    dz = DeepZoom(ArraySource(1000, 700))
    top = dz.level_count - 1
    assert dz.level_tiles[top] == (4, 3)
    assert dz.plan(top, 3, 2).size == (1000 - 768, 700 - 512)
    assert dz.plan(top, 0, 0).size == (256, 256)
    assert dz.plan(0, 0, 0).size == (1, 1)


@pytest.mark.parametrize("address", [(-1, 0, 0), (99, 0, 0), (10, 4, 0), (10, 0, 3), (10, -1, 0), (0, 1, 0)])
def test_addresses_outside_the_pyramid_are_not_found(address: tuple[int, int, int]) -> None:
    dz = DeepZoom(ArraySource(1000, 700))
    assert dz.level_count == 11
    with pytest.raises(TileNotFound):
        dz.plan(*address)


def test_coinciding_tiles_pass_through_and_others_are_resampled() -> None:
    source = ArraySource(1024, 768)
    dz = DeepZoom(source)
    top = dz.level_count - 1
    plan = dz.plan(top, 1, 1)
    assert plan.passthrough == (1, 1) and plan.source_level == 0
    assert dz.plan(top - 1, 1, 0).passthrough == (1, 0) and dz.plan(top - 1, 1, 0).source_level == 1
    assert dz.read_tile(top, 1, 1) == source.read_encoded_tile(0, 1, 1)
    # below the smallest stored level: cut from it and shrink
    small = dz.plan(top - 3, 0, 0)
    assert small.passthrough is None and small.source_level == 2
    tile = Image.open(io.BytesIO(dz.read_tile(top - 3, 0, 0).data))
    assert tile.size == (128, 96)


def test_edge_tiles_are_cropped_not_passed_through() -> None:
    source = ArraySource(1000, 700)
    dz = DeepZoom(source)
    top = dz.level_count - 1
    assert dz.plan(top, 3, 0).passthrough is None
    tile = Image.open(io.BytesIO(dz.read_tile(top, 3, 0).data))
    assert tile.size == (232, 256)
    expected = np.asarray(source.images[0].crop((768, 0, 1000, 256)), dtype=int)
    assert np.abs(np.asarray(tile, dtype=int) - expected).mean() < 3


def test_overlap_follows_deepzoom_rules() -> None:
    dz = DeepZoom(ArraySource(1000, 700), tile_size=254, overlap=1)
    top = dz.level_count - 1
    assert dz.plan(top, 0, 0).size == (255, 255)
    assert dz.plan(top, 1, 1).size == (256, 256)
    assert dz.plan(top, 1, 1).region[:2] == (253, 253)
    assert dz.plan(top, 1, 1).passthrough is None


def test_tile_cache_keeps_to_its_byte_budget() -> None:
    cache = TileCache(max_bytes=10_000)
    for i in range(20):
        cache.put(("s", i), CachedTile.of(bytes([i]) * 1000, "image/jpeg"))
    assert cache.bytes <= 10_000
    assert len(cache) == 10
    assert cache.get(("s", 0)) is None
    assert cache.get(("s", 19)) is not None
    cache.get(("s", 10))  # recently used survives the next eviction
    cache.put(("s", 20), CachedTile.of(b"x" * 1000, "image/jpeg"))
    assert cache.get(("s", 10)) is not None and cache.get(("s", 11)) is None
    cache.put(("s", "huge"), CachedTile.of(b"x" * 5000, "image/jpeg"))
    assert cache.get(("s", "huge")) is None  # bigger than an eighth of the budget
    assert cache.discard_prefix("s") == 10
    assert len(cache) == 0 and cache.bytes == 0


def test_tile_cache_is_thread_safe() -> None:
    cache = TileCache(max_bytes=50_000)

    def hammer(offset: int) -> None:
        for i in range(2000):
            cache.put(("t", offset, i % 97), CachedTile.of(b"y" * (100 + i % 50), "image/jpeg"))
            cache.get(("t", offset, (i * 7) % 97))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.bytes == sum(len(cache.get(k).data) for k in list(cache._entries))  # type: ignore[union-attr]
    assert cache.bytes <= 50_000


def test_strong_etags_and_revalidation() -> None:
    etag = strong_etag(b"tile")
    assert etag.startswith('"') and not etag.startswith("W/")
    assert etag == strong_etag(b"tile") != strong_etag(b"tile2")
    assert etag_matches(etag, etag)
    assert etag_matches(f'"abc", {etag}', etag)
    assert etag_matches(f"W/{etag}", etag)
    assert etag_matches("*", etag)
    assert not etag_matches(None, etag)
    assert not etag_matches('"abc"', etag)


def test_file_handles_stay_valid_after_eviction(tmp_path: Path) -> None:
    files = FileHandleCache(capacity=2)
    paths = []
    for i in range(4):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]) * 10)
        paths.append(path)
    held = files.get(paths[0])
    for path in paths[1:]:
        files.get(path)
    assert files.get(paths[3]) is files.get(paths[3])
    import os

    assert os.pread(held.fd, 3, 0) == b"\0\0\0"  # evicted from the cache, still open for its holder


def test_pread_if_cached_never_waits(tmp_path: Path) -> None:
    path = tmp_path / "frames"
    path.write_bytes(bytes(range(256)) * 64)  # just written: in the page cache
    handle = FileHandleCache().get(path)
    assert pread_if_cached(handle.fd, 10, 256) == bytes(range(10))
    assert pread_if_cached(handle.fd, 0, 0) is None
    assert pread_if_cached(handle.fd, 100, len(path.read_bytes()) - 10) is None  # short read: not served
    assert FileHandleCache().cached(path) is None  # cached() never opens a file


def test_sources_without_nonblocking_reads_use_the_executor_path() -> None:
    dz = DeepZoom(ArraySource(1024, 768))
    assert dz.read_tile_nowait(dz.level_count - 1, 1, 1) is None
    with pytest.raises(TileNotFound):
        dz.read_tile_nowait(dz.level_count, 0, 0)
