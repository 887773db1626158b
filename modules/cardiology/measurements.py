"""Calipers, areas and LV contours saved with a study; values computed here from the regions.

The viewer sends geometry in image pixels (loop, frame, points); the server computes every
value from the regions of that frame (SequenceOfUltrasoundRegions of the image the frame
comes from, per frame where the data set defines it), so what is saved, exported as JSON
and written into a DICOM SR is one computation, not the browser's word. Each measurement
records the SOP instance (and, for a multi-frame image, the frame) it was made on: for a
loop of grouped single-frame images that is the image of that frame, which the SR cites. Saved documents
are module documents in the index database (user data, not a rebuildable product, shared by every
server process: see ``server.archive.documents``).
"""

from __future__ import annotations

import datetime
import io
import json
import math
import re
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

from modules.cardiology.cine import caliper_distance, point_value, polygon_area, to_mm
from modules.cardiology.loops import LoopError, LoopFrames, LoopLibrary
from modules.cardiology.lv_volume import ContourError, lv_volumes, volume_monoplane_ml
from modules.cardiology.video import encode_mp4
from server.archive.documents import DocumentStore

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
KINDS = ("distance", "area", "lv", "velocity")
LV_LABELS = ("A4C-ED", "A4C-ES", "A2C-ED", "A2C-ES")
MAX_MEASUREMENTS = 500
MAX_POINTS = 2000

