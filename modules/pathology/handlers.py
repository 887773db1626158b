"""HTTP routes of the pathology module: DZI descriptors and tiles, slide info, associated images.

A warm tile is answered from the process's tile cache on the event loop (one dict
lookup, no executor hop); so is a stored tile whose bytes the OS page cache holds (one
``preadv(RWF_NOWAIT)``, which cannot wait for a disk). Anything else is read, and only
if needed decoded and re-encoded, in the executor.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from modules.pathology.alignment import AlignmentError, AlignmentStore, validate_alignment
from modules.pathology.annotation_readback import DicomAnnotationReader, slide_frame
from modules.pathology.annotations import AnnotationError, AnnotationStore, validate_collection
from modules.pathology.color import COLOR_CHOICES, QUALITY, SRGB, ColorTransform, NoColorProfile
from modules.pathology.slides import NoSuchView, NotASlide, Slide, SlideLibrary, is_uid
from server.context import ServerContext
from server.tiles import CachedTile, DeepZoom, TileCache
from server.tiles.deepzoom import encode_jpeg
from server.tiles.http import IMMUTABLE, REVALIDATE, finish_cached, send_tile, tile_address
from server.web.base import BaseHandler, ProblemError

log = logging.getLogger(__name__)
PLANE = re.compile(r"\d{1,4}")
MAX_PATH_IDENTIFIER = 64  # OpticalPathIdentifier is an SH (16 characters); leave room, refuse junk
MAX_ANNOTATION_BYTES = 8 * 1024**2
ARCHIVE_CHOICES = ("", "1", "true", "ann", "sr")


class SlideHandler(BaseHandler):
    library: SlideLibrary
    cache: TileCache

    def initialize(self, ctx: ServerContext, library: SlideLibrary, cache: TileCache) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.library = library
        self.cache = cache

    async def slide(self, series_uid: str, revalidate: bool = False) -> Slide:
        # An opened slide's UID was validated when it was opened: the warm path skips the regex.
        slide = None if revalidate else self.library.cached(series_uid)
        if slide is None:
            if not is_uid(series_uid):
                raise ProblemError(400, f"{series_uid[:80]!r} is not a Series Instance UID")
            try:
                slide = await self.run_blocking(self.library.open, series_uid, revalidate)
            except NotASlide as exc:
                raise ProblemError(404, f"series {series_uid} is not a whole-slide image: {exc}") from exc
        return slide

    def selection(self) -> tuple[str | None, int]:
        """``?path=`` (OpticalPathIdentifier) and ``?z=`` (focal plane index); absent: the first of each."""
        arguments = self.request.query_arguments
        if "path" not in arguments and "z" not in arguments:
            return None, 0  # the common case: no decoding of arguments on the hot path
        path = self.get_query_argument("path", "") or None
        plane = self.get_query_argument("z", "0") or "0"
        if not PLANE.fullmatch(plane):
            raise ProblemError(400, f"focal plane {plane[:20]!r} is not a non-negative index")
        if path is not None and len(path) > MAX_PATH_IDENTIFIER:
            raise ProblemError(400, "the optical path identifier is too long")
        return path, int(plane)

    def wants_srgb(self) -> bool:
        """``?color=srgb``: colour-managed tiles; absent or ``stored``: the pixels as stored."""
        if "color" not in self.request.query_arguments:
            return False  # the common case, checked without decoding arguments
        color = self.get_query_argument("color", "")
        if color not in COLOR_CHOICES:
            raise ProblemError(400, f"color={color[:20]!r}: expected stored or srgb")
        return color == SRGB

    async def color_managed(self, slide: Slide, deepzoom: DeepZoom) -> DeepZoom:
        """The colour-managed twin of a view; 404 when the slide has no ICC profile to convert from."""
        found = slide.color.cached_view(deepzoom)
        if found is not None:
            return found
        try:
            return await self.run_blocking(slide.color_view, deepzoom)
        except NoColorProfile as exc:
            raise ProblemError(
                404, f"slide {slide.series_instance_uid}: {exc}; only color=stored exists"
            ) from exc

    async def view(self, slide: Slide, path: str | None, plane: int) -> DeepZoom:
        """The DZI of the selected path and plane; 404 when the slide has no such view."""
        deepzoom = slide.cached_view(path, plane)
        if deepzoom is None:
            try:
                deepzoom = await self.run_blocking(slide.view, path, plane)
            except NoSuchView as exc:
                raise ProblemError(404, str(exc)) from exc
        return deepzoom


class DziHandler(SlideHandler):
    async def get(self, series_uid: str) -> None:
        selection = self.selection()
        srgb = self.wants_srgb()
        slide = await self.slide(series_uid, revalidate=True)
        deepzoom = await self.view(slide, *selection)
        if srgb:
            deepzoom = await self.color_managed(slide, deepzoom)
        body = deepzoom.descriptor().encode()
        finish_cached(self, body, "application/xml; charset=utf-8", CachedTile.of(body, "").etag, REVALIDATE)


class TileHandler(SlideHandler):
    async def get(self, series_uid: str, level: str, name: str) -> None:
        selection = self.selection()
        slide = await self.slide(series_uid)
        deepzoom = slide.cached_view(*selection) or await self.view(slide, *selection)
        version = self.get_query_argument("v", "")
        if version and version != deepzoom.source.identity:  # this process may hold an older pyramid
            slide = await self.slide(series_uid, revalidate=True)
            deepzoom = await self.view(slide, *selection)
        if self.wants_srgb():  # a tile variant of its own: own cache key (identity) and bytes (ETag)
            deepzoom = await self.color_managed(slide, deepzoom)
        address = tile_address(level, name)
        # Immutable only under the URL of this exact pyramid version (?v= from the descriptor);
        # anything else may change when instances arrive, so browsers revalidate (a cheap 304).
        versioned = version == deepzoom.source.identity
        await send_tile(self, deepzoom, address, self.cache, IMMUTABLE if versioned else REVALIDATE)


class InfoHandler(SlideHandler):
    async def get(self, series_uid: str) -> None:
        slide = await self.slide(series_uid, revalidate=True)
        info = await self.run_blocking(slide.info)  # may assemble the other paths' and planes' views
        self.set_header("Cache-Control", REVALIDATE)
        self.write_json(info)


class AssociatedImageHandler(SlideHandler):
    async def get(self, series_uid: str, kind: str) -> None:
        srgb = self.wants_srgb()
        slide = await self.slide(series_uid)
        if kind not in slide.source.associated:
            raise ProblemError(404, f"slide {series_uid} has no {kind[:20]} image")
        key = (slide.source.identity, "associated", kind, SRGB if srgb else "")
        tile = self.cache.get(key)
        if tile is None:
            try:
                tile = await self.run_blocking(self._produce, slide, kind, srgb)
            except NoColorProfile as exc:
                raise ProblemError(404, f"slide {series_uid}: {exc}; only color=stored exists") from exc
            self.cache.put(key, tile)
        finish_cached(self, tile.data, tile.media_type, tile.etag)

    @staticmethod
    def _produce(slide: Slide, kind: str, srgb: bool) -> CachedTile:
        if not srgb:
            stored = slide.source.associated_encoded(kind)
            if stored is not None:
                return CachedTile.of(stored.data, stored.media_type)
            return CachedTile.of(encode_jpeg(slide.source.associated_image(kind), 90), "image/jpeg")
        # the label's or overview's own profile (another camera took it), else the slide's
        transform: ColorTransform
        try:
            transform = slide.color.transform(slide.source.associated[kind], None)
        except NoColorProfile:
            transform = slide.color.transform(slide.source.base, slide.source.default_path)
        image = transform.apply(slide.source.associated_image(kind))
        return CachedTile.of(encode_jpeg(image, QUALITY), "image/jpeg")


class StudySlidesHandler(SlideHandler):
    """The case panel: all slides of a study."""

    async def get(self, study_uid: str) -> None:
        if not is_uid(study_uid):
            raise ProblemError(400, f"{study_uid[:80]!r} is not a Study Instance UID")
        slides = await self.run_blocking(self.library.slides_of_study, study_uid)
        self.set_header("Cache-Control", REVALIDATE)
        self.write_json({"StudyInstanceUID": study_uid, "slides": slides})


class AnnotationsHandler(SlideHandler):
    """GET: the slide's annotations as GeoJSON (``?download=1`` to save a file); PUT: replace them
    (``?archive=1``: and store them in the archive as DICOM)."""

    store: AnnotationStore

    def initialize(  # type: ignore[override]
        self, ctx: ServerContext, library: SlideLibrary, cache: TileCache, store: AnnotationStore
    ) -> None:
        super().initialize(ctx, library, cache)
        self.store = store

    async def get(self, series_uid: str) -> None:
        slide = await self.slide(series_uid)
        collection = await self.run_blocking(self.store.load, slide.series_instance_uid)
        if self.get_query_argument("download", ""):
            self.set_header("Content-Disposition", f'attachment; filename="{series_uid}.geojson"')
        self.set_header("Cache-Control", "no-store")
        self.write_json(collection, "application/geo+json")

    async def put(self, series_uid: str) -> None:
        slide = await self.slide(series_uid)
        if len(self.request.body) > MAX_ANNOTATION_BYTES:
            raise ProblemError(413, f"annotations are limited to {MAX_ANNOTATION_BYTES // 1024**2} MB")
        archive = self.get_query_argument("archive", "")
        if archive not in ARCHIVE_CHOICES:
            raise ProblemError(400, f"archive={archive[:20]!r}: expected one of 1, ann, sr (or nothing)")
        try:
            collection = validate_collection(json.loads(self.request.body or b"null"))
        except (ValueError, AnnotationError) as exc:
            raise ProblemError(400, f"not an annotation FeatureCollection: {exc}") from exc
        await self.run_blocking(self.store.save, slide.series_instance_uid, collection, self.username)
        if not archive:
            self.write_json(collection, "application/geo+json")
            return
        # ?archive=: also DICOM (the viewer auto-saves GeoJSON, and archives on request):
        # 1/true both objects, ann the bulk annotations only, sr the measurement report only
        header = slide.source.base.instance.sop_instance_uid
        answer: dict[str, Any] = dict(collection)
        if archive != "sr":
            answer["dicom"] = await self.run_blocking(self._store_dicom, slide, collection, header, "ann")
        if archive != "ann":
            answer["report"] = await self.run_blocking(self._store_dicom, slide, collection, header, "sr")
        self.write_json(answer, "application/geo+json")

    def _store_dicom(
        self, slide: Slide, collection: dict[str, Any], base: str, kind: str
    ) -> dict[str, Any] | None:
        """Into the archive as Microscopy Bulk Simple Annotations (``ann``) or a TID 1500 measurement
        report (``sr``); the GeoJSON is kept either way. None when there is nothing to store."""
        try:
            if kind == "ann":
                from modules.pathology.dicom_annotations import annotations_bytes as to_bytes
            else:
                from modules.pathology.measurement_report import report_bytes as to_bytes

            data = to_bytes(collection, self.ctx.archive.headers([base])[base])
        except (
            Exception
        ) as exc:  # highdicom refusing (or no slide geometry): the annotations are saved regardless
            log.warning("annotations of %s not written as DICOM %s: %s", slide.series_instance_uid, kind, exc)
            return {"stored": False, "reason": str(exc)[:200]}
        if data is None:
            return None
        outcome = self.ctx.archive.ingest_bytes(data)
        return {
            "stored": outcome.ok,
            "SeriesInstanceUID": outcome.series_instance_uid,
            "SOPInstanceUID": outcome.sop_instance_uid,
            "reason": outcome.reason,
        }


class DicomAnnotationsHandler(SlideHandler):
    """GET: every DICOM annotation object in the archive that references the slide (bulk annotations
    and TID 1500 reports, ours or another tool's) as read-only GeoJSON in level-0 pixels."""

    reader: DicomAnnotationReader

    def initialize(  # type: ignore[override]
        self, ctx: ServerContext, library: SlideLibrary, cache: TileCache, reader: DicomAnnotationReader
    ) -> None:
        super().initialize(ctx, library, cache)
        self.reader = reader

    async def get(self, series_uid: str) -> None:
        slide = await self.slide(series_uid, revalidate=True)
        collection = await self.run_blocking(self._read, slide)
        self.set_header("Cache-Control", "no-store")
        self.write_json(collection, "application/geo+json")

    def _read(self, slide: Slide) -> dict[str, Any]:
        sizes = [(h.instance.sop_instance_uid, h.total_columns, h.total_rows) for h in slide.source.headers]
        frame = slide_frame(self.ctx.archive, slide.source.base.instance.sop_instance_uid, sizes)
        return self.reader.read(slide.study_instance_uid, frame)


class AlignmentHandler(SlideHandler):
    """GET/PUT the offset and rotation of slide B against slide A (side-by-side viewing)."""

    store: AlignmentStore

    def initialize(  # type: ignore[override]
        self, ctx: ServerContext, library: SlideLibrary, cache: TileCache, store: AlignmentStore
    ) -> None:
        super().initialize(ctx, library, cache)
        self.store = store

    async def get(self, left_uid: str, right_uid: str) -> None:
        left, right = await self.slide(left_uid), await self.slide(right_uid)
        alignment = await self.run_blocking(
            self.store.load, left.series_instance_uid, right.series_instance_uid
        )
        self.set_header("Cache-Control", "no-store")
        # Nothing saved yet is the identity alignment, not an error: the viewer just starts there.
        self.write_json(alignment or {"offset_um": [0.0, 0.0], "rotation_deg": 0.0, "saved": False})

    async def put(self, left_uid: str, right_uid: str) -> None:
        left, right = await self.slide(left_uid), await self.slide(right_uid)
        try:
            alignment = validate_alignment(json.loads(self.request.body or b"null"))
        except (ValueError, AlignmentError) as exc:
            raise ProblemError(400, f"not an alignment: {exc}") from exc
        alignment["saved"] = True
        await self.run_blocking(
            self.store.save, left.series_instance_uid, right.series_instance_uid, alignment, self.username
        )
        self.write_json(alignment)
