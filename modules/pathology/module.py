"""The pathology specialty: whole-slide images served as Deep Zoom, and their viewer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modules.pathology.alignment import AlignmentStore
from modules.pathology.annotation_readback import DicomAnnotationReader
from modules.pathology.annotations import AnnotationStore
from modules.pathology.dicom_source import VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE
from modules.pathology.handlers import (
    AlignmentHandler,
    AnnotationsHandler,
    AssociatedImageHandler,
    DicomAnnotationsHandler,
    DziHandler,
    InfoHandler,
    StudySlidesHandler,
    TileHandler,
)
from modules.pathology.slides import SlideLibrary
from server.archive.archive import Archive, StoreOutcome
from server.archive.events import InstanceStored
from server.context import ServerContext
from server.modules import RouteSpec, SeriesRecord
from server.tiles import tile_cache_of

STATIC_DIR = Path(__file__).parent / "static"


class PathologyModule:
    id = "pathology"
    title = "Pathology"
    priority = 50
    static_dir: Path | None = STATIC_DIR
    hanging_protocols: Sequence[Any] = ()

    def __init__(self) -> None:
        self.library: SlideLibrary | None = None
        self.annotations: AnnotationStore | None = None
        self.alignments: AlignmentStore | None = None

    def setup(self, ctx: ServerContext) -> None:
        self.library = SlideLibrary(ctx.archive)
        self.annotations = AnnotationStore(ctx.documents)
        self.alignments = AlignmentStore(ctx.documents)
        derived = ctx.settings.derived_dir / "pathology"  # where earlier versions kept them as files
        self.annotations.import_files(derived / "annotations")
        self.alignments.import_files(derived / "alignments")

    def claims(self, series: SeriesRecord) -> bool:
        return VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE in series.sop_class_uids

    def routes(self, ctx: ServerContext) -> list[RouteSpec]:
        if self.library is None or self.library.archive is not ctx.archive:
            self.setup(ctx)
        assert self.library is not None and self.annotations is not None and self.alignments is not None
        megabytes = int(ctx.settings.extra.get("tile_cache_mb", 256))
        kwargs = {"library": self.library, "cache": tile_cache_of(ctx.extras, megabytes * 1024**2)}
        return [  # tiles first: the route matched thousands of times a second
            RouteSpec(r"slides/([^/]+)_files/([^/]+)/([^/]+)", TileHandler, kwargs),
            RouteSpec(r"slides/([^/]+)\.dzi", DziHandler, kwargs),
            RouteSpec(r"slides/([^/]+)/info", InfoHandler, kwargs),
            RouteSpec(r"slides/([^/]+)/associated/([a-z]+)\.jpeg", AssociatedImageHandler, kwargs),
            RouteSpec(r"studies/([^/]+)/slides", StudySlidesHandler, kwargs),
            RouteSpec(
                r"slides/([^/]+)/annotations",
                AnnotationsHandler,
                {**kwargs, "store": self.annotations},
            ),
            RouteSpec(
                r"slides/([^/]+)/dicom-annotations",
                DicomAnnotationsHandler,
                {**kwargs, "reader": DicomAnnotationReader(ctx.archive)},
            ),
            RouteSpec(
                r"slides/([^/]+)/alignments/([^/]+)",
                AlignmentHandler,
                {**kwargs, "store": self.alignments},
            ),
        ]

    def on_instance_stored(self, event: InstanceStored) -> None:
        if self.library is not None and event.sop_class_uid == VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE:
            self.library.forget(event.series_instance_uid)

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str) -> str:
        return f"/pathology/static/viewer.html?study={study_instance_uid}&series={series_instance_uid}"

    def import_file(
        self, archive: Archive, path: Path, identity: dict[str, Any] | None = None
    ) -> list[StoreOutcome] | None:
        """For ``tessera import``: a vendor slide file becomes DICOM WSI in the archive.

        None when the file is no slide format openslide knows (the CLI tries other importers);
        SlideFileError (a ValueError) with a clear message when it is one but cannot be read.
        ``identity`` holds SlideIdentity fields (patient_name, patient_id, accession_number…);
        without it a sidecar ``<file>.json`` is used.
        """
        import openslide

        from modules.pathology.convert import import_slide
        from modules.pathology.dicom_writer import SlideIdentity

        if path.suffix.lower() == ".dcm" or openslide.OpenSlide.detect_format(str(path)) in (None, "dicom"):
            return None
        return import_slide(archive, path, SlideIdentity(**identity) if identity else None)

    def add_commands(self, subparsers: Any) -> None:
        """``tessera convert``."""
        from modules.pathology.commands import add_commands

        add_commands(subparsers)

    @staticmethod
    def compare_url(study_instance_uid: str, left_series: str, right_series: str) -> str:
        """Two slides side by side, synchronised."""
        return (
            f"/pathology/static/compare.html?study={study_instance_uid}"
            f"&series={left_series}&compare={right_series}"
        )
