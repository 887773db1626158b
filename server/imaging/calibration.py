"""The one place that maps DICOM attributes to a physical pixel size (mm per pixel).

Projection radiographs (CR, DX, MG, XA, radiograph-like SC) are a cone-beam shadow:
the detector sees the anatomy *magnified* by source-to-image over source-to-object
distance. ``ImagerPixelSpacing`` is therefore the spacing *at the detector*, and a
length measured with it is 10–20 % too long at the bone. Generic viewers mix the two
up; every specialty module asks this module instead, so the rule lives once.

Sources, in the order they are tried (PS3.3 §10.7.1 "Basic Pixel Spacing Calibration
Macro" and C.8.11.4 / C.8.12 notes):

1. ``user`` — a calibration a person made on the image (marker of known size, or a
   line of known length). It always wins because it was measured at the anatomy.
2. ``pixel-spacing`` — ``PixelSpacing`` when it describes the patient plane: either
   it is the only spacing given (the modality put it there for the patient), or
   ``PixelSpacingCalibrationType`` says it was calibrated (GEOMETRY or FIDUCIAL), or
   it equals ``ImagerPixelSpacing ÷ EstimatedRadiographicMagnificationFactor``.
   Enhanced objects carry it in ``PixelMeasuresSequence`` instead.
3. ``imager-spacing-magnification`` — ``ImagerPixelSpacing ÷
   EstimatedRadiographicMagnificationFactor``: the modality's estimate of the plane
   of interest.
4. ``imager-spacing-detector`` — ``ImagerPixelSpacing`` alone: true at the detector
   only; the result is *flagged* (``plane == "detector"``) so a viewer says so.
5. ``none`` — nothing usable: lengths stay in pixels.

A header that contradicts itself (``PixelSpacing`` ≠ ``ImagerPixelSpacing`` with no
``PixelSpacingCalibrationType`` and no magnification factor explaining the
difference) gets no millimetres at all: picking either value would be a guess.
The user may still calibrate, or explicitly choose one of the DICOM sources
(``prefer``), which is then recorded as their choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset

# Two spacings closer than this (relative) are "the same" value written twice.
SAME_SPACING_TOLERANCE = 0.005
# A magnification factor outside this range is not a projection geometry we believe.
MAGNIFICATION_RANGE = (1.0, 3.0)
DEFAULT_MARKER_DIAMETER_MM = 25.0


class CalibrationError(ValueError):
    """A calibration request that cannot give a physical scale (zero size, degenerate marker…)."""


class CalibrationSource(StrEnum):
    USER = "user"
    PIXEL_SPACING = "pixel-spacing"
    IMAGER_MAGNIFICATION = "imager-spacing-magnification"
    IMAGER_DETECTOR = "imager-spacing-detector"
    NONE = "none"


class CalibrationPlane(StrEnum):
    PATIENT = "patient"  # lengths are true at the anatomy (the plane of interest)
    DETECTOR = "detector"  # lengths are magnified by the projection geometry
    NONE = "none"


SOURCE_ORDER: tuple[CalibrationSource, ...] = (
    CalibrationSource.USER,
    CalibrationSource.PIXEL_SPACING,
    CalibrationSource.IMAGER_MAGNIFICATION,
    CalibrationSource.IMAGER_DETECTOR,
    CalibrationSource.NONE,
)


@dataclass(frozen=True)
class CalibrationMarker:
    """What a user calibration was made from, in image pixels (x = column, y = row, 0-based centres)."""

    kind: str  # "circle" (a ball or ring of known diameter) or "line" (a known length)
    size_mm: float  # the known diameter or length
    points: tuple[tuple[float, float], ...]  # line: the two ends; circle: the centre
    radius_px: float | None = None  # circle only

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "kind": self.kind,
            "size_mm": self.size_mm,
            "points": [list(p) for p in self.points],
        }
        if self.radius_px is not None:
            document["radius_px"] = self.radius_px
            document["centre"] = list(self.points[0])
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> CalibrationMarker:
        radius = document.get("radius_px")
        return cls(
            kind=str(document["kind"]),
            size_mm=float(document["size_mm"]),
            points=tuple((float(p[0]), float(p[1])) for p in document["points"]),
            radius_px=float(radius) if radius is not None else None,
        )


@dataclass(frozen=True)
class Calibration:
    """The physical size of a pixel and where that number came from.

    ``row_spacing_mm`` is the distance between the centres of adjacent *rows* (the
    vertical, y direction), ``column_spacing_mm`` between adjacent *columns* (x), as in
    DICOM ``PixelSpacing``. Both are None when the image is uncalibrated.
    """

    source: CalibrationSource
    row_spacing_mm: float | None = None
    column_spacing_mm: float | None = None
    plane: CalibrationPlane = CalibrationPlane.NONE
    description: str = "no calibration: lengths are in pixels"
    magnification: float | None = None  # detector ÷ patient-plane size, when known
    marker: CalibrationMarker | None = None
    warnings: tuple[str, ...] = ()
    chosen_by_user: bool = False  # a DICOM source the user picked over the default order

    @property
    def calibrated(self) -> bool:
        return self.row_spacing_mm is not None and self.column_spacing_mm is not None

    def to_mm(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel coordinates to millimetres in the calibrated plane."""
        if not self.calibrated:
            raise CalibrationError("the image has no calibration: lengths are in pixels only")
        assert self.row_spacing_mm is not None and self.column_spacing_mm is not None
        return x * self.column_spacing_mm, y * self.row_spacing_mm

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source.value,
            "calibrated": self.calibrated,
            "plane": self.plane.value,
            "mm_per_pixel": (
                {"row": self.row_spacing_mm, "column": self.column_spacing_mm} if self.calibrated else None
            ),
            "description": self.description,
            "magnification": self.magnification,
            "marker": self.marker.to_json() if self.marker else None,
            "warnings": list(self.warnings),
            "chosen_by_user": self.chosen_by_user,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Calibration:
        spacing = document.get("mm_per_pixel") or {}
        marker = document.get("marker")
        return cls(
            source=CalibrationSource(document["source"]),
            row_spacing_mm=float(spacing["row"]) if spacing.get("row") is not None else None,
            column_spacing_mm=float(spacing["column"]) if spacing.get("column") is not None else None,
            plane=CalibrationPlane(document.get("plane", "none")),
            description=str(document.get("description", "")),
            magnification=document.get("magnification"),
            marker=CalibrationMarker.from_json(marker) if marker else None,
            warnings=tuple(document.get("warnings", ())),
            chosen_by_user=bool(document.get("chosen_by_user", False)),
        )


