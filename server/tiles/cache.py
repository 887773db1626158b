"""A byte-budgeted LRU of encoded tiles, shared by every handler of a process.

Budgeted in bytes, not entries, because a background tile is 1 kB and a tissue tile
50 kB. Lookups are a dict access under a lock, cheap enough for the event loop, so a
warm tile never needs an executor hop. Each process keeps its own cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedTile:
    data: bytes
    media_type: str
    etag: str  # strong: a hash of exactly these bytes

    @classmethod
    def of(cls, data: bytes, media_type: str) -> CachedTile:
        return cls(data, media_type, strong_etag(data))


def strong_etag(data: bytes) -> str:
    """A strong validator: equal ETags mean byte-identical bodies."""
    return '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'


class TileCache:
    """LRU by bytes. Thread-safe; tiles larger than an eighth of the budget are not kept."""

    def __init__(self, max_bytes: int = 256 * 1024**2) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, CachedTile] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> CachedTile | None:
        with self._lock:
            tile = self._entries.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: Hashable, tile: CachedTile) -> None:
        size = len(tile.data)
        if size > self.max_bytes // 8:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= len(old.data)
            self._entries[key] = tile
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= len(evicted.data)

    def discard_prefix(self, prefix: str) -> int:
        """Drop every tile whose key starts with ``prefix`` (keys are tuples led by a source identity)."""
        with self._lock:
            doomed = [k for k in self._entries if isinstance(k, tuple) and str(k[0]).startswith(prefix)]
            for key in doomed:
                self.bytes -= len(self._entries.pop(key).data)
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


def tile_cache_of(extras: dict[str, object], max_bytes: int = 256 * 1024**2) -> TileCache:
    """The process's one tile cache (kept in ``ServerContext.extras``), created on first use."""
    cache = extras.get("tiles.cache")
    if not isinstance(cache, TileCache):
        cache = extras.setdefault("tiles.cache", TileCache(max_bytes))
    assert isinstance(cache, TileCache)
    return cache
