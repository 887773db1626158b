"""Slide annotations as GeoJSON, one FeatureCollection per slide, kept beside the archive.

Coordinates are level-0 image pixels (x right, y down), the convention QuPath and
other slide tools use for GeoJSON, so a collection exported here imports there. Each
feature carries ``label`` and ``color``; measurements the viewer derives (length, area)
are recomputed from the geometry and the slide's calibration, never trusted from input.
Collections are module documents in the index database (``server.archive.documents``), so
every server process of a deployment reads the one a user saved through any of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from server.archive.documents import DocumentStore

MAX_FEATURES = 5000
MAX_VERTICES = 20_000
COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
GEOMETRIES = {"Point", "LineString", "Polygon"}
KINDS = {"point", "line", "rectangle", "polygon", "freehand", "field"}  # field: a calibrated counting area


class AnnotationError(ValueError):
    """The submitted GeoJSON is not an annotation collection Tessera accepts (a 400)."""


def _position(value: Any, where: str) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value[:2])
    ):
        raise AnnotationError(f"{where}: a position is [x, y] in image pixels")
    x, y = float(value[0]), float(value[1])
    if not (abs(x) < 1e7 and abs(y) < 1e7):
        raise AnnotationError(f"{where}: position out of range")
    return [round(x, 2), round(y, 2)]


def _geometry(geometry: Any, where: str) -> dict[str, Any]:
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRIES:
        raise AnnotationError(f"{where}: geometry must be a Point, LineString or Polygon")
    kind, coordinates = geometry["type"], geometry.get("coordinates")
    if kind == "Point":
        return {"type": kind, "coordinates": _position(coordinates, where)}
    if kind == "LineString":
        if not isinstance(coordinates, list) or not 2 <= len(coordinates) <= MAX_VERTICES:
            raise AnnotationError(f"{where}: a LineString has 2 to {MAX_VERTICES} positions")
        return {"type": kind, "coordinates": [_position(p, where) for p in coordinates]}
    if not isinstance(coordinates, list) or len(coordinates) != 1 or not isinstance(coordinates[0], list):
        raise AnnotationError(f"{where}: a Polygon has exactly one ring (no holes)")
    ring = [_position(p, where) for p in coordinates[0]]
    if not 4 <= len(ring) <= MAX_VERTICES or ring[0] != ring[-1]:
        raise AnnotationError(f"{where}: a Polygon ring is closed and has 4 to {MAX_VERTICES} positions")
    return {"type": kind, "coordinates": [ring]}


def validate_collection(document: Any) -> dict[str, Any]:
    """A clean FeatureCollection (unknown members dropped), or AnnotationError naming the problem."""
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        raise AnnotationError("expected a GeoJSON FeatureCollection")
    features = document.get("features")
    if not isinstance(features, list) or len(features) > MAX_FEATURES:
        raise AnnotationError(f"features must be a list of at most {MAX_FEATURES}")
    clean = []
    for index, feature in enumerate(features):
        where = f"feature {index}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationError(f"{where}: not a GeoJSON Feature")
        properties = feature.get("properties") or {}
        if not isinstance(properties, dict):
            raise AnnotationError(f"{where}: properties must be an object")
        label = properties.get("label", "")
        color = properties.get("color", "#ffd24d")
        kind = properties.get("kind", "")
        if not isinstance(label, str) or len(label) > 200:
            raise AnnotationError(f"{where}: label is text of at most 200 characters")
        if not isinstance(color, str) or not COLOR.match(color):
            raise AnnotationError(f"{where}: color is #rrggbb")
        geometry = _geometry(feature.get("geometry"), where)
        if kind not in KINDS:
            kind = {"Point": "point", "LineString": "line", "Polygon": "polygon"}[geometry["type"]]
        clean.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {"label": label, "color": color.lower(), "kind": kind},
            }
        )
    return {"type": "FeatureCollection", "features": clean}


class AnnotationStore:
    """One GeoJSON FeatureCollection per slide (keyed by its series UID). Blocking."""

    def __init__(self, documents: DocumentStore) -> None:
        self.shelf = documents.shelf("pathology", "annotations")

    def load(self, series_uid: str) -> dict[str, Any]:
        document = self.shelf.get(series_uid)
        if document is None:
            return {"type": "FeatureCollection", "features": []}
        body: dict[str, Any] = document.body
        return body

    def save(self, series_uid: str, collection: dict[str, Any], by: str | None = None) -> None:
        self.shelf.put(series_uid, collection, by=by)

    def import_files(self, folder: Path) -> int:
        """Earlier versions kept ``{series}.geojson`` files under the derived-data folder: bring them in."""
        files = sorted(folder.glob("*.geojson")) if folder.is_dir() else []
        return self.shelf.import_files(files, lambda path: path.stem, _read_json)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))
