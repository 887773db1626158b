"""What the orthopedic HTTP routes do, as blocking calls the handlers run in the executor.

Keeps the handlers thin (parse, call, answer) and gives tests one object to drive
without HTTP. Every method may decode pixels or touch files: never call one on the
event loop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import select

from modules.orthopedics import export
from modules.orthopedics.implant_git import (
    GENERIC_IMPLANT_TEMPLATE,
    read_template_file,
    templates_from_datasets,
)
from modules.orthopedics.marker import MarkerProposal, find_marker
from modules.orthopedics.measurements import Plane, measure, parse_points
from modules.orthopedics.overlay import burn_in
from modules.orthopedics.plans import ImageRecord, Plan, PlanStore, evaluate_plan, now_iso, parse_plan
from modules.orthopedics.templates import TemplateLibrary
from server.archive.archive import StoredInstance
from server.archive.models import Instance
from server.context import ServerContext
from server.imaging.calibration import (
    DEFAULT_MARKER_DIAMETER_MM,
    Calibration,
    CalibrationError,
    CalibrationReport,
    CalibrationSource,
    calibrate_from_circle,
    calibrate_from_line,
    resolve_calibration,
)
from server.imaging.frames import decode_frame
from server.imaging.rendering import Window, to_display
from server.tiles import DeepZoom
from server.tiles.dicom_image import TILE_SIZE, DicomImageSource, forget_dicom_image, open_dicom_image

TILE_QUALITY = 90  # radiographs: trabecular detail and cortical edges must survive the JPEG


class ImageNotFound(LookupError):
    pass


class NotARadiograph(ValueError):
    """An instance without a single grayscale frame to measure on."""


@dataclass(frozen=True)
class Radiograph:
    instance: StoredInstance
    header: Dataset

    @property
    def columns(self) -> int:
        return int(self.header.Columns)

    @property
    def rows(self) -> int:
        return int(self.header.Rows)


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what} must be a number") from exc


class OrthopedicsService:
    def __init__(self, ctx: ServerContext, library: TemplateLibrary) -> None:
        self.ctx = ctx
        self.library = library
        self.store = PlanStore(ctx.documents)
        self.store.import_files(ctx.settings.data_dir / "orthopedics")  # earlier versions' plan files
        self._pixels: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pixels_lock = threading.Lock()
        self._sources: OrderedDict[str, DicomImageSource] = OrderedDict()
        self._imported_from: frozenset[tuple[str, str]] | None = None
        self._import_lock = threading.Lock()

    # -- templates from the archive ----------------------------------------------------------

    def sync_dicom_templates(self) -> None:
        """Import the archive's Generic Implant Template instances into the library.

        Cheap when nothing changed (one indexed query on the SOP class); otherwise every GIT
        instance is read again and the imported set replaced, so the library always equals
        what the archive holds. Called on start, when one is stored, and before listing."""
        with self.ctx.archive.sessions() as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.blob_sha256).where(
                    Instance.sop_class_uid == GENERIC_IMPLANT_TEMPLATE
                )
            ).all()
        stored = frozenset((uid, digest) for uid, digest in rows)
        with self._import_lock:
            if stored == self._imported_from:
                return
            blobs = self.ctx.archive.blobs
            result = templates_from_datasets(
                (uid, read_template_file(blobs.local_path(digest))) for uid, digest in sorted(stored)
            )
            self.library.set_imported(result.templates, result.problems)
            self._imported_from = stored

    # -- images ------------------------------------------------------------------------------

    def radiograph(self, sop_uid: str) -> Radiograph:
        instance = self.ctx.archive.instance_by_uid(sop_uid)
        if instance is None:
            raise ImageNotFound(f"no instance {sop_uid} in the archive")
        if not instance.rows or not instance.columns:
            raise NotARadiograph(f"instance {sop_uid} has no pixel data")
        if (instance.samples_per_pixel or 1) != 1 or instance.number_of_frames != 1:
            raise NotARadiograph(f"instance {sop_uid} is not a single-frame grayscale image")
        return Radiograph(instance, self.ctx.headers.get(instance))

    def pixels(self, image: Radiograph) -> np.ndarray:
        """The decoded stored values (a few recent images kept: detection and burn-in reuse them)."""
        key = image.instance.sop_instance_uid
        with self._pixels_lock:
            cached = self._pixels.get(key)
            if cached is not None:
                self._pixels.move_to_end(key)
                return cached
        array = decode_frame(image.instance, image.header, 0)
        with self._pixels_lock:
            self._pixels[key] = array
            while len(self._pixels) > 4:
                self._pixels.popitem(last=False)
        return array

    # -- deep zoom (the shared grayscale pyramid of server/tiles/dicom_image.py) ----------------

    def cached_source(self, sop_uid: str) -> DicomImageSource | None:
        with self._pixels_lock:
            return self._sources.get(sop_uid)

    def open_source(self, sop_uid: str) -> DicomImageSource:
        """Blocking: the image's pyramid (built on first use, zarr-cached under the data folder)."""
        self.radiograph(sop_uid)  # 404 / 422 with this module's messages before any pyramid work
        source = open_dicom_image(self.ctx, sop_uid, 0)
        with self._pixels_lock:
            self._sources[sop_uid] = source
            while len(self._sources) > 16:
                self._sources.popitem(last=False)
        return source

    @staticmethod
    def deep_zoom(source: DicomImageSource, window: Window | None) -> DeepZoom:
        return DeepZoom(source.windowed(window), tile_size=TILE_SIZE, quality=TILE_QUALITY)

    def forget(self, sop_uid: str) -> None:
        """An instance stored again may have new pixels: drop what was decoded or opened."""
        with self._pixels_lock:
            self._pixels.pop(sop_uid, None)
            self._sources.pop(sop_uid, None)
        forget_dicom_image(self.ctx, sop_uid)

    def record(self, image: Radiograph) -> ImageRecord:
        i = image.instance
        return self.store.load(i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid)

    def info(self, sop_uid: str) -> dict[str, Any]:
        image = self.radiograph(sop_uid)
        h = image.header
        return {
            "study_instance_uid": image.instance.study_instance_uid,
            "series_instance_uid": image.instance.series_instance_uid,
            "sop_instance_uid": sop_uid,
            "rows": image.rows,
            "columns": image.columns,
            "modality": str(h.get("Modality", "")),
            "patient_name": str(h.get("PatientName", "")),
            "patient_id": str(h.get("PatientID", "")),
            "study_description": str(h.get("StudyDescription", "")),
            "series_description": str(h.get("SeriesDescription", "")),
            "view_position": str(h.get("ViewPosition", "")),
            "patient_orientation": [str(v) for v in h.get("PatientOrientation", []) or []],
            "calibration": self.calibration_report(image).to_json(),
            "deep_zoom": {
                "descriptor": f"/orthopedics/images/{sop_uid}/image.dzi",
                "tiles": f"/orthopedics/images/{sop_uid}/image_files/",
                "tile_size": TILE_SIZE,
            },
        }

    def series_images(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        instances = self.ctx.archive.stored_instances(study_uid, series_uid)
        return [
            {"sop_instance_uid": i.sop_instance_uid, "rows": i.rows, "columns": i.columns}
            for i in instances
            if i.rows and i.columns and (i.samples_per_pixel or 1) == 1 and i.number_of_frames == 1
        ]

    # -- calibration -------------------------------------------------------------------------

    def calibration_report(self, image: Radiograph, record: ImageRecord | None = None) -> CalibrationReport:
        record = record or self.record(image)
        return resolve_calibration(image.header, record.user_calibration, record.preferred_source)

    def active_calibration(self, sop_uid: str) -> dict[str, Any]:
        image = self.radiograph(sop_uid)
        return {"sop_instance_uid": sop_uid, **self.calibration_report(image).to_json()}

    def set_calibration(self, sop_uid: str, body: dict[str, Any], by: str | None = None) -> dict[str, Any]:
        """PUT: a marker circle, a line of known length, or a chosen DICOM source."""
        image = self.radiograph(sop_uid)
        method = body.get("method")
        user: Calibration | None = None
        prefer: CalibrationSource | None = None
        if method == "circle":
            centre = parse_points([body.get("centre")], 1)[0] if body.get("centre") is not None else None
            if centre is None:
                raise CalibrationError("a circle calibration needs 'centre': [x, y] in image pixels")
            user = calibrate_from_circle(
                centre,
                _number(body.get("radius_px"), "radius_px"),
                _number(body.get("diameter_mm", DEFAULT_MARKER_DIAMETER_MM), "diameter_mm"),
                image.header,
            )
        elif method == "line":
            points = parse_points(body.get("points"), 2)
            user = calibrate_from_line(
                points[0], points[1], _number(body.get("length_mm"), "length_mm"), image.header
            )
        elif method == "dicom":
            try:
                prefer = CalibrationSource(str(body.get("source")))
            except ValueError as exc:
                names = ", ".join(s.value for s in CalibrationSource if s is not CalibrationSource.USER)
                raise CalibrationError(f"source must be one of {names}") from exc
            if prefer is CalibrationSource.USER:
                raise CalibrationError("a user calibration is made with method 'circle' or 'line'")
            available = {c.source for c in resolve_calibration(image.header).candidates}
            if prefer is not CalibrationSource.NONE and prefer not in available:
                raise CalibrationError(f"this image has no {prefer.value} calibration")
        else:
            raise CalibrationError("method must be 'circle' (a marker), 'line' (a known length) or 'dicom'")
        return self.set_calibration_record(sop_uid, user, prefer, by)

    def clear_calibration(self, sop_uid: str, by: str | None = None) -> dict[str, Any]:
        return self.set_calibration_record(sop_uid, None, None, by)

    def set_calibration_record(
        self,
        sop_uid: str,
        user: Calibration | None,
        prefer: CalibrationSource | None,
        by: str | None = None,
    ) -> dict[str, Any]:
        image = self.radiograph(sop_uid)

        def change(record: ImageRecord) -> None:
            record.user_calibration = user
            record.preferred_source = prefer

        i = image.instance
        record = self.store.update(
            i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid, change, by=by
        )
        return {"sop_instance_uid": sop_uid, **self.calibration_report(image, record).to_json()}

    def propose_marker(self, sop_uid: str, body: dict[str, Any]) -> MarkerProposal:
        image = self.radiograph(sop_uid)
        diameter = _number(body.get("diameter_mm", DEFAULT_MARKER_DIAMETER_MM), "diameter_mm")
        if diameter <= 0:
            raise CalibrationError("diameter_mm must be greater than zero")
        near = parse_points([body["near"]], 1)[0] if body.get("near") is not None else None
        radius = body.get("search_radius_px")
        return find_marker(
            self.pixels(image),
            image.header,
            diameter,
            near,
            _number(radius, "search_radius_px") if radius else None,
        )

    # -- measurements and plans --------------------------------------------------------------

    def measure(self, sop_uid: str, body: dict[str, Any]) -> dict[str, Any]:
        image = self.radiograph(sop_uid)
        calibration = self.calibration_report(image).active
        points = parse_points(body.get("points"))
        side = body.get("side") or None
        result = measure(str(body.get("kind", "")), points, Plane(calibration, image.columns), side)
        return {**result.to_json(), "calibration_source": calibration.source.value}

    def evaluated(self, image: Radiograph, record: ImageRecord) -> dict[str, Any]:
        calibration = self.calibration_report(image, record).active
        return evaluate_plan(record.plan, calibration, self.library, image.columns)

    def plan(self, sop_uid: str) -> dict[str, Any]:
        image = self.radiograph(sop_uid)
        record = self.record(image)
        return self._plan_document(image, record)

    def _plan_document(self, image: Radiograph, record: ImageRecord) -> dict[str, Any]:
        return {
            "sop_instance_uid": image.instance.sop_instance_uid,
            "study_instance_uid": image.instance.study_instance_uid,
            "calibration": self.calibration_report(image, record).active.to_json(),
            "plan": self.evaluated(image, record),
            "archived": record.archived,
        }

    def save_plan(
        self, sop_uid: str, body: Any, expected_revision: int | None, by: str | None = None
    ) -> dict[str, Any]:
        image = self.radiograph(sop_uid)
        parsed = parse_plan(body, self.library)
        conflict: list[int] = []

        def change(record: ImageRecord) -> None:
            conflict.clear()  # runs again on a fresh record if another process saved first
            if expected_revision is not None and expected_revision != record.plan.revision:
                conflict.append(record.plan.revision)
                return
            record.plan = Plan(
                parsed.measurements, parsed.templates, parsed.note, record.plan.revision + 1, now_iso()
            )

        i = image.instance
        record = self.store.update(
            i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid, change, by=by
        )
        if conflict:
            raise PlanConflict(conflict[0])
        return self._plan_document(image, record)

    def evaluate_unsaved(self, sop_uid: str, body: Any) -> dict[str, Any]:
        """Values of a plan being edited (nothing saved): the viewer shows offset and leg-length
        changes while a template is moved or resized."""
        image = self.radiograph(sop_uid)
        calibration = self.calibration_report(image).active
        return {
            "plan": evaluate_plan(parse_plan(body, self.library), calibration, self.library, image.columns)
        }

    def burned(self, image: Radiograph, record: ImageRecord) -> tuple[Any, dict[str, Any], Calibration]:
        calibration = self.calibration_report(image, record).active
        evaluated = evaluate_plan(record.plan, calibration, self.library, image.columns)
        display = to_display(self.pixels(image), image.header)
        return burn_in(display, evaluated, calibration, self.library), evaluated, calibration

    def archive_plan(self, sop_uid: str, by: str | None = None) -> dict[str, Any]:
        """Write the saved plan into the archive as an SR and a burned-in Secondary Capture."""
        image = self.radiograph(sop_uid)
        record = self.record(image)
        if not record.plan.measurements and not record.plan.templates:
            raise EmptyPlan("the plan is empty: save measurements or templates before archiving it")
        burned, evaluated, calibration = self.burned(image, record)
        number = len(record.archived) + 1
        sr = export.build_sr(image.header, evaluated, calibration, number)
        sc = export.build_secondary_capture(image.header, burned, number, calibration)
        outcomes = [self.ctx.archive.ingest_bytes(export.to_bytes(ds)) for ds in (sr, sc)]
        failed = [o.reason for o in outcomes if not o.ok]
        if failed:
            raise ArchiveRefused("; ".join(failed))
        entry = {
            "revision": record.plan.revision,
            "at": now_iso(),
            "sr": {"series_instance_uid": sr.SeriesInstanceUID, "sop_instance_uid": sr.SOPInstanceUID},
            "sc": {"series_instance_uid": sc.SeriesInstanceUID, "sop_instance_uid": sc.SOPInstanceUID},
        }

        def change(stored: ImageRecord) -> None:
            stored.archived.append(entry)

        i = image.instance
        self.store.update(i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid, change, by=by)
        return {"study_instance_uid": i.study_instance_uid, **entry}

    def report_pdf(self, sop_uid: str) -> bytes:
        image = self.radiograph(sop_uid)
        record = self.record(image)
        burned, evaluated, calibration = self.burned(image, record)
        return export.build_pdf(burned, evaluated, calibration, image.header)


class PlanConflict(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(f"the plan was saved by someone else meanwhile (now revision {current}); reload it")
        self.current = current


class EmptyPlan(ValueError):
    pass


class ArchiveRefused(RuntimeError):
    pass
