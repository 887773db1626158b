"""DICOM annotations in the archive, read back onto a slide as GeoJSON in level-0 pixels.

Two kinds of object are understood, whoever made them (Tessera's own "Store as DICOM",
or another tool's STOW): Microscopy Bulk Simple Annotations (ANN) and TID 1500
measurement reports (Comprehensive / Comprehensive 3D / Enhanced SR). An object belongs
to the slide when it references the slide's series or one of its instances, or, for 3D
coordinates, when it shares the slide's Frame of Reference (and container, when both
name one). 2D coordinates are scaled from the referenced pyramid level to level 0; 3D
slide coordinates are mapped through the slide's origin, orientation and spacing.
Only objects in the slide's study are looked at. Reading is blocking: run in an executor.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from modules.pathology.dicom_annotations import source_image
from modules.pathology.slide_geometry import NoSlideGeometry, SlideGeometry
from server.archive.archive import Archive, StoredInstance

log = logging.getLogger(__name__)

MICROSCOPY_BULK_SIMPLE_ANNOTATIONS = "1.2.840.10008.5.1.4.1.1.91.1"
STRUCTURED_REPORTS = {
    "1.2.840.10008.5.1.4.1.1.88.34": hd.sr.Comprehensive3DSR,
    "1.2.840.10008.5.1.4.1.1.88.33": hd.sr.ComprehensiveSR,
    "1.2.840.10008.5.1.4.1.1.88.22": hd.sr.EnhancedSR,
}
ELLIPSE_VERTICES = 72


class NotForThisSlide(LookupError):
    """The object does not reference the slide (or cannot be placed on it)."""


@dataclass(frozen=True)
class SlideFrame:
    """What decides whether an object is the slide's, and where its coordinates land."""

    series_instance_uid: str
    base_size: tuple[int, int]  # level-0 (columns, rows)
    level_sizes: dict[str, tuple[int, int]]  # SOP Instance UID → its total pixel matrix size
    container_identifier: str
    geometry: SlideGeometry | None

    @classmethod
    def of(cls, base_header_json: str, sizes: dict[str, tuple[int, int]]) -> SlideFrame:
        base = source_image(base_header_json)
        try:
            geometry: SlideGeometry | None = SlideGeometry.of(base)
        except NoSlideGeometry:
            geometry = None  # 2D annotations still work
        return cls(
            series_instance_uid=str(base.SeriesInstanceUID),
            base_size=(int(base.TotalPixelMatrixColumns), int(base.TotalPixelMatrixRows)),
            level_sizes=sizes,
            container_identifier=str(base.get("ContainerIdentifier", "") or ""),
            geometry=geometry,
        )

    def scale_from(self, sop_instance_uid: str) -> tuple[float, float]:
        """Multiply a referenced level's 2D coordinates by this to get level-0 pixels."""
        size = self.level_sizes.get(sop_instance_uid)
        if size is None:
            raise NotForThisSlide(f"2D coordinates refer to image {sop_instance_uid}, not part of this slide")
        return self.base_size[0] / size[0], self.base_size[1] / size[1]

    def from_slide(self, points: np.ndarray, frame_of_reference_uid: str) -> np.ndarray:
        if self.geometry is None:
            raise NotForThisSlide("the slide has no slide coordinate system to place 3D coordinates in")
        if frame_of_reference_uid != self.geometry.frame_of_reference_uid:
            raise NotForThisSlide(
                f"3D coordinates are in another frame of reference ({frame_of_reference_uid})"
            )
        return self.geometry.to_pixels(points)

    def same_specimen(self, dataset: Dataset) -> bool:
        container = str(dataset.get("ContainerIdentifier", "") or "")
        return not container or not self.container_identifier or container == self.container_identifier


def _referenced_uids(dataset: Dataset) -> tuple[set[str], set[str]]:
    """Series and instance UIDs the object references (ANN references and SR evidence alike)."""
    series: set[str] = set()
    instances: set[str] = set()
    for item in dataset.get("ReferencedImageSequence", []):
        instances.add(str(item.get("ReferencedSOPInstanceUID", "")))
    for item in dataset.get("ReferencedSeriesSequence", []):
        series.add(str(item.get("SeriesInstanceUID", "")))
        for ref in item.get("ReferencedInstanceSequence", []):
            instances.add(str(ref.get("ReferencedSOPInstanceUID", "")))
    for tag in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in dataset.get(tag, []):
            for item in study.get("ReferencedSeriesSequence", []):
                series.add(str(item.get("SeriesInstanceUID", "")))
                for ref in item.get("ReferencedSOPSequence", []):
                    instances.add(str(ref.get("ReferencedSOPInstanceUID", "")))
    return series, instances


