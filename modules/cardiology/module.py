"""The cardiology specialty: echo and angiography loops at their true rate, calipers, EF, ECGs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modules.cardiology.handlers import (
    EcgHandler,
    ExportHandler,
    FirstFrameHandler,
    FrameHandler,
    FrameStreamHandler,
    LoopHandler,
    MeasurementsHandler,
    MeasurementsSRHandler,
    StudyIndexHandler,
    VideoHandler,
    ViewerPageHandler,
    WaveformHandler,
)
from modules.cardiology.loops import (
    LOOP_CLASSES,
    WAVEFORM_CLASSES,
    LoopLibrary,
    is_cardiac_loop,
)
from modules.cardiology.measurements import MeasurementBook
from server.archive.events import InstanceStored
from server.context import ServerContext
from server.modules import RouteSpec, SeriesRecord

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"

# Data, not code: the stress-echo hanging (stages as rows, views as columns) and the echo grid.
HANGING_PROTOCOLS: tuple[dict[str, Any], ...] = (
    {
        "id": "cardiology.hp.stress-echo",
        "match": {"modality": "US", "has": "StageNumber"},
        "layout": {"rows": "StageNumber", "columns": "ViewName"},
        "stages": ["REST", "LOW DOSE", "PEAK", "RECOVERY"],
        "views": ["PLAX", "PSAX", "A4C", "A2C"],
        "sync": "cardiac-cycle",
    },
    {
        "id": "cardiology.hp.echo-grid",
        "match": {"modality": "US", "body_part": ["HEART", ""]},
        "layout": {"grid": [2, 2]},
        "sync": "cardiac-cycle",
    },
)


class CardiologyModule:
    id = "cardiology"
    title = "Cardiology"
    priority = 40
    static_dir: Path | None = STATIC_DIR
    hanging_protocols: Sequence[Any] = HANGING_PROTOCOLS

    def __init__(self) -> None:
        self.library: LoopLibrary | None = None
        self.book: MeasurementBook | None = None
        self.video_on_ingest = True

    def setup(self, ctx: ServerContext) -> None:
        self.library = LoopLibrary(ctx.archive, ctx.headers, ctx.settings.derived_dir)
        self.book = MeasurementBook(ctx.documents)
        # Earlier versions kept the documents as files in the data folder: imported once.
        self.book.import_files(ctx.settings.data_dir / "cardiology" / "measurements")
        ctx.extras["cardiology.measurements"] = self.book
        # off for tests and bulk imports that do not want the CPU spent now; videos are then made on request
        self.video_on_ingest = bool(ctx.settings.extra.get("cardiology_video_on_ingest", True))

    def claims(self, series: SeriesRecord) -> bool:
        if series.sop_class_uids & WAVEFORM_CLASSES:
            return True
        return any(
            is_cardiac_loop(uid, series.body_part_examined, series.series_description)
            for uid in series.sop_class_uids & LOOP_CLASSES
        )

    def routes(self, ctx: ServerContext) -> list[RouteSpec]:
        if self.library is None or self.library.archive is not ctx.archive:
            self.setup(ctx)
        kwargs = {"library": self.library}
        sop = r"([0-9.]+)"
        # a loop is a multi-frame instance (its SOP Instance UID) or an acquisition group of
        # single-frame images (group/{SeriesInstanceUID}/{n}); the same routes serve both
        loop = r"((?:group/[0-9.]+/[0-9]+)|[0-9.]+)"
        return [
            RouteSpec(r"static/(viewer\.html)", ViewerPageHandler, {"path": str(STATIC_DIR)}),
            RouteSpec(rf"loops/{loop}\.mp4", VideoHandler, kwargs),
            RouteSpec(rf"loops/{loop}/export\.mp4", ExportHandler, kwargs),
            RouteSpec(rf"loops/{loop}/frames/([0-9]+)\.jpg", FrameHandler, kwargs),
            RouteSpec(rf"loops/{loop}/frames", FrameStreamHandler, kwargs),
            RouteSpec(rf"loops/{loop}/ecg", EcgHandler, kwargs),
            RouteSpec(rf"loops/{loop}", LoopHandler, kwargs),
            RouteSpec(rf"waveforms/{sop}", WaveformHandler, kwargs),
            RouteSpec(rf"studies/{sop}/loops", StudyIndexHandler, kwargs),
            RouteSpec(rf"studies/{sop}/series/{sop}/first-frame\.jpg", FirstFrameHandler, kwargs),
            RouteSpec(rf"studies/{sop}/measurements", MeasurementsHandler, kwargs),
            RouteSpec(rf"studies/{sop}/measurements/sr", MeasurementsSRHandler, kwargs),
        ]

    def on_instance_stored(self, event: InstanceStored) -> None:
        """Nothing to forget: loops are read afresh; the video is a derived job (``run_job``)."""

    def wants_job(self, event: InstanceStored) -> bool:
        """A multi-frame loop gets a video job (whether it is cardiac needs its header: ``run_job``)."""
        return self.video_on_ingest and event.sop_class_uid in LOOP_CLASSES and event.number_of_frames >= 2

    def run_job(self, event: InstanceStored) -> None:
        """Make the MP4 of a new cardiac loop; idempotent, as a made (or failed) video is kept."""
        if self.library is None:
            raise RuntimeError("the cardiology module is not set up")
        _instance, header = self.library.loop(event.sop_instance_uid)
        body = str(header.get("BodyPartExamined", ""))
        if is_cardiac_loop(event.sop_class_uid, body, str(header.get("SeriesDescription", ""))):
            self.library.schedule_video(event.sop_instance_uid).result()  # once, with any viewer's request

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str) -> str:
        return f"/cardiology/static/viewer.html?study={study_instance_uid}&series={series_instance_uid}"
