"""Left-ventricular volume by the method of discs (modified Simpson's rule), and EF.

The contour is the endocardial border traced in one apical view from one mitral
annulus hinge point, round the apex, to the other (ASE/EACVI 2015 chamber
quantification). The long axis runs from the midpoint of the two hinge points to
the apex (the contour point farthest from that midpoint); it is cut into 20 discs
of equal height, and each disc's diameter is the contour's width perpendicular to
the axis at the disc's mid-level. Biplane: V = π/4 · Σ aᵢ·bᵢ · L/20 with L the
longer of the two lengths; monoplane: V = π/4 · Σ aᵢ² · L/20.

The viewer does the same arithmetic in JavaScript for live feedback; the values
saved with a study are computed here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DISCS = 20
Point = tuple[float, float]


class ContourError(ValueError):
    """A contour that cannot be measured (too few points, no length)."""


@dataclass(frozen=True)
class DiscProfile:
    """Long-axis length (mm) and the 20 disc diameters (mm) of one traced contour."""

    length_mm: float
    diameters_mm: tuple[float, ...]


def disc_profile(contour_mm: Sequence[Point], discs: int = DISCS) -> DiscProfile:
    """Length and disc diameters of a contour given in mm (first and last points: the annulus)."""
    if len(contour_mm) < 5:
        raise ContourError(f"an LV contour needs at least 5 points, got {len(contour_mm)}")
    (x0, y0), (x1, y1) = contour_mm[0], contour_mm[-1]
    base = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    apex = max(contour_mm, key=lambda p: math.hypot(p[0] - base[0], p[1] - base[1]))
    length = math.hypot(apex[0] - base[0], apex[1] - base[1])
    if length <= 0:
        raise ContourError("the contour has no long axis (apex on the annulus midpoint)")
    ux, uy = (apex[0] - base[0]) / length, (apex[1] - base[1]) / length
    # axis coordinates: s along the axis from the base, w across it
    axis = [
        ((x - base[0]) * ux + (y - base[1]) * uy, -(x - base[0]) * uy + (y - base[1]) * ux)
        for x, y in contour_mm
    ]
    closed = [*axis, axis[0]]  # the mitral plane closes the cavity
    diameters = []
    for k in range(discs):
        level = (k + 0.5) * length / discs
        crossings = []
        for (s_a, w_a), (s_b, w_b) in itertools.pairwise(closed):
            if (s_a - level) * (s_b - level) < 0 or (s_a == level and s_b != level):
                crossings.append(w_a + (level - s_a) * (w_b - w_a) / (s_b - s_a))
        diameters.append(max(crossings) - min(crossings) if len(crossings) >= 2 else 0.0)
    return DiscProfile(length, tuple(diameters))


def volume_monoplane_ml(contour_mm: Sequence[Point]) -> float:
    """Single-plane method of discs: each disc circular with the traced diameter."""
    profile = disc_profile(contour_mm)
    height = profile.length_mm / len(profile.diameters_mm)
    return math.pi / 4.0 * sum(d * d for d in profile.diameters_mm) * height / 1000.0


def volume_biplane_ml(a4c_mm: Sequence[Point], a2c_mm: Sequence[Point]) -> float:
    """Biplane method of discs: elliptical discs from two orthogonal apical views."""
    four, two = disc_profile(a4c_mm), disc_profile(a2c_mm)
    height = max(four.length_mm, two.length_mm) / DISCS
    return (
        math.pi / 4.0 * sum(a * b for a, b in zip(four.diameters_mm, two.diameters_mm, strict=True)) * height
    ) / 1000.0


def ejection_fraction(edv_ml: float, esv_ml: float) -> float:
    """EF in percent; refuses volumes that make no sense rather than reporting nonsense."""
    if edv_ml <= 0 or esv_ml < 0 or esv_ml > edv_ml:
        raise ContourError(f"EF needs 0 ≤ ESV ≤ EDV, got EDV {edv_ml:.1f} ml, ESV {esv_ml:.1f} ml")
    return 100.0 * (edv_ml - esv_ml) / edv_ml


@dataclass(frozen=True)
class LVResult:
    method: str  # "biplane" | "monoplane-A4C" | "monoplane-A2C"
    edv_ml: float
    esv_ml: float
    ef_percent: float


def lv_volumes(contours_mm: Mapping[str, Sequence[Point]]) -> LVResult:
    """EDV, ESV and EF from traced contours keyed "A4C-ED", "A4C-ES", "A2C-ED", "A2C-ES".

    Biplane when all four are present, otherwise monoplane from a view with both phases.
    """
    if all(k in contours_mm for k in ("A4C-ED", "A4C-ES", "A2C-ED", "A2C-ES")):
        edv = volume_biplane_ml(contours_mm["A4C-ED"], contours_mm["A2C-ED"])
        esv = volume_biplane_ml(contours_mm["A4C-ES"], contours_mm["A2C-ES"])
        return LVResult("biplane", edv, esv, ejection_fraction(edv, esv))
    for view in ("A4C", "A2C"):
        if f"{view}-ED" in contours_mm and f"{view}-ES" in contours_mm:
            edv = volume_monoplane_ml(contours_mm[f"{view}-ED"])
            esv = volume_monoplane_ml(contours_mm[f"{view}-ES"])
            return LVResult(f"monoplane-{view}", edv, esv, ejection_fraction(edv, esv))
    raise ContourError("an EF needs end-diastolic and end-systolic contours of A4C and/or A2C")
