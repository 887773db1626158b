"""Orthopedic measurements from points placed on a radiograph, in the image's calibrated plane.

Points arrive in image pixels (x = column, y = row, y pointing down, as the viewer draws
them); they are turned into millimetres with the active :class:`Calibration` *before*
any geometry, so non-square pixels are handled once. Without a calibration, lengths
are answered in pixels (``unit: "px"``) and never in mm, angles still in degrees.

The maths lives here, server-side, so the viewer, the DICOM SR and the PDF report all
show the same numbers (the viewer asks ``POST .../measurements``). Side-dependent
angles (varus/valgus, medial/lateral) assume the standard AP display: the patient's
right on the image's left, so "medial" is +x for the right leg and −x for the left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.imaging.calibration import Calibration

Point = tuple[float, float]


class MeasurementError(ValueError):
    """Points that do not define the measurement asked for (wrong count, coincident points…)."""


@dataclass(frozen=True)
class Quantity:
    name: str
    value: float
    unit: str  # "mm", "px", "deg" or "" for a label-like number

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": round(self.value, 4), "unit": self.unit}


@dataclass(frozen=True)
class MeasurementResult:
    kind: str
    quantities: tuple[Quantity, ...]
    labels: dict[str, str] = field(default_factory=dict)  # e.g. {"alignment": "varus"}

    def value(self, name: str) -> float:
        return next(q.value for q in self.quantities if q.name == name)

    def summary(self) -> str:
        """One line for the overlay, the SR text and the PDF: '6.0° varus', '52.1 mm'."""
        parts = []
        for q in self.quantities:
            if q.name in SUMMARY_HIDDEN:
                continue
            unit = "°" if q.unit == "deg" else f" {q.unit}" if q.unit else ""
            parts.append(f"{q.name.replace('_', ' ')} {q.value:.1f}{unit}")
        parts.extend(self.labels.values())
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "quantities": [q.to_json() for q in self.quantities],
            "labels": self.labels,
            "summary": self.summary(),
        }


SUMMARY_HIDDEN = {"centre_x", "centre_y"}


@dataclass(frozen=True)
class Plane:
    """Pixel → plane coordinates for one image: mm when calibrated, pixels otherwise."""

    calibration: Calibration
    columns: int | None = None  # image width, to infer the side of a landmark

    @property
    def unit(self) -> str:
        return "mm" if self.calibration.calibrated else "px"

    def at(self, p: Point) -> Point:
        return self.calibration.to_mm(*p) if self.calibration.calibrated else (float(p[0]), float(p[1]))


# -- plane geometry ---------------------------------------------------------------------------


def _sub(a: Point, b: Point) -> Point:
    return a[0] - b[0], a[1] - b[1]


def _norm(v: Point) -> float:
    return math.hypot(v[0], v[1])


def _unit(v: Point, what: str) -> Point:
    n = _norm(v)
    if n < 1e-9:
        raise MeasurementError(f"{what}: the two points coincide")
    return v[0] / n, v[1] / n


def _angle_between(u: Point, v: Point) -> float:
    """Unsigned angle between two vectors, 0–180°."""
    cross = u[0] * v[1] - u[1] * v[0]
    dot = u[0] * v[0] + u[1] * v[1]
    return math.degrees(math.atan2(abs(cross), dot))


def _line_angle(a1: Point, a2: Point, b1: Point, b2: Point) -> float:
    """Acute angle between two (undirected) lines, 0–90°."""
    angle = _angle_between(_unit(_sub(a2, a1), "first line"), _unit(_sub(b2, b1), "second line"))
    return min(angle, 180.0 - angle)


def _signed_distance(p: Point, a: Point, b: Point) -> float:
    """Distance of p from line a–b, positive on the side the line's left-hand normal points to
    (with y down and a→b running to +x, positive is *below* the line)."""
    d = _unit(_sub(b, a), "reference line")
    return (p[0] - a[0]) * -d[1] + (p[1] - a[1]) * d[0]


def fit_circle(points: Sequence[Point]) -> tuple[Point, float]:
    """Least-squares circle (Kåsa) through ≥ 3 points; exact circumcircle for 3."""
    if len(points) < 3:
        raise MeasurementError("a circle needs at least three points on its edge")
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    suu = suv = svv = suuu = svvv = suvv = svuu = 0.0
    for x, y in points:
        u, v = x - mx, y - my
        suu += u * u
        suv += u * v
        svv += v * v
        suuu += u * u * u
        svvv += v * v * v
        suvv += u * v * v
        svuu += v * u * u
    det = suu * svv - suv * suv
    if abs(det) < 1e-9 * max(suu * svv, 1e-12):
        raise MeasurementError("the circle's points lie on a straight line")
    rhs_u = 0.5 * (suuu + suvv)
    rhs_v = 0.5 * (svvv + svuu)
    uc = (rhs_u * svv - rhs_v * suv) / det
    vc = (suu * rhs_v - suv * rhs_u) / det
    radius = math.sqrt(uc * uc + vc * vc + (suu + svv) / len(points))
    return (uc + mx, vc + my), radius


def _medial_sign(side: str) -> float:
    """+1 when medial is +x on the image (the patient's right leg in an AP view), −1 for the left."""
    if side not in ("R", "L"):
        raise MeasurementError("side must be 'R' or 'L'")
    return 1.0 if side == "R" else -1.0


def _side(plane: Plane, x_px: float, side: str | None) -> str:
    if side:
        return side.upper()
    if plane.columns:
        return "R" if x_px < plane.columns / 2 else "L"
    raise MeasurementError("say which side ('R' or 'L') this measurement is on")


# -- measurements ----------------------------------------------------------------------------


def length(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    a, b = plane.at(pts[0]), plane.at(pts[1])
    return MeasurementResult("length", (Quantity("length", _norm(_sub(b, a)), plane.unit),))


def angle(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    a, vertex, b = (plane.at(p) for p in pts)
    value = _angle_between(_unit(_sub(a, vertex), "first arm"), _unit(_sub(b, vertex), "second arm"))
    return MeasurementResult("angle", (Quantity("angle", value, "deg"),))


def line_angle(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    a1, a2, b1, b2 = (plane.at(p) for p in pts)
    return MeasurementResult("line-angle", (Quantity("angle", _line_angle(a1, a2, b1, b2), "deg"),))


def cobb(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Cobb angle: between the upper endplate of the upper and the lower endplate of the lower vertebra."""
    a1, a2, b1, b2 = (plane.at(p) for p in pts)
    return MeasurementResult("cobb", (Quantity("cobb_angle", _line_angle(a1, a2, b1, b2), "deg"),))


def circle(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Circle through points on an edge (a femoral head): centre (pixels, for drawing) and diameter."""
    (cx, cy), _ = fit_circle([(float(p[0]), float(p[1])) for p in pts])
    _, radius = fit_circle([plane.at(p) for p in pts])
    return MeasurementResult(
        "circle",
        (
            Quantity("diameter", 2 * radius, plane.unit),
            Quantity("centre_x", cx, "px"),
            Quantity("centre_y", cy, "px"),
        ),
    )


def perpendicular(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Distance of a point from a line (a helper for parallel/perpendicular constructions)."""
    a, b, p = (plane.at(q) for q in pts)
    return MeasurementResult(
        "perpendicular", (Quantity("distance", abs(_signed_distance(p, a, b)), plane.unit),)
    )


def parallel(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """A line through a point parallel to a reference line (drawn by the viewer), and their distance."""
    a, b, p = (plane.at(q) for q in pts)
    return MeasurementResult("parallel", (Quantity("distance", abs(_signed_distance(p, a, b)), plane.unit),))


def cup_inclination(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Acetabular cup inclination: the cup's opening (two rim points) against the inter-teardrop line."""
    rim_a, rim_b, ref_a, ref_b = (plane.at(p) for p in pts)
    return MeasurementResult(
        "cup-inclination", (Quantity("inclination", _line_angle(rim_a, rim_b, ref_a, ref_b), "deg"),)
    )


def femoral_offset(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Femoral offset: perpendicular distance from the head centre to the femoral shaft axis."""
    head, shaft_a, shaft_b = (plane.at(p) for p in pts)
    return MeasurementResult(
        "femoral-offset",
        (Quantity("femoral_offset", abs(_signed_distance(head, shaft_a, shaft_b)), plane.unit),),
    )


LLD_REFERENCES = {"leg-length": "inter-teardrop line", "leg-length-ischial": "ischial line"}


def _leg_length(kind: str, plane: Plane, pts: Sequence[Point]) -> MeasurementResult:
    """Leg-length discrepancy: how far each landmark (lesser trochanter) lies below a pelvic
    reference line; positive difference = the right leg is longer.

    Points: reference line (two points, any order), right landmark, left landmark. The result
    names its reference: the two lines are not interchangeable when the pelvis is asymmetric or
    tilted, and a number without its reference cannot be compared with a later film.
    """
    ref_a, ref_b, right, left = (plane.at(p) for p in pts)
    if ref_a[0] > ref_b[0]:
        ref_a, ref_b = ref_b, ref_a  # left-to-right so that "below" is positive
    below_r = _signed_distance(right, ref_a, ref_b)
    below_l = _signed_distance(left, ref_a, ref_b)
    difference = below_r - below_l
    label = "equal" if abs(difference) < 0.5 else ("right longer" if difference > 0 else "left longer")
    labels = {"leg_length": label}
    if kind != "leg-length":  # the teardrop line is the default; only the alternative says so
        labels["reference"] = f"vs {LLD_REFERENCES[kind]}"
    return MeasurementResult(
        kind,
        (
            Quantity("right_below_reference", below_r, plane.unit),
            Quantity("left_below_reference", below_l, plane.unit),
            Quantity("difference_right_minus_left", difference, plane.unit),
        ),
        labels,
    )


def leg_length(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """LLD against the inter-teardrop line (lowest points of the two teardrops)."""
    return _leg_length("leg-length", plane, pts)


def leg_length_ischial(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """LLD against the ischial line (lowest points of the two ischial tuberosities): the usual
    alternative when the teardrops are hidden (by a cup, or on a rotated film)."""
    return _leg_length("leg-length-ischial", plane, pts)


def hka(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Hip-knee-ankle angle: between the femoral (hip→knee) and tibial (knee→ankle) mechanical axes.

    Reported as the angle at the knee (180° straight) and the deviation, labelled varus when the
    knee lies lateral of the hip–ankle line.
    """
    which = _side(plane, pts[1][0], side)
    hip, knee, ankle = (plane.at(p) for p in pts)
    femur = _unit(_sub(knee, hip), "femoral mechanical axis")
    tibia = _unit(_sub(ankle, knee), "tibial mechanical axis")
    deviation = _angle_between(femur, tibia)
    # Turning from femur to tibia toward medial means the knee bows laterally: varus.
    turn = femur[0] * tibia[1] - femur[1] * tibia[0]  # > 0: turns toward −x when going down (y down)
    toward_medial = (-turn) * _medial_sign(which) > 0
    signed = deviation if toward_medial else -deviation
    label = "neutral" if deviation < 0.5 else ("varus" if toward_medial else "valgus")
    return MeasurementResult(
        "hka",
        (Quantity("hka", 180.0 - deviation, "deg"), Quantity("deviation", signed, "deg")),
        {"alignment": f"{label} ({which})"},
    )


def _directed_toward(line_a: Point, line_b: Point, sign: float) -> Point:
    """The unit direction of a line pointing toward +x (sign 1) or −x (sign −1)."""
    d = _unit(_sub(line_b, line_a), "joint line")
    return d if d[0] * sign >= 0 else (-d[0], -d[1])


def mldfa(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Mechanical lateral distal femoral angle: the lateral angle between the femoral mechanical
    axis (knee→hip) and the distal femoral joint line (normal 85–90°). Points: hip, knee, two
    points on the condyles' joint line."""
    which = _side(plane, pts[1][0], side)
    hip, knee, c1, c2 = (plane.at(p) for p in pts)
    lateral = _directed_toward(c1, c2, -_medial_sign(which))
    value = _angle_between(_unit(_sub(hip, knee), "femoral mechanical axis"), lateral)
    return MeasurementResult("mldfa", (Quantity("mldfa", value, "deg"),), {"side": which})


def mpta(plane: Plane, pts: Sequence[Point], side: str | None) -> MeasurementResult:
    """Medial proximal tibial angle: the medial angle between the tibial mechanical axis
    (knee→ankle) and the tibial plateau line (normal 85–90°). Points: knee, ankle, two points
    on the plateau."""
    which = _side(plane, pts[0][0], side)
    knee, ankle, p1, p2 = (plane.at(p) for p in pts)
    medial = _directed_toward(p1, p2, _medial_sign(which))
    value = _angle_between(_unit(_sub(ankle, knee), "tibial mechanical axis"), medial)
    return MeasurementResult("mpta", (Quantity("mpta", value, "deg"),), {"side": which})


Measure = Callable[[Plane, Sequence[Point], str | None], MeasurementResult]

# kind -> (number of points, function, what the points are, in the order the viewer asks for them)
MEASUREMENTS: dict[str, tuple[int, Measure, tuple[str, ...]]] = {
    "length": (2, length, ("start", "end")),
    "angle": (3, angle, ("first arm", "vertex", "second arm")),
    "line-angle": (4, line_angle, ("line 1 start", "line 1 end", "line 2 start", "line 2 end")),
    "cobb": (4, cobb, ("upper endplate", "upper endplate", "lower endplate", "lower endplate")),
    "circle": (3, circle, ("edge", "edge", "edge")),
    "perpendicular": (3, perpendicular, ("line start", "line end", "point")),
    "parallel": (3, parallel, ("line start", "line end", "point")),
    "cup-inclination": (4, cup_inclination, ("cup rim", "cup rim", "teardrop", "teardrop")),
    "femoral-offset": (3, femoral_offset, ("head centre", "shaft axis", "shaft axis")),
    "leg-length": (
        4,
        leg_length,
        ("teardrop", "teardrop", "right lesser trochanter", "left lesser trochanter"),
    ),
    "leg-length-ischial": (
        4,
        leg_length_ischial,
        ("ischial tuberosity", "ischial tuberosity", "right lesser trochanter", "left lesser trochanter"),
    ),
    "hka": (3, hka, ("hip centre", "knee centre", "ankle centre")),
    "mldfa": (4, mldfa, ("hip centre", "knee centre", "condyle", "condyle")),
    "mpta": (4, mpta, ("knee centre", "ankle centre", "plateau", "plateau")),
}


def parse_points(raw: Any, expected: int | None = None) -> list[Point]:
    """Validate ``[[x, y], ...]`` from JSON."""
    if not isinstance(raw, list):
        raise MeasurementError("points must be a list of [x, y] pairs")
    points: list[Point] = []
    for item in raw:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise MeasurementError("each point must be [x, y]")
        try:
            x, y = float(item[0]), float(item[1])
        except (TypeError, ValueError) as exc:
            raise MeasurementError("point coordinates must be numbers") from exc
        if not (math.isfinite(x) and math.isfinite(y)):
            raise MeasurementError("point coordinates must be finite")
        points.append((x, y))
    if expected is not None and len(points) != expected:
        raise MeasurementError(f"this measurement needs {expected} points, got {len(points)}")
    return points


def measure(kind: str, points: Sequence[Point], plane: Plane, side: str | None = None) -> MeasurementResult:
    """Compute one measurement; raises MeasurementError naming what is wrong with the input."""
    spec = MEASUREMENTS.get(kind)
    if spec is None:
        raise MeasurementError(f"unknown measurement {kind!r}; known: {', '.join(MEASUREMENTS)}")
    count, function, _ = spec
    if len(points) < count or (kind != "circle" and len(points) != count):
        raise MeasurementError(f"{kind} needs {count} points, got {len(points)}")
    if side is not None and side.upper() not in ("R", "L"):
        raise MeasurementError("side must be 'R' or 'L'")
    return function(plane, points, side.upper() if side else None)


def reconstruction_change(
    cup_centre: Point,
    stem_head_centre: Point,
    reference_a: Point,
    reference_b: Point,
    plane: Plane,
    side: str,
) -> dict[str, Quantity]:
    """What a cup + stem template pair does to the hip: the stem's head centre against the cup's
    centre of rotation, along (offset) and across (leg length) the reference line.

    Positive leg-length change: the stem's head sits *below* the cup centre, so reducing the hip
    pulls the leg down — it lengthens. Positive offset change: the head sits lateral of the cup
    centre — offset increases.
    """
    cup, head = plane.at(cup_centre), plane.at(stem_head_centre)
    a, b = plane.at(reference_a), plane.at(reference_b)
    if a[0] > b[0]:
        a, b = b, a
    along = _unit(_sub(b, a), "reference line")
    delta = _sub(head, cup)
    lengthening = _signed_distance(head, a, b) - _signed_distance(cup, a, b)
    lateral = -_medial_sign(side)
    offset = (delta[0] * along[0] + delta[1] * along[1]) * lateral
    return {
        "leg_length_change": Quantity("leg_length_change", lengthening, plane.unit),
        "offset_change": Quantity("offset_change", offset, plane.unit),
    }


__all__ = [
    "LLD_REFERENCES",
    "MEASUREMENTS",
    "MeasurementError",
    "MeasurementResult",
    "Plane",
    "Quantity",
    "fit_circle",
    "measure",
    "parse_points",
    "reconstruction_change",
]
