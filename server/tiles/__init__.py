"""The tiling engine shared by every module that serves deep-zoomable images."""

from server.tiles.cache import CachedTile, TileCache, strong_etag, tile_cache_of
from server.tiles.deepzoom import DeepZoom, TilePlan, dzi_level_dimensions
from server.tiles.filehandles import FileHandleCache, OpenFile
from server.tiles.source import EncodedTile, Level, SourceUnreadable, TileError, TileNotFound, TileSource

__all__ = [
    "CachedTile",
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
    "strong_etag",
    "tile_cache_of",
]
