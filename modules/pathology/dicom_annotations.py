"""Slide annotations written into the archive as DICOM Microscopy Bulk Simple Annotations.

The GeoJSON collection stays the working copy the viewer edits; each save also stores an
ANN instance (highdicom) in an "Annotations" series of the slide's study, so any DICOMweb
viewer (Slim, OHIF) sees the same shapes. Coordinates are 2D total-pixel-matrix positions
of the slide's base level, the same level-0 pixels the GeoJSON holds. Every save is a new
instance (SOP Instance UID derived from content and time, higher Instance Number): the latest
one wins.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import defaultdict
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from modules.pathology.dicom_writer import uid_from

GRAPHIC_TYPES = {"Point": "POINT", "LineString": "POLYLINE", "Polygon": "POLYGON"}


def source_image(header_json: str) -> Dataset:
    """The slide's base-level header as a pydicom Dataset (bulk data left out)."""
    return Dataset.from_json(json.loads(header_json), bulk_data_uri_handler=lambda *_: b"")


def annotations_dataset(collection: dict[str, Any], source: Dataset) -> Dataset | None:
    """An ANN instance for a validated FeatureCollection; None when it holds nothing."""
    groups: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for feature in collection["features"]:
        geometry = feature["geometry"]
        points = [geometry["coordinates"]] if geometry["type"] == "Point" else geometry["coordinates"]
        if geometry["type"] == "Polygon":
            points = points[0][:-1]  # DICOM polygons are implicitly closed
        label = feature["properties"].get("label") or feature["properties"].get("kind", "annotation")
        groups[(GRAPHIC_TYPES[geometry["type"]], label[:64])].append(np.asarray(points, dtype=np.float32))
    if not groups:
        return None
    annotation_groups = [
        hd.ann.AnnotationGroup(
            number=number,
            uid=uid_from("annotation-group", source.SeriesInstanceUID, graphic_type, label),
            label=label,
            annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            annotated_property_type=codes.SCT.Tissue,
            graphic_type=graphic_type,
            graphic_data=shapes,
            algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.MANUAL,
        )
        for number, ((graphic_type, label), shapes) in enumerate(sorted(groups.items()), start=1)
    ]
    content = hashlib.blake2b(json.dumps(collection, sort_keys=True).encode(), digest_size=16).hexdigest()
    return hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source],
        annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD,
        annotation_groups=annotation_groups,
        series_instance_uid=uid_from("annotations", source.SeriesInstanceUID),
        series_number=int(source.get("SeriesNumber", 1) or 1) + 1000,
        # a new instance per save (the content date and time differ), derived from content and moment
        sop_instance_uid=uid_from("annotations", source.SeriesInstanceUID, content, time.time_ns()),
        instance_number=int(time.time()) % 2**31,
        manufacturer="Tessera",
        manufacturer_model_name="Tessera pathology viewer",
        software_versions="1",
        device_serial_number="1",
        content_description="Slide annotations",
        series_description="Slide annotations",
        content_label="ANNOTATIONS",
    )


def annotations_bytes(collection: dict[str, Any], header_json: str) -> bytes | None:
    """The ANN instance as a Part 10 file, ready for the archive's ingest."""
    dataset = annotations_dataset(collection, source_image(header_json))
    if dataset is None:
        return None
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
