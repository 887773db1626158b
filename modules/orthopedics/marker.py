"""Finding the calibration ball in the pixels, so the user confirms a circle instead of drawing one.

A steel calibration sphere is the densest, roundest thing on a hip film: its shadow
is a disc that saturates to the rim (the chord through a metal ball is long almost
to the edge), so its edge is the sharpest circular edge in the image. Implants are
as dense but not round. The search therefore

1. thresholds the densest pixels and labels connected blobs (scipy.ndimage),
2. keeps blobs whose size fits a ball of the expected diameter (from whatever DICOM
   spacing exists, widened for the unknown magnification) and that fill their circle,
3. refines the best blob to sub-pixel precision: along 180 rays from its centre the
   steepest fall of intensity is located (parabolic peak of the gradient) and a
   least-squares circle is fitted to those edge points, twice.

The result is a *proposal*; the calibration is only made when the user accepts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from scipy import ndimage

from modules.orthopedics.measurements import fit_circle
from server.imaging.calibration import DEFAULT_MARKER_DIAMETER_MM, dicom_calibrations

# A ball's image is larger than its true size by the projection magnification (1.0–1.4 in practice).
MAGNIFICATION_SEARCH = (0.8, 1.5)
RAYS = 180


class MarkerNotFound(LookupError):
    """No round, dense blob of a plausible size where the search looked."""


@dataclass(frozen=True)
class MarkerProposal:
    centre: tuple[float, float]  # x (column), y (row), image pixels
    radius_px: float
    fit_residual_px: float  # RMS distance of the edge points from the circle
    diameter_mm: float  # the size it was searched for

    def to_json(self) -> dict[str, Any]:
        return {
            "centre": [round(self.centre[0], 3), round(self.centre[1], 3)],
            "radius_px": round(self.radius_px, 3),
            "fit_residual_px": round(self.fit_residual_px, 3),
            "diameter_mm": self.diameter_mm,
        }


def attenuation_image(pixels: np.ndarray, header: Dataset) -> np.ndarray:
    """Values that grow with attenuation, whatever the photometric interpretation."""
    values = np.asarray(apply_modality_lut(pixels, header), dtype=np.float32)
    if str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        values = -values
    return values


def expected_radius_range(header: Dataset, diameter_mm: float, shape: tuple[int, int]) -> tuple[float, float]:
    """Radii (pixels) a ball of ``diameter_mm`` can have on this image."""
    report = dicom_calibrations(header)
    spacing = next((c.column_spacing_mm for c in report.candidates if c.column_spacing_mm), None)
    if spacing is None:
        return 3.0, min(shape) / 6.0
    nominal = diameter_mm / 2.0 / spacing
    return nominal * MAGNIFICATION_SEARCH[0], nominal * MAGNIFICATION_SEARCH[1]


def _refine(
    values: np.ndarray, centre: tuple[float, float], radius: float
) -> tuple[tuple[float, float], float, float]:
    """Sub-pixel circle from the steepest radial edge along RAYS rays."""
    smooth = ndimage.gaussian_filter(values, 1.0)
    cx, cy = centre
    for _ in range(3):
        radii = np.linspace(0.5 * radius, 1.5 * radius, max(int(radius * 2), 40))
        step = radii[1] - radii[0]
        angles = np.linspace(0.0, 2 * math.pi, RAYS, endpoint=False)
        xs = cx + np.outer(np.cos(angles), radii)
        ys = cy + np.outer(np.sin(angles), radii)
        profiles = ndimage.map_coordinates(smooth, [ys, xs], order=1, mode="nearest")
        fall = -np.gradient(profiles, axis=1)
        edges: list[tuple[float, float]] = []
        for i, row in enumerate(fall):
            k = int(np.argmax(row))
            if 0 < k < len(row) - 1 and row[k] > 0:
                a, b, c = row[k - 1], row[k], row[k + 1]
                denom = a - 2 * b + c
                shift = 0.5 * (a - c) / denom if denom != 0 else 0.0
                r = radii[k] + shift * step
                edges.append((cx + r * math.cos(angles[i]), cy + r * math.sin(angles[i])))
        if len(edges) < RAYS // 2:
            raise MarkerNotFound("the blob has no clear circular edge")
        (cx, cy), radius = fit_circle(edges)
        residuals = [abs(math.hypot(x - cx, y - cy) - radius) for x, y in edges]
        # Drop rays that hit something else (an overlapping bone edge) and fit again.
        limit = max(1.0, 3.0 * float(np.median(residuals)))
        kept = [e for e, d in zip(edges, residuals, strict=True) if d <= limit]
        if len(kept) >= RAYS // 2:
            (cx, cy), radius = fit_circle(kept)
            residuals = [abs(math.hypot(x - cx, y - cy) - radius) for x, y in kept]
    rms = math.sqrt(sum(r * r for r in residuals) / len(residuals))
    return (cx, cy), radius, rms


def find_marker(
    pixels: np.ndarray,
    header: Dataset,
    diameter_mm: float = DEFAULT_MARKER_DIAMETER_MM,
    near: tuple[float, float] | None = None,
    search_radius_px: float | None = None,
) -> MarkerProposal:
    """Propose the calibration ball's circle; ``near`` (a click) limits the search around it."""
    values = attenuation_image(pixels, header)
    rows, columns = values.shape
    r_min, r_max = expected_radius_range(header, diameter_mm, (rows, columns))
    x0 = y0 = 0
    if near is not None:
        reach = int(search_radius_px or 3 * r_max)
        x0, y0 = max(int(near[0]) - reach, 0), max(int(near[1]) - reach, 0)
        values = values[y0 : min(int(near[1]) + reach, rows), x0 : min(int(near[0]) + reach, columns)]
        if values.size == 0:
            raise MarkerNotFound("the point is outside the image")
    low, high = np.percentile(values, 5), float(values.max())
    candidates: list[tuple[float, tuple[float, float], float]] = []
    for fraction in (0.5, 0.7, 0.85):
        mask = values > low + fraction * (high - low)
        labels, count = ndimage.label(mask)
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        areas = ndimage.sum_labels(mask, labels, index)
        boxes = ndimage.find_objects(labels)
        for label, area, sl in zip(index, areas, boxes, strict=True):
            radius = math.sqrt(area / math.pi)
            if not r_min * 0.7 <= radius <= r_max * 1.1:
                continue
            height, width = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            fill = area / (math.pi * (max(height, width) / 2) ** 2)
            roundness = min(height, width) / max(height, width)
            if fill < 0.85 or roundness < 0.9:
                continue
            cy, cx = ndimage.center_of_mass(mask, labels, int(label))
            candidates.append((fill * roundness, (float(cx), float(cy)), radius))
        if candidates:
            break
    if not candidates:
        where = "near the point given" if near is not None else "in the image"
        raise MarkerNotFound(
            f"no round dense marker of {diameter_mm:g} mm (radius {r_min:.0f}–{r_max:.0f} px) found {where}"
        )
    best_error: MarkerNotFound | None = None
    for _, centre, radius in sorted(candidates, key=lambda c: -c[0]):
        try:
            (cx, cy), r, rms = _refine(values, centre, radius)
        except MarkerNotFound as exc:
            best_error = exc
            continue
        if r_min <= r <= r_max and rms < max(1.0, 0.05 * r):
            return MarkerProposal((cx + x0, cy + y0), r, rms, diameter_mm)
    raise best_error or MarkerNotFound("round blobs were found but none has a clean circular edge")