def references_slide(dataset: Dataset, frame: SlideFrame) -> bool:
    series, instances = _referenced_uids(dataset)
    if frame.series_instance_uid in series or instances & frame.level_sizes.keys():
        return True
    uid = str(dataset.get("FrameOfReferenceUID", "") or "")
    return bool(
        uid
        and frame.geometry
        and uid == frame.geometry.frame_of_reference_uid
        and frame.same_specimen(dataset)
    )


# -- shapes -----------------------------------------------------------------------------------------


def _geometry(graphic_type: str, pixels: np.ndarray) -> dict[str, Any]:
    """GeoJSON geometry for a DICOM graphic type; level-0 pixel positions rounded to 0.01 px."""
    points = [[round(float(x), 2), round(float(y), 2)] for x, y in pixels[:, :2]]
    if graphic_type in ("POINT", "MULTIPOINT") and len(points) == 1:
        return {"type": "Point", "coordinates": points[0]}
    if graphic_type == "MULTIPOINT":
        return {"type": "MultiPoint", "coordinates": points}
    if graphic_type == "POLYLINE":
        return {"type": "LineString", "coordinates": points}
    if graphic_type == "ELLIPSE":
        points = [[round(float(x), 2), round(float(y), 2)] for x, y in _ellipse(pixels[:, :2])]
    if points[0] != points[-1]:
        points.append(points[0])
    return {"type": "Polygon", "coordinates": [points]}  # POLYGON, RECTANGLE, ELLIPSE


def _ellipse(axes: np.ndarray) -> np.ndarray:
    """The outline of an ellipse given by its major axis end points, then its minor axis end points."""
    centre = axes.mean(axis=0)
    major, minor = (axes[1] - axes[0]) / 2, (axes[3] - axes[2]) / 2
    angles = np.linspace(0, 2 * math.pi, ELLIPSE_VERTICES, endpoint=False)
    return centre + np.outer(np.cos(angles), major) + np.outer(np.sin(angles), minor)


