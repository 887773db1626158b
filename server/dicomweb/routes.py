"""The DICOMweb URL space (PS3.18 Table 10.1-1 and 8.3), mounted under /dicom-web."""

from __future__ import annotations

from typing import Any

from server.context import ServerContext
from server.dicomweb.qido import QidoHandler
from server.dicomweb.rendered import RenderedHandler
from server.dicomweb.stow import StowHandler
from server.dicomweb.wado import BulkDataHandler, FramesHandler, MetadataHandler, RetrieveHandler


def _uid(name: str) -> str:
    return f"(?P<{name}>[0-9]+(?:\\.[0-9]+)*)"


_ST = f"/studies/{_uid('study')}"
_SE = f"{_ST}/series/{_uid('series')}"
_IN = f"{_SE}/instances/{_uid('sop')}"
_FRAMES = "/frames/(?P<frames>[^/]+)"
_KIND = "/(?P<kind>rendered|thumbnail)"


class StudiesResource(StowHandler, QidoHandler):
    """/studies: QIDO-RS on GET, STOW-RS on POST."""


class StudyResource(StowHandler, RetrieveHandler):
    """/studies/{uid}: WADO-RS retrieve on GET, STOW-RS into that study on POST."""


def dicomweb_routes(ctx: ServerContext, prefix: str = "/dicom-web") -> list[tuple[str, Any, dict[str, Any]]]:
    k = {"ctx": ctx}

    def qido(level: str) -> dict[str, Any]:
        return {"ctx": ctx, "level_name": level}

    routes: list[tuple[str, Any, dict[str, Any]]] = [
        ("/studies", StudiesResource, qido("studies")),
        (_ST, StudyResource, k),
        ("/series", QidoHandler, qido("series")),
        ("/instances", QidoHandler, qido("instances")),
        (f"{_ST}/series", QidoHandler, qido("series")),
        (f"{_ST}/instances", QidoHandler, qido("instances")),
        (f"{_SE}/instances", QidoHandler, qido("instances")),
        (f"{_ST}/metadata", MetadataHandler, k),
        (f"{_SE}/metadata", MetadataHandler, k),
        (f"{_IN}/metadata", MetadataHandler, k),
        (_SE, RetrieveHandler, k),
        (_IN, RetrieveHandler, k),
        (f"{_IN}{_FRAMES}", FramesHandler, k),
        (f"{_IN}/bulk/(?P<tag>[0-9A-Fa-f]{{8}})", BulkDataHandler, k),
        (f"{_IN}{_KIND}", RenderedHandler, k),
        (f"{_IN}{_FRAMES}{_KIND}", RenderedHandler, k),
        (f"{_SE}/(?P<kind>thumbnail)", RenderedHandler, k),
        (f"{_ST}/(?P<kind>thumbnail)", RenderedHandler, k),
    ]
    return [(prefix + pattern + "/?$", handler, kwargs) for pattern, handler, kwargs in routes]
