"""HTTP routes of the orthopedics module (mounted under /orthopedics/).

Handlers parse and answer; the work runs in the executor through
:class:`~modules.orthopedics.service.OrthopedicsService`. Errors a user can cause
(unknown image, zero marker size, bad points, unknown template) are 4xx problem+json
documents naming the problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from modules.orthopedics.marker import MarkerNotFound
from modules.orthopedics.measurements import MeasurementError
from modules.orthopedics.overlay import measurement_kinds
from modules.orthopedics.plans import PlanError
from modules.orthopedics.service import (
    ArchiveRefused,
    EmptyPlan,
    ImageNotFound,
    NotARadiograph,
    OrthopedicsService,
    PlanConflict,
)
from modules.orthopedics.templates import TemplateError
from server.context import ServerContext
from server.dicomweb.rendered import parse_window
from server.imaging.calibration import CalibrationError
from server.imaging.frames import FrameDecodeError
from server.tiles import CachedTile, TileCache
from server.tiles.dicom_image import DicomImageSource, NotAGrayscaleImage
from server.tiles.http import REVALIDATE, finish_cached, send_tile, tile_address
from server.web.base import BaseHandler, ProblemError

T = TypeVar("T")
MAX_BODY_BYTES = 2 * 1024**2


class OrthopedicsHandler(BaseHandler):
    service: OrthopedicsService

    cache: TileCache

    def initialize(  # type: ignore[override]
        self, ctx: ServerContext, service: OrthopedicsService, cache: TileCache
    ) -> None:
        super().initialize(ctx)
        self.service = service
        self.cache = cache

    def body(self) -> Any:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise ProblemError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProblemError(400, f"the request body is not JSON: {exc}") from exc

    def body_object(self) -> dict[str, Any]:
        document = self.body()
        if not isinstance(document, dict):
            raise ProblemError(400, "the request body must be a JSON object")
        return document

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run service work in the executor and turn its errors into problem documents."""
        try:
            return await self.run_blocking(fn, *args)
        except ImageNotFound as exc:
            raise ProblemError(404, str(exc)) from exc
        except NotARadiograph as exc:
            raise ProblemError(422, str(exc), title="Not a radiograph") from exc
        except CalibrationError as exc:
            raise ProblemError(400, str(exc), title="Invalid calibration") from exc
        except MeasurementError as exc:
            raise ProblemError(400, str(exc), title="Invalid measurement") from exc
        except (PlanError, TemplateError) as exc:
            raise ProblemError(400, str(exc), title="Invalid plan") from exc
        except MarkerNotFound as exc:
            raise ProblemError(404, str(exc), title="No marker found") from exc
        except PlanConflict as exc:
            raise ProblemError(409, str(exc), current_revision=exc.current) from exc
        except EmptyPlan as exc:
            raise ProblemError(409, str(exc)) from exc
        except ArchiveRefused as exc:
            raise ProblemError(502, f"the archive refused the plan objects: {exc}") from exc
        except FrameDecodeError as exc:
            raise ProblemError(422, f"the image cannot be decoded: {exc}") from exc
        except NotAGrayscaleImage as exc:
            raise ProblemError(422, f"not a grayscale image that can be tiled: {exc}") from exc


class ImageHandler(OrthopedicsHandler):
    """GET images/{sop}: what the viewer needs to open a radiograph, including its calibration."""

    async def get(self, sop: str) -> None:
        self.write_json(await self.call(self.service.info, sop))


class DeepZoomHandler(OrthopedicsHandler):
    """The radiograph as Deep Zoom over the shared grayscale pyramid, windowed per request (?window=c,w)."""

    async def source(self, sop: str) -> DicomImageSource:
        source = self.service.cached_source(sop)
        return source if source is not None else await self.call(self.service.open_source, sop)


class DziHandler(DeepZoomHandler):
    async def get(self, sop: str) -> None:
        deepzoom = self.service.deep_zoom(
            await self.source(sop), parse_window(self.get_query_argument("window", None))
        )
        body = deepzoom.descriptor().encode()
        finish_cached(self, body, "application/xml; charset=utf-8", CachedTile.of(body, "").etag, REVALIDATE)