def _feature(geometry: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _meaning(code: Any) -> str:
    return str(getattr(code, "meaning", "") or "") if code is not None else ""


def ann_features(dataset: Dataset, frame: SlideFrame) -> list[dict[str, Any]]:
    """The shapes of a Microscopy Bulk Simple Annotations instance, in level-0 pixels."""
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(dataset, copy=False)
    coordinate_type = ann.annotation_coordinate_type
    if coordinate_type == hd.ann.AnnotationCoordinateTypeValues.SCOORD:
        images = [str(i.ReferencedSOPInstanceUID) for i in dataset.get("ReferencedImageSequence", [])]
        scale = np.asarray(frame.scale_from(images[0] if images else ""))
        transform = lambda points: np.asarray(points, dtype=np.float64)[:, :2] * scale  # noqa: E731
    else:
        uid = str(dataset.get("FrameOfReferenceUID", "") or "")
        transform = lambda points: frame.from_slide(np.asarray(points, dtype=np.float64), uid)  # noqa: E731
    features = []
    for group in ann.get_annotation_groups():
        graphic_type = group.graphic_type.value
        properties = {
            "label": str(group.label),
            "property_type": _meaning(group.annotated_property_type),
            "property_category": _meaning(group.annotated_property_category),
            "graphic_type": graphic_type,
        }
        for shape in group.get_graphic_data(coordinate_type):
            features.append(_feature(_geometry(graphic_type, transform(shape)), properties))
    return features


def report_features(dataset: Dataset, frame: SlideFrame) -> list[dict[str, Any]]:
    """The planar ROIs of a TID 1500 measurement report with their measurements, in level-0 pixels."""
    reader = STRUCTURED_REPORTS[str(dataset.SOPClassUID)]
    document = reader.from_dataset(dataset, copy=False)
    try:
        report = hd.sr.MeasurementReport.from_sequence([document], copy=False)
    except (ValueError, AttributeError) as exc:
        raise NotForThisSlide(f"not a TID 1500 measurement report: {exc}") from exc
    features = []
    for group in report.get_planar_roi_measurement_groups():
        region = group.roi
        if region is None:
            continue  # a segment reference, nothing to draw
        graphic_type = region.graphic_type.value
        data = np.asarray(region.value, dtype=np.float64)
        try:
            if isinstance(region, hd.sr.ImageRegion3D):
                pixels = frame.from_slide(data, str(region.frame_of_reference_uid))
            else:
                referenced = str(region.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                pixels = data[:, :2] * np.asarray(frame.scale_from(referenced))
        except NotForThisSlide:
            continue  # another image's region in a report that also covers this slide
        measurements = [
            {"name": _meaning(m.name), "value": float(m.value), "unit": str(m.unit.value)}
            for m in group.get_measurements()
        ]
        properties = {
            "label": str(group.tracking_identifier or ""),
            "tracking_uid": str(group.tracking_uid or ""),
            "property_type": _meaning(group.finding_type),
            "graphic_type": graphic_type,
            "measurements": measurements,
        }
        features.append(_feature(_geometry(graphic_type, pixels), properties))
    return features


# -- the archive --------------------------------------------------------------------------------------


def _describe(dataset: Dataset, kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "SOPInstanceUID": str(dataset.SOPInstanceUID),
        "SeriesInstanceUID": str(dataset.SeriesInstanceUID),
        "series_description": str(dataset.get("SeriesDescription", "") or ""),
        "content_label": str(dataset.get("ContentLabel", "") or ""),
        "manufacturer": str(dataset.get("Manufacturer", "") or ""),
        "content_date": str(dataset.get("ContentDate", "") or ""),
        "content_time": str(dataset.get("ContentTime", "") or ""),
    }


class DicomAnnotationReader:
    """Reads a slide's DICOM annotation objects; parsed objects are kept by blob hash and slide."""

    def __init__(self, archive: Archive, capacity: int = 256) -> None:
        self.archive = archive
        self.capacity = capacity
        self._parsed: OrderedDict[tuple[str, str], tuple[dict[str, Any], list[dict[str, Any]]] | None] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def candidates(self, study_uid: str) -> list[StoredInstance]:
        wanted = {MICROSCOPY_BULK_SIMPLE_ANNOTATIONS, *STRUCTURED_REPORTS}
        return [i for i in self.archive.stored_instances(study_uid) if i.sop_class_uid in wanted]

    def read(self, study_uid: str, frame: SlideFrame) -> dict[str, Any]:
        """A FeatureCollection of every annotation referencing the slide, with ``sources`` describing
        the objects they came from (features point at them by index). Unreadable objects are
        listed with the reason; they never fail the whole answer."""
        sources: list[dict[str, Any]] = []
        features: list[dict[str, Any]] = []
        for instance in self.candidates(study_uid):
            parsed = self._parse(instance, frame)
            if parsed is None:
                continue
            description, shapes = parsed
            index = len(sources)
            sources.append({**description, "features": len(shapes)})
            features.extend({**f, "properties": {**f["properties"], "source": index}} for f in shapes)
        return {"type": "FeatureCollection", "features": features, "sources": sources}

    def _parse(
        self, instance: StoredInstance, frame: SlideFrame
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        # the slide's instance count too: a level arriving later may make a 2D reference resolvable
        key = (instance.sha256, f"{frame.series_instance_uid}/{len(frame.level_sizes)}")
        with self._lock:
            if key in self._parsed:
                self._parsed.move_to_end(key)
                return self._parsed[key]
        result = self._parse_uncached(instance, frame)
        with self._lock:
            self._parsed[key] = result
            while len(self._parsed) > self.capacity:
                self._parsed.popitem(last=False)
        return result

    @staticmethod
    def _parse_uncached(
        instance: StoredInstance, frame: SlideFrame
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        try:
            dataset = pydicom.dcmread(instance.path)
        except (OSError, InvalidDicomError, ValueError) as exc:
            log.warning("annotation object %s unreadable: %s", instance.sop_instance_uid, exc)
            return None
        if not references_slide(dataset, frame):
            return None
        annotations = instance.sop_class_uid == MICROSCOPY_BULK_SIMPLE_ANNOTATIONS
        description = _describe(dataset, "annotations" if annotations else "measurement-report")
        try:
            shapes = (ann_features if annotations else report_features)(dataset, frame)
        except NotForThisSlide as exc:
            return {**description, "error": str(exc)}, []
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            log.warning("annotation object %s not understood: %s", instance.sop_instance_uid, exc)
            return {**description, "error": f"not understood: {str(exc)[:200]}"}, []
        if not shapes and not annotations:
            return None  # an SR referencing the slide but measuring nothing on it (another template)
        return description, shapes


def slide_frame(archive: Archive, base_sop_uid: str, instances: Iterable[tuple[str, int, int]]) -> SlideFrame:
    """The slide's frame from its base header and each instance's (SOP UID, columns, rows). Blocking."""
    header = archive.headers([base_sop_uid])[base_sop_uid]
    return SlideFrame.of(
        header, {uid: (columns, rows) for uid, columns, rows in instances if columns and rows}
    )
