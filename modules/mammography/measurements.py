"""Distances and areas on a mammogram in millimetres, saying which calibration they rest on.

The pixel size comes from the shared rule in ``server.imaging.calibration``: for a
mammogram ImagerPixelSpacing ÷ EstimatedRadiographicMagnificationFactor (the breast
plane), or ImagerPixelSpacing alone (the detector plane, about 7–10 % too long) when
the factor is missing. The viewer computes the same formulas live; these functions are
what the report and the tests use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.imaging.calibration import Calibration

Point = tuple[float, float]  # (x = column, y = row) in level-0 image pixels


@dataclass(frozen=True)
class Measurement:
    kind: str  # "distance" or "area"
    value: float
    unit: str  # "mm", "mm²", "px" or "px²"
    calibration: str  # the calibration's description, shown beside the value
    plane: str  # "patient", "detector" or "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "unit": self.unit,
            "calibration": self.calibration,
            "plane": self.plane,
        }


def distance(a: Point, b: Point, calibration: Calibration) -> Measurement:
    dx, dy = b[0] - a[0], b[1] - a[1]
    if calibration.calibrated:
        assert calibration.column_spacing_mm is not None and calibration.row_spacing_mm is not None
        value = math.hypot(dx * calibration.column_spacing_mm, dy * calibration.row_spacing_mm)
        return Measurement("distance", value, "mm", calibration.description, calibration.plane.value)
    return Measurement("distance", math.hypot(dx, dy), "px", calibration.description, "none")


def area(polygon: Sequence[Point], calibration: Calibration) -> Measurement:
    """Shoelace area of a closed polygon (three points or more)."""
    if len(polygon) < 3:
        raise ValueError("an area needs at least three points")
    twice = 0.0
    for (x0, y0), (x1, y1) in zip(polygon, [*polygon[1:], polygon[0]], strict=True):
        twice += x0 * y1 - x1 * y0
    pixels = abs(twice) / 2.0
    if calibration.calibrated:
        assert calibration.column_spacing_mm is not None and calibration.row_spacing_mm is not None
        value = pixels * calibration.column_spacing_mm * calibration.row_spacing_mm
        return Measurement("area", value, "mm²", calibration.description, calibration.plane.value)
    return Measurement("area", pixels, "px²", calibration.description, "none")
