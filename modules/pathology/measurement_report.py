"""Slide measurements written into the archive as a DICOM TID 1500 Measurement Report.

Line lengths and polygon areas the pathologist measured become one Planar ROI
measurement group each (TID 1410) in a Comprehensive 3D SR: the ROI as SCOORD3D in the
slide's Frame of Reference, the value in µm or mm² with its UCUM unit, a tracking
identifier carrying the annotation's label and a tracking UID derived from the shape.
The values are recomputed from the geometry and the slide's pixel spacing here, never
taken from the client. Points carry no measurement and stay in the bulk annotations.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from modules.pathology.dicom_annotations import source_image
from modules.pathology.dicom_writer import uid_from
from modules.pathology.slide_geometry import SlideGeometry

MICROMETRE = hd.sr.CodedConcept("um", "UCUM", "micrometer")
SQUARE_MILLIMETRE = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")


def line_length_um(points: np.ndarray, spacing_mm: tuple[float, float]) -> float:
    """Length of a polyline given in level-0 pixels (column, row); spacing is (row, column) in mm."""
    steps = np.diff(np.asarray(points, dtype=np.float64), axis=0)
    return float(np.hypot(steps[:, 0] * spacing_mm[1], steps[:, 1] * spacing_mm[0]).sum() * 1000)


def polygon_area_mm2(ring: np.ndarray, spacing_mm: tuple[float, float]) -> float:
    """Area of a simple polygon (open ring, level-0 pixels) by the shoelace formula."""
    x = np.asarray(ring, dtype=np.float64)[:, 0] * spacing_mm[1]
    y = np.asarray(ring, dtype=np.float64)[:, 1] * spacing_mm[0]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _measurement_group(
    feature: dict[str, Any], index: int, source: Dataset, geometry: SlideGeometry
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    coordinates = feature["geometry"]["coordinates"]
    kind = feature["geometry"]["type"]
    if kind == "LineString":
        pixels = np.asarray(coordinates, dtype=np.float64)
        graphic_type = hd.sr.GraphicTypeValues3D.POLYLINE
        measurement = hd.sr.Measurement(
            name=codes.SCT.Length, value=line_length_um(pixels, geometry.spacing_mm), unit=MICROMETRE
        )
    elif kind == "Polygon":
        pixels = np.asarray(
            coordinates[0], dtype=np.float64
        )  # closed ring: SCOORD3D POLYGON repeats the first
        graphic_type = hd.sr.GraphicTypeValues3D.POLYGON
        measurement = hd.sr.Measurement(
            name=codes.SCT.Area,
            value=polygon_area_mm2(pixels[:-1], geometry.spacing_mm),
            unit=SQUARE_MILLIMETRE,
        )
    else:
        return None
    label = feature["properties"].get("label") or feature["properties"].get("kind", "measurement")
    shape = json.dumps(feature["geometry"], sort_keys=True)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid_from("measurement", source.SeriesInstanceUID, index, shape),
            identifier=f"{label[:56]} #{index + 1}",
        ),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=graphic_type,
            graphic_data=geometry.to_slide(pixels),
            frame_of_reference_uid=geometry.frame_of_reference_uid,
        ),
        finding_type=codes.SCT.Tissue,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        measurements=[measurement],
    )


def report_dataset(collection: dict[str, Any], source: Dataset) -> Dataset | None:
    """A Comprehensive 3D SR holding the collection's lengths and areas; None when it has none.

    Raises NoSlideGeometry when the slide cannot be placed on the glass (SCOORD3D needs it).
    """
    geometry = SlideGeometry.of(source)
    groups = [
        group
        for index, feature in enumerate(collection["features"])
        if (group := _measurement_group(feature, index, source, geometry)) is not None
    ]
    if not groups:
        return None
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=uid_from("tessera-pathology-viewer"), name="Tessera pathology viewer"
                ),
            )
        ),
        procedure_reported=codes.DCM.SlideMicroscopy,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    content = hashlib.blake2b(json.dumps(collection, sort_keys=True).encode(), digest_size=16).hexdigest()
    return hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=uid_from("measurement-report", source.SeriesInstanceUID),
        series_number=int(source.get("SeriesNumber", 1) or 1) + 2000,
        # a new instance per save (the content date and time differ), derived from content and moment
        sop_instance_uid=uid_from("measurement-report", source.SeriesInstanceUID, content, time.time_ns()),
        instance_number=int(time.time()) % 2**31,
        manufacturer="Tessera",
        series_description="Slide measurements",
        is_complete=True,
    )


def report_bytes(collection: dict[str, Any], header_json: str) -> bytes | None:
    """The measurement report as a Part 10 file, ready for the archive's ingest."""
    dataset = report_dataset(collection, source_image(header_json))
    if dataset is None:
        return None
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
