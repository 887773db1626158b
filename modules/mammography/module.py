"""The mammography specialty: screening hangings with priors, tomosynthesis, BI-RADS reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modules.mammography.handlers import (
    CadHandler,
    DziHandler,
    HangingHandler,
    ImageInfoHandler,
    ImageLibrary,
    ReportHandler,
    ReportOutputHandler,
    SlabHandler,
    TileHandler,
)
from modules.mammography.hanging import HangingProtocol, load_protocols
from modules.mammography.views import IMAGE_SOP_CLASSES, MAMMOGRAPHY_SOP_CLASSES
from server.archive.events import InstanceStored
from server.context import ServerContext
from server.modules import RouteSpec, SeriesRecord
from server.tiles import tile_cache_of
from server.tiles.dicom_image import forget_dicom_image

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


class MammographyModule:
    id = "mammography"
    title = "Mammography"
    priority = 60
    static_dir: Path | None = STATIC_DIR

    def __init__(self) -> None:
        self.hanging_protocols: Sequence[HangingProtocol] = load_protocols()
        self.ctx: ServerContext | None = None
        self.library: ImageLibrary | None = None

    def setup(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.library = ImageLibrary(ctx)

    def claims(self, series: SeriesRecord) -> bool:
        return bool(series.sop_class_uids & MAMMOGRAPHY_SOP_CLASSES)

    def routes(self, ctx: ServerContext) -> list[RouteSpec]:
        if self.library is None or self.ctx is not ctx:
            self.setup(ctx)
        assert self.library is not None
        megabytes = int(ctx.settings.extra.get("tile_cache_mb", 256))
        kwargs: dict[str, Any] = {
            "library": self.library,
            "cache": tile_cache_of(ctx.extras, megabytes * 1024**2),
            "protocols": tuple(self.hanging_protocols),
        }
        return [
            RouteSpec(r"studies/([^/]+)/hanging", HangingHandler, kwargs),
            RouteSpec(r"studies/([^/]+)/cad", CadHandler, kwargs),
            RouteSpec(r"images/([^/]+)/info", ImageInfoHandler, kwargs),
            RouteSpec(r"images/([^/]+)/frames/([^/]+)\.dzi", DziHandler, kwargs),
            RouteSpec(r"images/([^/]+)/frames/([^/]+)_files/([^/]+)/([^/]+)", TileHandler, kwargs),
            RouteSpec(r"images/([^/]+)/slab", SlabHandler, kwargs),
            RouteSpec(r"reports/([^/]+)", ReportHandler, kwargs),
            RouteSpec(r"reports/([^/]+)/(report|letter)\.(html|pdf)", ReportOutputHandler, kwargs),
        ]

    def on_instance_stored(self, event: InstanceStored) -> None:
        """A new (or replaced) image: drop what this process has open of it."""
        if event.sop_class_uid not in IMAGE_SOP_CLASSES or self.ctx is None or self.library is None:
            return
        self.library.forget(event.sop_instance_uid)
        forget_dicom_image(self.ctx, event.sop_instance_uid)

    def wants_job(self, event: InstanceStored) -> bool:
        """Every image gets its pyramid built ahead of the reader (unless turned off)."""
        return (
            event.sop_class_uid in IMAGE_SOP_CLASSES
            and self.ctx is not None
            and bool(self.ctx.settings.extra.get("mammography_prebuild", True))
        )

    def run_job(self, event: InstanceStored) -> None:
        """Build the image's pyramid; idempotent, as a built pyramid is found and reused."""
        if self.library is None:
            raise RuntimeError("the mammography module is not set up")
        self.library.open(event.sop_instance_uid, 0)

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str) -> str:
        return f"/mammography/static/viewer.html?study={study_instance_uid}&series={series_instance_uid}"
