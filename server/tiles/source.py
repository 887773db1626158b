"""The one protocol every deep-zoomable image implements, whatever its format.

A source describes its stored pyramid (levels with their downsample) and hands out
*encoded* tiles as stored, so the engine can pass them through untouched; decoding
is asked for only when a requested tile does not coincide with a stored one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from PIL import Image


class TileError(Exception):
    """Base of the tiling engine's errors."""


class TileNotFound(TileError, LookupError):
    """The level, column or row lies outside the pyramid (a client error, answered 404)."""


class SourceUnreadable(TileError):
    """The image's stored data cannot be read or decoded (a server-side problem)."""


@dataclass(frozen=True)
class Level:
    """One stored resolution: its size in pixels and its downsample from level 0."""

    width: int
    height: int
    downsample: float
    tile_width: int
    tile_height: int

    @property
    def columns(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_height)


@dataclass(frozen=True)
class EncodedTile:
    """A tile as stored: the bytes a client can decode directly, and their media type."""

    data: bytes
    media_type: str  # "image/jpeg", "image/png", ...


@runtime_checkable
class TileSource(Protocol):
    """What the engine needs of an image; implementations must be thread-safe.

    ``read_encoded_tile`` returns None when the stored tile is not in a format a
    browser decodes (JPEG 2000, uncompressed); the engine then goes through
    ``read_region``. Level 0 is the full resolution.
    """

    @property
    def levels(self) -> Sequence[Level]: ...

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Physical pixel size of level 0 in micrometres (x, y), None when not calibrated."""

    @property
    def identity(self) -> str:
        """Changes whenever the pixels may change: keys the tile cache and the ETags."""

    def read_encoded_tile(self, level: int, column: int, row: int) -> EncodedTile | None: ...

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        """RGB pixels of a rectangle in the level's own pixel coordinates (clipped at the edges)."""


@runtime_checkable
class CachedTileReads(Protocol):
    """Optional: a source whose stored tiles can be read without blocking when the OS has them cached.

    ``read_encoded_tile_nowait`` returns None whenever the read might wait for a disk (or
    the tile needs decoding); the engine then uses the executor. Safe on the event loop.
    """

    def read_encoded_tile_nowait(self, level: int, column: int, row: int) -> EncodedTile | None: ...