UNCALIBRATED = Calibration(CalibrationSource.NONE)


@dataclass(frozen=True)
class CalibrationReport:
    """Every source the header offers (usable or not, with why), and the active one."""

    active: Calibration
    candidates: tuple[Calibration, ...]
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.active.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "problems": list(self.problems),
        }


# -- reading the header ----------------------------------------------------------------------


def _spacing_pair(value: Any, keyword: str, problems: list[str]) -> tuple[float, float] | None:
    """A two-valued spacing as floats, or None with a problem recorded when it is unusable."""
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes):
        value = (value.decode("ascii", "replace") if isinstance(value, bytes) else value).split("\\")
    try:
        values = [float(v) for v in (value if isinstance(value, Sequence) else [value])]
    except (TypeError, ValueError):
        problems.append(f"{keyword} is not numeric ({value!r}); ignored")
        return None
    if len(values) != 2:
        problems.append(f"{keyword} has {len(values)} values, not 2 (row\\column); ignored")
        return None
    if not all(math.isfinite(v) and v > 0 for v in values):
        problems.append(f"{keyword} {values[0]}\\{values[1]} is not positive; ignored")
        return None
    return values[0], values[1]


def _magnification(header: Dataset, problems: list[str]) -> float | None:
    value = header.get("EstimatedRadiographicMagnificationFactor")
    if value is None or value == "":
        return None
    try:
        factor = float(value)
    except (TypeError, ValueError):
        problems.append(f"EstimatedRadiographicMagnificationFactor {value!r} is not numeric; ignored")
        return None
    low, high = MAGNIFICATION_RANGE
    if not (math.isfinite(factor) and low <= factor <= high):
        problems.append(f"EstimatedRadiographicMagnificationFactor {factor} is outside {low}–{high}; ignored")
        return None
    return factor


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(abs(x - y) <= SAME_SPACING_TOLERANCE * max(x, y) for x, y in zip(a, b, strict=True))


