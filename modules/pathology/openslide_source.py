"""Vendor slide files (SVS, NDPI, MRXS, SCN, generic tiled TIFF…) as a TileSource, via openslide.

Where the file is a TIFF whose level tiles are browser-decodable JPEG (YCbCr; JPEGTables
merged in when the tiles are abbreviated), the stored tile is passed through as bytes,
like DICOM WSI; every other read goes through openslide's ``read_region``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from server.tiles import EncodedTile, FileHandleCache, Level, SourceUnreadable, TileNotFound

TIFF_JPEG = 7
PHOTOMETRIC_YCBCR = 6


class SlideFileError(ValueError):
    """The file is not a slide openslide can open, or its data cannot be read."""


@dataclass(frozen=True)
class _RawTiles:
    """Where a level's JPEG tiles lie in the TIFF."""

    offsets: np.ndarray
    byte_counts: np.ndarray
    jpeg_tables: bytes | None


def _raw_tiles(path: Path, levels: Sequence[Level]) -> list[_RawTiles | None]:
    """Per level, the tile byte ranges when the level is a YCbCr-JPEG tiled TIFF page."""
    try:
        import tifffile
    except ImportError:
        return [None] * len(levels)
    found: list[_RawTiles | None] = [None] * len(levels)
    try:
        with tifffile.TiffFile(path) as tiff:
            for page in tiff.pages:
                if not isinstance(page, tifffile.TiffPage) or not page.is_tiled:
                    continue
                if page.compression != TIFF_JPEG or page.photometric != PHOTOMETRIC_YCBCR:
                    continue
                for i, level in enumerate(levels):
                    same = (page.imagewidth, page.imagelength) == (level.width, level.height)
                    if same and (page.tilewidth, page.tilelength) == (level.tile_width, level.tile_height):
                        tables = page.jpegtables
                        found[i] = _RawTiles(
                            np.asarray(page.dataoffsets, dtype=np.int64),
                            np.asarray(page.databytecounts, dtype=np.int64),
                            bytes(tables) if tables else None,
                        )
    except Exception:  # not a TIFF (MRXS, NDPI quirks…): openslide reads everything
        return [None] * len(levels)
    return found


class OpenSlideSource:
    """A vendor slide file. openslide reads are thread-safe and release the GIL."""

    def __init__(self, path: Path, files: FileHandleCache | None = None) -> None:
        self.path = Path(path)
        try:
            self.slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideFileError(f"{self.path.name}: openslide cannot open this file ({exc})") from exc
        props = self.slide.properties
        self._levels = []
        for i, ((width, height), downsample) in enumerate(
            zip(self.slide.level_dimensions, self.slide.level_downsamples, strict=True)
        ):
            tile_w = int(props.get(f"openslide.level[{i}].tile-width", 256))
            tile_h = int(props.get(f"openslide.level[{i}].tile-height", 256))
            self._levels.append(Level(width, height, float(downsample), tile_w, tile_h))
        stat = self.path.stat()
        self._identity = hashlib.blake2b(
            f"{self.path.resolve()}/{stat.st_size}/{stat.st_mtime_ns}".encode(), digest_size=12
        ).hexdigest()
        self.files = files or FileHandleCache(4)
        self._raw = _raw_tiles(self.path, self._levels)
        self.background = "#" + props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")

    @property
    def levels(self) -> Sequence[Level]:
        return self._levels

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def vendor(self) -> str:
        return self.slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "")

    @property
    def mpp(self) -> tuple[float, float] | None:
        props = self.slide.properties
        try:
            return float(props[openslide.PROPERTY_NAME_MPP_X]), float(props[openslide.PROPERTY_NAME_MPP_Y])
        except (KeyError, ValueError):
            return None

    @property
    def objective_power(self) -> float | None:
        try:
            return float(self.slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
        except (KeyError, ValueError):
            return None

    @property
    def associated_images(self) -> list[str]:
        return sorted(self.slide.associated_images)

    def read_encoded_tile(self, level: int, column: int, row: int) -> EncodedTile | None:
        raw = self._raw[level]
        if raw is None:
            return None
        lv = self._levels[level]
        if not (0 <= column < lv.columns and 0 <= row < lv.rows):
            raise TileNotFound(f"stored tile {column}_{row} is outside level {level}")
        index = row * lv.columns + column
        offset, count = int(raw.offsets[index]), int(raw.byte_counts[index])
        if count == 0:
            return None
        handle = self.files.get(self.path)  # held until the read is done: eviction cannot close it
        data = os.pread(handle.fd, count, offset)
        if raw.jpeg_tables:  # abbreviated tile: tables (minus EOI) + tile (minus SOI)
            data = raw.jpeg_tables[:-2] + data[2:]
        return EncodedTile(data, "image/jpeg")

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        downsample = self._levels[level].downsample
        location = (int(x * downsample), int(y * downsample))
        try:
            rgba = self.slide.read_region(location, level, (max(1, width), max(1, height)))
        except openslide.OpenSlideError as exc:
            raise SourceUnreadable(f"{self.path.name}: {exc}") from exc
        canvas = Image.new("RGB", rgba.size, self.background)
        canvas.paste(rgba, mask=rgba)
        return canvas
