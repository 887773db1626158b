"""HTTP caching for tiles: strong ETags, immutable Cache-Control, 304 on revalidation.

Tile URLs carry the source's identity (``?v=``) from the descriptor, so a tile under
one URL never changes and browsers may keep it for a year without asking again.
"""

from __future__ import annotations

from tornado.web import RequestHandler

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