def _pixel_measures_spacing(header: Dataset) -> Any:
    for sequence in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = header.get(sequence)
        if groups and "PixelMeasuresSequence" in groups[0]:
            return groups[0].PixelMeasuresSequence[0].get("PixelSpacing")
    return None


def dicom_calibrations(header: Dataset) -> CalibrationReport:
    """What the header itself says, source by source, before any user calibration."""
    problems: list[str] = []
    pixel = _spacing_pair(header.get("PixelSpacing"), "PixelSpacing", problems)
    if pixel is None and "PixelSpacing" not in header:
        pixel = _spacing_pair(_pixel_measures_spacing(header), "PixelMeasuresSequence PixelSpacing", problems)
    imager = _spacing_pair(header.get("ImagerPixelSpacing"), "ImagerPixelSpacing", problems)
    factor = _magnification(header, problems)
    calibration_type = str(header.get("PixelSpacingCalibrationType", "") or "").strip().upper()
    calibration_note = str(header.get("PixelSpacingCalibrationDescription", "") or "").strip()

    candidates: list[Calibration] = []
    contradiction: str | None = None

    if pixel is not None:
        magnified = (imager[0] / factor, imager[1] / factor) if imager and factor else None
        if imager is None:
            candidates.append(
                Calibration(
                    CalibrationSource.PIXEL_SPACING,
                    *pixel,
                    plane=CalibrationPlane.PATIENT,
                    description="PixelSpacing (the modality's spacing in the patient plane)",
                )
            )
        elif calibration_type in ("GEOMETRY", "FIDUCIAL"):
            what = "geometry" if calibration_type == "GEOMETRY" else "a fiducial"
            candidates.append(
                Calibration(
                    CalibrationSource.PIXEL_SPACING,
                    *pixel,
                    plane=CalibrationPlane.PATIENT,
                    description=f"PixelSpacing calibrated by {what}"
                    + (f" ({calibration_note})" if calibration_note else ""),
                    magnification=imager[1] / pixel[1],
                )
            )
        elif magnified is not None and _same(pixel, magnified):
            candidates.append(
                Calibration(
                    CalibrationSource.PIXEL_SPACING,
                    *pixel,
                    plane=CalibrationPlane.PATIENT,
                    description="PixelSpacing (= ImagerPixelSpacing ÷ EstimatedRadiographicMagnificationFactor)",
                    magnification=factor,
                )
            )
        elif _same(pixel, imager):
            pass  # the detector spacing written twice: it says nothing about the patient plane
        else:
            contradiction = (
                f"PixelSpacing {pixel[0]:g}\\{pixel[1]:g} differs from ImagerPixelSpacing "
                f"{imager[0]:g}\\{imager[1]:g} and PixelSpacingCalibrationType does not say why"
                + (" (nor does the magnification factor)" if factor else "")
                + ": the header contradicts itself, so no millimetres are given; calibrate on a marker"
            )
            problems.append(contradiction)

    if imager is not None and contradiction is None:
        if factor is not None:
            candidates.append(
                Calibration(
                    CalibrationSource.IMAGER_MAGNIFICATION,
                    imager[0] / factor,
                    imager[1] / factor,
                    plane=CalibrationPlane.PATIENT,
                    description=f"ImagerPixelSpacing ÷ EstimatedRadiographicMagnificationFactor {factor:g}",
                    magnification=factor,
                )
            )
        candidates.append(
            Calibration(
                CalibrationSource.IMAGER_DETECTOR,
                *imager,
                plane=CalibrationPlane.DETECTOR,
                description="ImagerPixelSpacing at the detector: lengths at the anatomy are smaller "
                "by the (unknown) magnification",
                warnings=("detector-plane spacing: not corrected for magnification",),
            )
        )

    if not candidates and not problems:
        problems.append("no PixelSpacing or ImagerPixelSpacing: lengths are in pixels until calibrated")
    active = (
        replace(candidates[0], warnings=(*candidates[0].warnings, *problems))
        if candidates
        else replace(UNCALIBRATED, warnings=tuple(problems), description=problems[0])
    )
    return CalibrationReport(active=active, candidates=tuple(candidates), problems=tuple(problems))


