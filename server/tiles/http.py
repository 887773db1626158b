"""HTTP caching for tiles: strong ETags, immutable Cache-Control, 304 on revalidation.

Tile URLs carry the source's identity (``?v=``) from the descriptor, so a tile under
one URL never changes and browsers may keep it for a year without asking again.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from tornado.web import RequestHandler

from server.tiles.cache import CachedTile, TileCache
from server.tiles.deepzoom import DeepZoom
from server.tiles.source import SourceUnreadable, TileNotFound
from server.web.base import ProblemError

if TYPE_CHECKING:
    from server.web.base import BaseHandler

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # descriptors and info: keep, but ask each time (cheap 304)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match with weak comparison (what 304 on GET uses)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in if_none_match.split(","))


def finish_cached(
    handler: RequestHandler, body: bytes, media_type: str, etag: str, cache_control: str = IMMUTABLE
) -> None:
    """Answer with validators; 304 without a body when the client already holds these bytes."""
    handler.set_header("ETag", etag)
    handler.set_header("Cache-Control", cache_control)
    if etag_matches(handler.request.headers.get("If-None-Match"), etag):
        handler.set_status(304)
        handler.finish()
        return
    handler.set_header("Content-Type", media_type)
    handler.finish(body)


TILE_NAME = re.compile(r"(\d{1,9})_(\d{1,9})\.(?:jpeg|jpg)")


def tile_address(level: str, name: str) -> tuple[int, int, int]:
    """``{level}/{col}_{row}.jpeg`` as numbers; ProblemError 400 when it is not a tile address."""
    match = TILE_NAME.fullmatch(name)
    if not level.isdigit() or len(level) > 3 or match is None:
        raise ProblemError(400, f"tile address {level}/{name[:40]} is not {{level}}/{{col}}_{{row}}.jpeg")
    return int(level), int(match[1]), int(match[2])


def produce_tile(deepzoom: DeepZoom, level: int, column: int, row: int) -> CachedTile:
    """Blocking: read (and if needed decode, resample, encode) one DZI tile, then hash it."""
    tile = deepzoom.read_tile(level, column, row)
    return CachedTile.of(tile.data, tile.media_type)


async def send_tile(
    handler: BaseHandler,
    deepzoom: DeepZoom,
    address: tuple[int, int, int],
    cache: TileCache,
    cache_control: str = IMMUTABLE,
) -> None:
    """The one way a DZI tile is answered: tile cache, else a stored tile already in memory read
    on the loop, else the executor; 404 for an address outside the pyramid; validators and 304."""
    key = (deepzoom.identity, *address)
    tile = cache.get(key)
    if tile is None:
        try:
            stored = deepzoom.read_tile_nowait(*address)
        except TileNotFound as exc:
            raise ProblemError(404, str(exc)) from exc
        if stored is not None:
            tile = CachedTile.of(stored.data, stored.media_type)
        else:
            try:
                tile = await handler.run_blocking(produce_tile, deepzoom, *address)
            except SourceUnreadable as exc:
                log.warning("tile %s of %s unreadable: %s", address, deepzoom.identity, exc)
                raise ProblemError(500, f"the stored tile data cannot be read: {exc}") from exc
        cache.put(key, tile)
    finish_cached(handler, tile.data, tile.media_type, tile.etag, cache_control)
