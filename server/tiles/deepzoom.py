"""Deep Zoom (DZI) over any TileSource: descriptor, tile addressing, and tile production.

The DZI pyramid halves level 0 (rounding up) down to 1 × 1 px, as OpenSeadragon and
openslide's DeepZoomGenerator expect. A DZI tile that coincides exactly with a stored
tile (same level size, same tile grid, no overlap, not clipped at the edge) is the
stored tile's bytes; any other tile is cut from the best stored level, resized with the
same rounding as DeepZoomGenerator, and re-encoded. Producing a tile blocks: call
``read_tile`` from an executor, never on the event loop.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cached_property
from xml.sax.saxutils import quoteattr

from PIL import Image

from server.tiles.source import CachedTileReads, EncodedTile, TileNotFound, TileSource

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"


@dataclass(frozen=True)
class TilePlan:
    """Where a DZI tile comes from: a stored tile as is, or a region to resize."""

    source_level: int
    passthrough: tuple[int, int] | None  # (column, row) of the stored tile, when it coincides
    region: tuple[int, int, int, int]  # x, y, width, height in the source level's pixels
    size: tuple[int, int]  # the DZI tile's width and height


def dzi_level_dimensions(width: int, height: int) -> list[tuple[int, int]]:
    """Sizes of the DZI levels, from 1 × 1 (level 0) up to the full image."""
    sizes = [(width, height)]
    while sizes[-1] != (1, 1):
        w, h = sizes[-1]
        sizes.append((max(1, -(-w // 2)), max(1, -(-h // 2))))
    return sizes[::-1]


def best_level_for_downsample(downsamples: list[float], downsample: float) -> int:
    """The smallest stored level still at least as detailed as asked (openslide's rule)."""
    for i, level_downsample in enumerate(downsamples):
        if downsample < level_downsample:
            return max(0, i - 1)
    return len(downsamples) - 1


class DeepZoom:
    """DZI view of a TileSource for one tile size, overlap and JPEG quality."""

    def __init__(
        self,
        source: TileSource,
        tile_size: int | None = None,
        overlap: int = 0,
        quality: int = 85,
    ) -> None:
        base = source.levels[0]
        if tile_size is None:
            square = base.tile_width == base.tile_height
            tile_size = base.tile_width if square and 64 <= base.tile_width <= 2048 else 254
        if tile_size < 1 or overlap < 0:
            raise ValueError("tile size must be positive and overlap non-negative")
        self.source = source
        self.tile_size = tile_size
        self.overlap = overlap
        self.quality = quality
        self.level_dimensions = dzi_level_dimensions(base.width, base.height)
        self.level_count = len(self.level_dimensions)
        self.level_tiles = [(-(-w // tile_size), -(-h // tile_size)) for w, h in self.level_dimensions]
        self._downsamples = [level.downsample for level in source.levels]

    @cached_property
    def identity(self) -> str:
        """Keys cached tiles: the source's pixels plus everything that shapes a tile."""
        return f"{self.source.identity}/{self.tile_size}/{self.overlap}/{self.quality}"

    def descriptor(self) -> str:
        width, height = self.level_dimensions[-1]
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns={quoteattr(DZI_NAMESPACE)} Format="jpeg" Overlap="{self.overlap}" '
            f'TileSize="{self.tile_size}"><Size Width="{width}" Height="{height}"/></Image>\n'
        )

    def plan(self, dz_level: int, column: int, row: int) -> TilePlan:
        """Map a DZI address to stored data; raises TileNotFound outside the pyramid."""
        if not 0 <= dz_level < self.level_count:
            raise TileNotFound(f"level {dz_level} is outside 0..{self.level_count - 1}")
        columns, rows = self.level_tiles[dz_level]
        if not (0 <= column < columns and 0 <= row < rows):
            raise TileNotFound(
                f"tile {column}_{row} is outside level {dz_level} ({columns} columns × {rows} rows)"
            )
        z_width, z_height = self.level_dimensions[dz_level]
        l0_downsample = 2.0 ** (self.level_count - dz_level - 1)
        index = best_level_for_downsample(self._downsamples, l0_downsample)
        level = self.source.levels[index]
        # A stored level of exactly this DZI level's size is read 1:1 (its nominal downsample is
        # a power of two even when rounding made the measured one, e.g. 7.99, slightly less).
        exact = (level.width, level.height) == (z_width, z_height)
        l_downsample = 1.0 if exact else l0_downsample / level.downsample
        t, o = self.tile_size, self.overlap
        tl = (o * (column != 0), o * (row != 0))
        br = (o * (column != columns - 1), o * (row != rows - 1))
        size = (
            min(t, z_width - t * column) + tl[0] + br[0],
            min(t, z_height - t * row) + tl[1] + br[1],
        )
        l_x = l_downsample * (t * column - tl[0])
        l_y = l_downsample * (t * row - tl[1])
        l_width = int(min(math.ceil(l_downsample * size[0]), level.width - math.ceil(l_x)))
        l_height = int(min(math.ceil(l_downsample * size[1]), level.height - math.ceil(l_y)))
        region = (int(l_x), int(l_y), l_width, l_height)
        coincides = o == 0 and exact and level.tile_width == t and level.tile_height == t and size == (t, t)
        return TilePlan(index, (column, row) if coincides else None, region, size)

    def read_tile_nowait(self, dz_level: int, column: int, row: int) -> EncodedTile | None:
        """The tile if it is a stored tile the OS has in memory; None means "use read_tile in an executor".

        Never blocks: fine on the event loop. Raises TileNotFound like ``plan``.
        """
        plan = self.plan(dz_level, column, row)
        if plan.passthrough is None or not isinstance(self.source, CachedTileReads):
            return None
        tile = self.source.read_encoded_tile_nowait(plan.source_level, *plan.passthrough)
        return tile if tile is not None and tile.media_type == "image/jpeg" else None

    def read_tile(self, dz_level: int, column: int, row: int) -> EncodedTile:
        """The encoded DZI tile; blocking (file reads, maybe decode and encode)."""
        plan = self.plan(dz_level, column, row)
        if plan.passthrough is not None:
            stored = self.source.read_encoded_tile(plan.source_level, *plan.passthrough)
            if stored is not None and stored.media_type == "image/jpeg":
                return stored
        x, y, width, height = plan.region
        image = self.source.read_region(plan.source_level, x, y, width, height)
        if image.size != plan.size:
            image = image.resize(plan.size, Image.Resampling.LANCZOS, reducing_gap=2.0)
        return EncodedTile(encode_jpeg(image, self.quality), "image/jpeg")


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
