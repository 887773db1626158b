"""Calipers, areas and LV contours saved with a study; values computed here from the regions.

The viewer sends geometry in image pixels (frame, points); the server computes every
value from that loop's SequenceOfUltrasoundRegions, so what is saved, exported as JSON
and written into a DICOM SR is one computation, not the browser's word. Saved documents
live in ``data_dir/cardiology/measurements`` (user data, not a rebuildable product).
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import (
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    SourceImageForMeasurement,
    TrackingIdentifier,
)
from PIL import Image, ImageDraw
from pydicom.filebase import DicomBytesIO

from modules.cardiology.cine import caliper_distance, polygon_area, to_mm
from modules.cardiology.loops import LoopError, LoopLibrary
from modules.cardiology.lv_volume import ContourError, lv_volumes, volume_monoplane_ml
from modules.cardiology.video import encode_mp4

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
KINDS = ("distance", "area", "lv")
LV_LABELS = ("A4C-ED", "A4C-ES", "A2C-ED", "A2C-ES")
MAX_MEASUREMENTS = 500
MAX_POINTS = 2000

ECHOCARDIOGRAPHY = CodedConcept("40701008", "SCT", "Echocardiography")
LENGTH = CodedConcept("410668003", "SCT", "Length")
AREA = CodedConcept("42798000", "SCT", "Area")
LV_EF = CodedConcept("10230-1", "LN", "Left ventricular Ejection fraction")
LV_EDV = CodedConcept("18026-5", "LN", "Left ventricular end diastolic volume")
LV_ESV = CodedConcept("18148-7", "LN", "Left ventricular end systolic volume")
UNITS = {
    "mm": CodedConcept("mm", "UCUM", "millimeter"),
    "cm2": CodedConcept("cm2", "UCUM", "square centimeter"),
    "ml": CodedConcept("ml", "UCUM", "milliliter"),
    "%": CodedConcept("%", "UCUM", "percent"),
    "ms": CodedConcept("ms", "UCUM", "millisecond"),
}


class MeasurementError(ValueError):
    """Measurements that cannot be saved or exported; the message says which and why."""


def _points(raw: Any, where: str) -> list[tuple[float, float]]:
    try:
        points = [(float(x), float(y)) for x, y in raw]
    except (TypeError, ValueError) as exc:
        raise MeasurementError(f"{where}: points must be [[x, y], ...] in image pixels") from exc
    if not 1 <= len(points) <= MAX_POINTS:
        raise MeasurementError(f"{where}: between 1 and {MAX_POINTS} points")
    if not all(math.isfinite(v) for point in points for v in point):
        raise MeasurementError(f"{where}: points must be finite numbers")
    return points


class MeasurementBook:
    """One JSON document of measurements per study, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, study: str) -> Path:
        if not UID_PATTERN.match(study) or len(study) > 64:
            raise MeasurementError(f"{study!r} is not a Study Instance UID")
        return self.folder / f"{study}.json"

    def load(self, study: str) -> dict[str, Any]:
        path = self._path(study)
        if not path.exists():
            return {"study_instance_uid": study, "measurements": [], "lv": None, "lv_note": "no contours"}
        return json.loads(path.read_text(encoding="utf-8"))

    def compute(self, library: LoopLibrary, study: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate the geometry and compute every value; the LV result from the contours."""
        raw = body.get("measurements")
        if not isinstance(raw, list) or len(raw) > MAX_MEASUREMENTS:
            raise MeasurementError(f"'measurements' must be a list of at most {MAX_MEASUREMENTS} items")
        regions_of: dict[str, Any] = {}
        out: list[dict[str, Any]] = []
        contours: dict[str, list[tuple[float, float]]] = {}
        for n, item in enumerate(raw, start=1):
            where = f"measurement {n}"
            if not isinstance(item, dict) or item.get("kind") not in KINDS:
                raise MeasurementError(f"{where}: 'kind' must be one of {', '.join(KINDS)}")
            sop = str(item.get("sop_instance_uid", ""))
            if sop not in regions_of:
                try:
                    instance, header = library.loop(sop)
                except LoopError as exc:
                    raise MeasurementError(f"{where}: {exc.detail}") from exc
                if instance.study_instance_uid != study:
                    raise MeasurementError(f"{where}: instance {sop} is not in study {study}")
                regions_of[sop] = library.regions(instance, header)
            regions = regions_of[sop]
            points = _points(item.get("points"), where)
            entry: dict[str, Any] = {
                "id": str(item.get("id", n))[:64],
                "kind": item["kind"],
                "sop_instance_uid": sop,
                "frame": int(item.get("frame", 1)),
                "points": [[round(x, 2), round(y, 2)] for x, y in points],
                "label": str(item.get("label", ""))[:64],
            }
            if item["kind"] == "distance":
                if len(points) != 2:
                    raise MeasurementError(f"{where}: a distance has exactly 2 points")
                d = caliper_distance(regions, points[0], points[1])
                entry.update(value=round(d.value, 3), unit=d.unit, calibrated=d.calibrated, **d.extra)
            elif item["kind"] == "area":
                if len(points) < 3:
                    raise MeasurementError(f"{where}: an area needs at least 3 points")
                a = polygon_area(regions, points)
                entry.update(value=round(a.value, 3), unit=a.unit, calibrated=a.calibrated)
            else:
                if entry["label"] not in LV_LABELS:
                    raise MeasurementError(
                        f"{where}: an LV contour is labelled one of {', '.join(LV_LABELS)}"
                    )
                mm = to_mm(regions, points)
                entry["calibrated"] = mm is not None
                if mm is not None:
                    try:
                        entry.update(value=round(volume_monoplane_ml(mm), 2), unit="ml")
                    except ContourError as exc:
                        raise MeasurementError(f"{where}: {exc}") from exc
                    contours[entry["label"]] = mm
            out.append(entry)
        lv: dict[str, Any] | None = None
        note = "no contours"
        if contours:
            try:
                result = lv_volumes(contours)
                lv = {
                    "method": result.method,
                    "edv_ml": round(result.edv_ml, 2),
                    "esv_ml": round(result.esv_ml, 2),
                    "ef_percent": round(result.ef_percent, 2),
                }
                note = ""
            except ContourError as exc:
                note = str(exc)
        return {"study_instance_uid": study, "measurements": out, "lv": lv, "lv_note": note}

    def save(self, library: LoopLibrary, study: str, body: dict[str, Any]) -> dict[str, Any]:
        path = self._path(study)
        document = self.compute(library, study, body)
        document["saved_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with self._lock:
            fd, temp = tempfile.mkstemp(dir=self.folder, suffix=".part")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(document, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, path)
        return document

    # -- DICOM SR --------------------------------------------------------------------------------

    def build_sr(self, library: LoopLibrary, study: str) -> Comprehensive3DSR:
        """TID 1500 measurement report: one group per calibrated measurement, one for the LV."""
        document = self.load(study)
        items = [m for m in document["measurements"] if m.get("calibrated") and m.get("unit") in UNITS]
        if not items and not document.get("lv"):
            raise MeasurementError(f"study {study} has no calibrated measurements to report")
        evidence: dict[str, Any] = {}
        for m in document["measurements"]:
            if m["sop_instance_uid"] not in evidence:
                evidence[m["sop_instance_uid"]] = library.loop(m["sop_instance_uid"])[1]
        groups = []
        for m in items:
            if m["kind"] == "lv":
                continue
            name = LENGTH if m["kind"] == "distance" else AREA
            source = evidence[m["sop_instance_uid"]]
            groups.append(
                MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{m['kind']} {m['id']}"),
                    measurements=[
                        Measurement(
                            name=name,
                            value=float(m["value"]),
                            unit=UNITS[m["unit"]],
                            referenced_images=[
                                SourceImageForMeasurement(
                                    source.SOPClassUID, source.SOPInstanceUID, [int(m["frame"])]
                                )
                            ],
                        )
                    ],
                )
            )
        lv = document.get("lv")
        if lv:
            groups.append(
                MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=TrackingIdentifier(
                        uid=hd.UID(), identifier=f"LV method of discs ({lv['method']})"
                    ),
                    measurements=[
                        Measurement(name=LV_EDV, value=float(lv["edv_ml"]), unit=UNITS["ml"]),
                        Measurement(name=LV_ESV, value=float(lv["esv_ml"]), unit=UNITS["ml"]),
                        Measurement(name=LV_EF, value=float(lv["ef_percent"]), unit=UNITS["%"]),
                    ],
                )
            )
        observer = ObserverContext(
            observer_type=CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name="Tessera cardiology"
            ),
        )
        report = MeasurementReport(
            observation_context=ObservationContext(
                observer_person_context=None, observer_device_context=observer
            ),
            procedure_reported=ECHOCARDIOGRAPHY,
            imaging_measurements=groups,
        )
        return Comprehensive3DSR(
            evidence=list(evidence.values()),
            content=report,
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="Tessera",
            series_description="Cardiology measurements",
        )

    def store_sr(self, library: LoopLibrary, study: str) -> dict[str, Any]:
        sr = self.build_sr(library, study)
        buffer = DicomBytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        outcome = library.archive.ingest_bytes(buffer.getvalue())
        if not outcome.ok:
            raise MeasurementError(f"the archive refused the SR: {outcome.reason}")
        return {
            "sop_instance_uid": outcome.sop_instance_uid,
            "series_instance_uid": outcome.series_instance_uid,
            "study_instance_uid": outcome.study_instance_uid,
        }

    # -- loop export with calipers -------------------------------------------------------------------

    def export_loop_video(self, library: LoopLibrary, sop: str, raw: list[dict[str, Any]]) -> bytes:
        """The loop as MP4 with distances, areas and contours of this loop drawn on every frame."""
        instance, header = library.loop(sop)
        if instance.study_instance_uid is None:
            raise MeasurementError("the loop has no study")
        document = self.compute(library, instance.study_instance_uid, {"measurements": raw})
        shapes = [m for m in document["measurements"] if m["sop_instance_uid"] == sop]

        def frames() -> Any:
            for pixels in library.iter_display_frames(instance, header):
                image = Image.fromarray(pixels).convert("RGB")
                draw = ImageDraw.Draw(image)
                for m in shapes:
                    points = [tuple(p) for p in m["points"]]
                    colour = (255, 214, 0) if m["kind"] == "distance" else (0, 220, 255)
                    if m["kind"] == "distance":
                        draw.line(points, fill=colour, width=2)
                    else:
                        draw.line(
                            [*points, points[0]] if m["kind"] == "area" else points, fill=colour, width=2
                        )
                    value = m.get("value")
                    if value is not None:
                        draw.text(
                            (points[-1][0] + 4, points[-1][1] + 4),
                            f"{value:g} {m.get('unit', '')}",
                            fill=colour,
                        )
                yield np.asarray(image)

        out = io.BytesIO()
        encode_mp4(frames(), library.timing(instance, header), out)
        return out.getvalue()