class TileHandler(DeepZoomHandler):
    """A warm tile is answered from the shared tile cache without leaving the event loop."""

    async def get(self, sop: str, level: str, name: str) -> None:
        address = tile_address(level, name)
        window = parse_window(self.get_query_argument("window", None))
        deepzoom = self.service.deep_zoom(await self.source(sop), window)
        await send_tile(self, deepzoom, address, self.cache)


class SeriesImagesHandler(OrthopedicsHandler):
    async def get(self, study: str, series: str) -> None:
        images = await self.call(self.service.series_images, study, series)
        if not images:
            raise ProblemError(404, f"series {series} of study {study} has no grayscale radiographs")
        self.write_json({"images": images})


class CalibrationHandler(OrthopedicsHandler):
    """GET the active calibration; PUT a manual one (marker, line, or a chosen DICOM source); DELETE it."""

    async def get(self, sop: str) -> None:
        self.write_json(await self.call(self.service.active_calibration, sop))

    async def put(self, sop: str) -> None:
        self.write_json(await self.call(self.service.set_calibration, sop, self.body_object(), self.username))

    async def delete(self, sop: str) -> None:
        self.write_json(await self.call(self.service.clear_calibration, sop, self.username))


class MarkerHandler(OrthopedicsHandler):
    """POST: propose the calibration ball's circle from the pixels (not saved until PUT calibration)."""

    async def post(self, sop: str) -> None:
        proposal = await self.call(self.service.propose_marker, sop, self.body_object())
        self.write_json(proposal.to_json())


class MeasurementHandler(OrthopedicsHandler):
    """POST {kind, points, side?}: the value(s) with the image's active calibration."""

    async def post(self, sop: str) -> None:
        self.write_json(await self.call(self.service.measure, sop, self.body_object()))


class PlanHandler(OrthopedicsHandler):
    async def get(self, sop: str) -> None:
        self.write_json(await self.call(self.service.plan, sop))

    async def put(self, sop: str) -> None:
        header = self.request.headers.get("If-Match")
        expected = None
        if header:
            try:
                expected = int(header.strip('"W/ '))
            except ValueError as exc:
                raise ProblemError(400, "If-Match must carry the plan revision number") from exc
        self.write_json(await self.call(self.service.save_plan, sop, self.body(), expected, self.username))


class PlanEvaluateHandler(OrthopedicsHandler):
    """POST a plan being edited: its values with the active calibration, nothing saved."""

    async def post(self, sop: str) -> None:
        self.write_json(await self.call(self.service.evaluate_unsaved, sop, self.body()))


class PlanArchiveHandler(OrthopedicsHandler):
    """POST: write the saved plan into the archive (SR + burned-in Secondary Capture)."""

    async def post(self, sop: str) -> None:
        self.write_json(await self.call(self.service.archive_plan, sop, self.username), status=201)


class PlanReportHandler(OrthopedicsHandler):
    async def get(self, sop: str) -> None:
        pdf = await self.call(self.service.report_pdf, sop)
        self.set_header("Content-Type", "application/pdf")
        self.set_header("Content-Disposition", f'inline; filename="plan-{sop}.pdf"')
        self.finish(pdf)


class TemplatesHandler(OrthopedicsHandler):
    async def get(self) -> None:
        """The template files and the archive's DICOM implant templates; ones that could not be
        imported are named in ``problems`` instead of hiding the rest."""
        await self.call(self.service.sync_dicom_templates)
        library = self.service.library
        self.write_json(
            {"templates": [t.summary() for t in library.templates.values()], "problems": library.problems}
        )


class TemplateHandler(OrthopedicsHandler):
    async def get(self, template_id: str) -> None:
        await self.call(self.service.sync_dicom_templates)
        try:
            template = self.service.library.get(template_id)
        except TemplateError as exc:
            raise ProblemError(404, str(exc)) from exc
        self.write_json(template.document)


class MeasurementKindsHandler(OrthopedicsHandler):
    async def get(self) -> None:
        self.write_json(measurement_kinds())
