"""The tiling engine shared by every module that serves deep-zoomable images."""

from server.tiles.cache import CachedTile, TileCache, strong_etag, tile_cache_of
from server.tiles.deepzoom import DeepZoom, TilePlan, dzi_level_dimensions
from server.tiles.filehandles import FileHandleCache, OpenFile, pread_if_cached
from server.tiles.source import (
    CachedTileReads,
    EncodedTile,
    Level,
    SourceUnreadable,
    TileError,
    TileNotFound,
    TileSource,
)

__all__ = [
    "CachedTile",
    "CachedTileReads",
    "DeepZoom",
    "EncodedTile",
    "FileHandleCache",
    "Level",
    "OpenFile",
    "SourceUnreadable",
    "TileCache",
    "TileError",
    "TileNotFound",
    "TilePlan",
    "TileSource",
    "dzi_level_dimensions",
    "pread_if_cached",
    "strong_etag",
    "tile_cache_of",
]