ECHOCARDIOGRAPHY = CodedConcept("40701008", "SCT", "Echocardiography")
LENGTH = CodedConcept("410668003", "SCT", "Length")
DURATION = CodedConcept("103335007", "SCT", "Duration")
PEAK_VELOCITY = CodedConcept("11726-7", "LN", "Peak Velocity")
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
    "cm/s": CodedConcept("cm/s", "UCUM", "centimeter per second"),
}
CONCEPTS = {"mm": LENGTH, "cm2": AREA, "ms": DURATION, "cm/s": PEAK_VELOCITY}


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
    """One document of measurements per study (keyed by its Study Instance UID)."""

    def __init__(self, documents: DocumentStore) -> None:
        self.shelf = documents.shelf("cardiology", "measurements")

    @staticmethod
    def _key(study: str) -> str:
        if not UID_PATTERN.match(study) or len(study) > 64:
            raise MeasurementError(f"{study!r} is not a Study Instance UID")
        return study

    def import_files(self, folder: Path) -> int:
        """Earlier versions kept ``{study}.json`` files in ``data_dir/cardiology/measurements``: bring them in."""
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        return self.shelf.import_files(
            files,
            lambda path: path.stem if UID_PATTERN.match(path.stem) and len(path.stem) <= 64 else None,
            lambda path: json.loads(path.read_text(encoding="utf-8")),
        )

    def load(self, study: str) -> dict[str, Any]:
        document = self.shelf.get(self._key(study))
        if document is None:
            return {"study_instance_uid": study, "measurements": [], "lv": None, "lv_note": "no contours"}
        body: dict[str, Any] = document.body
        return body

    def compute(self, library: LoopLibrary, study: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate the geometry and compute every value; the LV result from the contours."""
        raw = body.get("measurements") if isinstance(body, dict) else None
        if not isinstance(raw, list) or len(raw) > MAX_MEASUREMENTS:
            raise MeasurementError(f"'measurements' must be a list of at most {MAX_MEASUREMENTS} items")
        loops: dict[str, LoopFrames] = {}
        out: list[dict[str, Any]] = []
        contours: dict[str, list[tuple[float, float]]] = {}
        for n, item in enumerate(raw, start=1):
            where = f"measurement {n}"
            if not isinstance(item, dict) or item.get("kind") not in KINDS:
                raise MeasurementError(f"{where}: 'kind' must be one of {', '.join(KINDS)}")
            loop_id = str(item.get("sop_instance_uid", ""))
            try:
                frame_number = int(item.get("frame", 1))
            except (TypeError, ValueError) as exc:
                raise MeasurementError(f"{where}: 'frame' must be a frame number") from exc
            try:
                if loop_id not in loops:
                    loops[loop_id] = library.loop_frames(loop_id)
                frame = loops[loop_id].frame(frame_number)
            except LoopError as exc:
                raise MeasurementError(f"{where}: {exc.detail}") from exc
            if loops[loop_id].study_instance_uid != study:
                raise MeasurementError(f"{where}: loop {loop_id} is not in study {study}")
            regions = frame.regions
            points = _points(item.get("points"), where)
            entry: dict[str, Any] = {
                "id": str(item.get("id", n))[:64],
                "kind": item["kind"],
                "sop_instance_uid": loop_id,
                "frame": frame_number,
                "referenced_sop_class_uid": frame.instance.sop_class_uid,
                "referenced_sop_instance_uid": frame.instance.sop_instance_uid,
                "referenced_frame": frame.frame_number,
                "points": [[round(x, 2), round(y, 2)] for x, y in points],
                "label": str(item.get("label", ""))[:64],
            }
            if item["kind"] == "distance":
                if len(points) != 2:
                    raise MeasurementError(f"{where}: a distance has exactly 2 points")
                d = caliper_distance(regions, points[0], points[1])
                entry.update(value=round(d.value, 3), unit=d.unit, calibrated=d.calibrated, **d.extra)
            elif item["kind"] == "velocity":
                if len(points) != 1:
                    raise MeasurementError(f"{where}: a velocity is one point")
                v = point_value(regions, points[0])
                if not v.calibrated:
                    raise MeasurementError(
                        f"{where}: the point is in no spectral Doppler region of frame {frame_number}"
                    )
                entry.update(value=round(v.value, 3), unit=v.unit, calibrated=True, **v.extra)
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

    def save(
        self, library: LoopLibrary, study: str, body: dict[str, Any], by: str | None = None
    ) -> dict[str, Any]:
        key = self._key(study)
        document = self.compute(library, study, body)
        document["saved_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.shelf.put(key, document, by=by)
        return document

    # -- DICOM SR --------------------------------------------------------------------------------

    def build_sr(self, library: LoopLibrary, study: str) -> Comprehensive3DSR:
        """TID 1500 measurement report: one group per calibrated measurement, one for the LV."""
        document = self.load(study)
        items = [m for m in document["measurements"] if m.get("calibrated") and m.get("unit") in CONCEPTS]
        if not items and not document.get("lv"):
            raise MeasurementError(f"study {study} has no calibrated measurements to report")
        evidence: dict[str, Any] = {}  # the images measured on: a grouped loop's frames are images
        for m in document["measurements"]:
            uid = m.get("referenced_sop_instance_uid") or m["sop_instance_uid"]
            if uid not in evidence:
                try:
                    evidence[uid] = library.instance(uid)[1]
                except LoopError as exc:
                    raise MeasurementError(f"measurement {m['id']}: {exc.detail}") from exc
        groups = []
        for m in items:
            if m["kind"] == "lv":
                continue
            source = evidence[m.get("referenced_sop_instance_uid") or m["sop_instance_uid"]]
            frame = m.get("referenced_frame", m["frame"])
            groups.append(
                MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{m['kind']} {m['id']}"),
                    measurements=[
                        Measurement(
                            name=CONCEPTS[m["unit"]],
                            value=float(m["value"]),
                            unit=UNITS[m["unit"]],
                            referenced_images=[
                                SourceImageForMeasurement(
                                    source.SOPClassUID,
                                    source.SOPInstanceUID,
                                    [int(frame)] if frame is not None else None,
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

    def export_loop_video(self, library: LoopLibrary, loop_id: str, raw: list[dict[str, Any]]) -> bytes:
        """The loop (multi-frame or grouped images) as MP4 with its distances, areas, contours and
        velocities drawn on every frame."""
        try:
            study = library.loop_frames(loop_id).study_instance_uid
            _first, _header, display, timing = library.display_frames(loop_id)
        except LoopError as exc:
            raise MeasurementError(exc.detail) from exc
        document = self.compute(library, study, {"measurements": raw})
        shapes = [m for m in document["measurements"] if m["sop_instance_uid"] == loop_id]

        def frames() -> Any:
            for pixels in display:
                image = Image.fromarray(pixels).convert("RGB")
                draw = ImageDraw.Draw(image)
                for m in shapes:
                    points = [tuple(p) for p in m["points"]]
                    colour = (255, 214, 0) if m["kind"] == "distance" else (0, 220, 255)
                    if m["kind"] == "velocity":
                        x, y = points[0]
                        draw.line([(x - 6, y), (x + 6, y)], fill=colour, width=2)
                        draw.line([(x, y - 6), (x, y + 6)], fill=colour, width=2)
                    elif m["kind"] == "distance":
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
        encode_mp4(frames(), timing, out)
        return out.getvalue()
