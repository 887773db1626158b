"""The orthopedics specialty: calibrated radiographs, measurements, implant templates, saved plans."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modules.orthopedics.handlers import (
    CalibrationHandler,
    DziHandler,
    ImageHandler,
    MarkerHandler,
    MeasurementHandler,
    MeasurementKindsHandler,
    PlanArchiveHandler,
    PlanEvaluateHandler,
    PlanHandler,
    PlanReportHandler,
    SeriesImagesHandler,
    TemplateHandler,
    TemplatesHandler,
    TileHandler,
)
from modules.orthopedics.implant_git import GENERIC_IMPLANT_TEMPLATE
from modules.orthopedics.service import OrthopedicsService
from modules.orthopedics.templates import TEMPLATE_DIR, TemplateLibrary
from server.archive.events import InstanceStored
from server.context import ServerContext
from server.modules import RouteSpec, SeriesRecord
from server.tiles import tile_cache_of

STATIC_DIR = Path(__file__).parent / "static"
UID = r"([0-9]+(?:\.[0-9]+)*)"

COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
RADIOGRAPH_CLASSES = frozenset({COMPUTED_RADIOGRAPHY, DX_FOR_PRESENTATION, DX_FOR_PROCESSING})
SECONDARY_CAPTURE_CLASSES = frozenset(
    {SECONDARY_CAPTURE, MULTIFRAME_GRAYSCALE_BYTE_SC, MULTIFRAME_GRAYSCALE_WORD_SC}
)
RADIOGRAPHIC_MODALITIES = frozenset({"CR", "DX", "RG"})
# Radiographs nobody templates on (chest, abdomen films; breast is mammography's): the generic
# viewer serves them better than a templating tool.
NON_ORTHOPEDIC_BODY_PARTS = frozenset({"CHEST", "LUNG", "HEART", "ABDOMEN", "BREAST"})
# A secondary capture counts as a radiograph when it says it shows a part a surgeon templates.
ORTHOPEDIC_BODY_PARTS = frozenset(
    {
        "PELVIS",
        "HIP",
        "KNEE",
        "LEG",
        "LOWER LIMB",
        "LOWERLIMB",
        "EXTREMITY",
        "FEMUR",
        "TIBIA",
        "ANKLE",
        "FOOT",
        "SHOULDER",
        "SPINE",
        "LSPINE",
        "TSPINE",
        "CSPINE",
        "WHOLEBODY",
        "ARM",
        "ELBOW",
        "WRIST",
        "HAND",
    }
)


class OrthopedicsModule:
    id = "orthopedics"
    title = "Orthopedics"
    # Below the modality-specific modules (pathology 50, mammography MG): a DX series they claim
    # (e.g. a DX mammogram) stays theirs; general radiography is ours.
    priority = 30
    static_dir: Path | None = STATIC_DIR
    hanging_protocols: Sequence[Any] = (
        {
            "id": "orthopedics.hp.single",
            "match": {"modality": sorted(RADIOGRAPHIC_MODALITIES)},
            "viewports": [{"series": "first", "image": "first"}],
        },
    )

    def __init__(self, template_folders: Sequence[Path] = (TEMPLATE_DIR,)) -> None:
        self.template_folders = tuple(template_folders)
        self.service: OrthopedicsService | None = None

    def setup(self, ctx: ServerContext) -> None:
        extra = ctx.settings.extra.get("orthopedics_template_dir")
        folders = (*self.template_folders, Path(extra)) if extra else self.template_folders
        self.service = OrthopedicsService(ctx, TemplateLibrary(folders))
        # Plans may name imported templates: they must resolve before the first request.
        self.service.sync_dicom_templates()

    def claims(self, series: SeriesRecord) -> bool:
        body_part = series.body_part_examined.upper()
        if body_part in NON_ORTHOPEDIC_BODY_PARTS or series.modality == "MG":
            return False
        if series.sop_class_uids & RADIOGRAPH_CLASSES:
            return True
        if series.sop_class_uids & SECONDARY_CAPTURE_CLASSES:
            return series.modality in RADIOGRAPHIC_MODALITIES or body_part in ORTHOPEDIC_BODY_PARTS
        return series.modality in RADIOGRAPHIC_MODALITIES

    def routes(self, ctx: ServerContext) -> list[RouteSpec]:
        if self.service is None or self.service.ctx is not ctx:
            self.setup(ctx)
        megabytes = int(ctx.settings.extra.get("tile_cache_mb", 256))
        kwargs = {"service": self.service, "cache": tile_cache_of(ctx.extras, megabytes * 1024**2)}
        return [
            RouteSpec(rf"images/{UID}$", ImageHandler, kwargs),
            RouteSpec(rf"images/{UID}/image\.dzi$", DziHandler, kwargs),
            RouteSpec(rf"images/{UID}/image_files/(\d+)/([^/]+)$", TileHandler, kwargs),
            RouteSpec(rf"images/{UID}/calibration$", CalibrationHandler, kwargs),
            RouteSpec(rf"images/{UID}/marker$", MarkerHandler, kwargs),
            RouteSpec(rf"images/{UID}/measurements$", MeasurementHandler, kwargs),
            RouteSpec(rf"images/{UID}/plan$", PlanHandler, kwargs),
            RouteSpec(rf"images/{UID}/plan/archive$", PlanArchiveHandler, kwargs),
            RouteSpec(rf"images/{UID}/plan/evaluate$", PlanEvaluateHandler, kwargs),
            RouteSpec(rf"images/{UID}/plan/report\.pdf$", PlanReportHandler, kwargs),
            RouteSpec(rf"studies/{UID}/series/{UID}/images$", SeriesImagesHandler, kwargs),
            RouteSpec(r"templates$", TemplatesHandler, kwargs),
            RouteSpec(r"templates/([A-Za-z0-9._-]+)$", TemplateHandler, kwargs),
            RouteSpec(r"measurement-kinds$", MeasurementKindsHandler, kwargs),
        ]

    def on_instance_stored(self, event: InstanceStored) -> None:
        """A radiograph stored (again): forget what was decoded. Nothing is precomputed: the
        calibration reads the header, detection runs on request, the pyramid on first view.
        A Generic Implant Template stored: import it into the template library."""
        if self.service is None:
            return
        if event.sop_class_uid in RADIOGRAPH_CLASSES | SECONDARY_CAPTURE_CLASSES:
            self.service.forget(event.sop_instance_uid)
        elif event.sop_class_uid == GENERIC_IMPLANT_TEMPLATE:
            self.service.sync_dicom_templates()

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str) -> str:
        return f"/orthopedics/static/viewer.html?study={study_instance_uid}&series={series_instance_uid}"