def resolve_calibration(
    header: Dataset,
    user: Calibration | None = None,
    prefer: CalibrationSource | None = None,
) -> CalibrationReport:
    """The active calibration: ``user`` if given, else ``prefer`` if the header offers it, else the order.

    ``prefer`` is how a user overrides the order without drawing anything (e.g. "use the
    detector spacing, I know the magnification is negligible"); an unavailable choice is
    reported rather than silently replaced.
    """
    report = dicom_calibrations(header)
    if user is not None:
        if user.source is not CalibrationSource.USER:
            raise CalibrationError("a user calibration must have source 'user'")
        return CalibrationReport(active=user, candidates=(user, *report.candidates), problems=report.problems)
    if prefer is not None and prefer not in (CalibrationSource.USER, CalibrationSource.NONE):
        chosen = next((c for c in report.candidates if c.source is prefer), None)
        if chosen is None:
            problems = (*report.problems, f"the chosen source {prefer.value} is not available in this image")
            return CalibrationReport(
                active=replace(report.active, warnings=(*report.active.warnings, problems[-1])),
                candidates=report.candidates,
                problems=problems,
            )
        return replace(report, active=replace(chosen, chosen_by_user=True))
    if prefer is CalibrationSource.NONE:
        return replace(
            report,
            active=replace(UNCALIBRATED, description="uncalibrated by choice", chosen_by_user=True),
        )
    return report


# -- user calibrations -----------------------------------------------------------------------


def _aspect(header: Dataset | None) -> float:
    """Row spacing ÷ column spacing the header implies (1 for square or unknown pixels).

    A user calibration measures one scale; non-square detector pixels keep their ratio.
    """
    if header is None:
        return 1.0
    report = dicom_calibrations(header)
    for candidate in report.candidates:
        if candidate.calibrated:
            assert candidate.row_spacing_mm and candidate.column_spacing_mm
            return candidate.row_spacing_mm / candidate.column_spacing_mm
    return 1.0


def _detector_magnification(header: Dataset | None, column_spacing: float) -> float | None:
    if header is None:
        return None
    imager = _spacing_pair(header.get("ImagerPixelSpacing"), "ImagerPixelSpacing", [])
    return imager[1] / column_spacing if imager else None


def _positive(value: float, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what} must be a number, not {value!r}") from exc
    if not math.isfinite(number) or number <= 0:
        raise CalibrationError(f"{what} must be greater than zero (got {value})")
    return number


def calibrate_from_circle(
    centre: tuple[float, float],
    radius_px: float,
    diameter_mm: float = DEFAULT_MARKER_DIAMETER_MM,
    header: Dataset | None = None,
) -> Calibration:
    """A calibration from a ball (or ring) of known diameter circled on the image.

    The radius is measured along the columns (x); rows keep the header's aspect ratio.
    """
    diameter = _positive(diameter_mm, "the marker diameter (mm)")
    radius = _positive(radius_px, "the marker radius (pixels)")
    column = diameter / (2.0 * radius)
    row = column * _aspect(header)
    return Calibration(
        CalibrationSource.USER,
        row,
        column,
        plane=CalibrationPlane.PATIENT,
        description=f"user: {diameter:g} mm marker circled",
        magnification=_detector_magnification(header, column),
        marker=CalibrationMarker("circle", diameter, ((float(centre[0]), float(centre[1])),), radius),
    )


def calibrate_from_line(
    start: tuple[float, float],
    end: tuple[float, float],
    length_mm: float,
    header: Dataset | None = None,
) -> Calibration:
    """A calibration from a line of known length drawn on the image (a ruler, an implant)."""
    length = _positive(length_mm, "the known length (mm)")
    aspect = _aspect(header)
    dx, dy = float(end[0]) - float(start[0]), float(end[1]) - float(start[1])
    scaled = math.hypot(dx, dy * aspect)
    if scaled < 1.0:
        raise CalibrationError("the calibration line is shorter than one pixel; draw it along the object")
    column = length / scaled
    return Calibration(
        CalibrationSource.USER,
        column * aspect,
        column,
        plane=CalibrationPlane.PATIENT,
        description=f"user: line of {length:g} mm",
        magnification=_detector_magnification(header, column),
        marker=CalibrationMarker(
            "line", length, ((float(start[0]), float(start[1])), (float(end[0]), float(end[1])))
        ),
    )
