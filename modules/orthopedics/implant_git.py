"""DICOM Generic Implant Template (PS3.3 A.65 / C.29) objects turned into library templates.

Manufacturers publish their templates as Generic Implant Template instances (SOP class
1.2.840.10008.5.1.4.43.1): one instance per implant and size, with the 2D drawings as
encapsulated HPGL plotter programs. The archive stores them like any other instance; this
module reads them and converts the drawing into the library's format
(``tessera.implant-template/1``: outlines in true-size millimetres), so they are placed,
resized and saved in plans exactly like the shipped JSON templates.

Scale, per PS3.3 C.29.1.2.1.1: HPGL coordinates are integers on a 25 µm grid of the *printed*
page (origin lower left, y up); HPGL Document Scaling (0068,62F2) is real-world mm per printed
mm. So ``mm = units × 0.025 × scaling``, and y is flipped to the library's y-down frame. The
scale is never guessed: a drawing without a usable scaling is refused.

Only the HPGL subset a 2D template needs is understood (pen up/down, absolute and relative
plotting, pen select, line type, circles); a command that would change the geometry in a way
not understood (plotter scaling, rotation, arcs…) refuses the whole drawing with a message
naming the command, rather than drawing something at the wrong size.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from modules.orthopedics.templates import TEMPLATE_FORMAT, ImplantTemplate, TemplateError, parse_template

GENERIC_IMPLANT_TEMPLATE = "1.2.840.10008.5.1.4.43.1"
SOURCE = "DICOM GIT"
HPGL_UNIT_MM = 0.025  # PS3.3 C.29.1.2.1.1: a 25 µm grid on the printed page
CIRCLE_SEGMENTS = 72
# Commands that do not move the pen or change the drawn geometry: skipped.
_HARMLESS = frozenset(
    {"IN", "DF", "VS", "DT", "SI", "SL", "DI", "FS", "CO", "WU", "PW", "SS", "CS", "PG", "NR"}
)
# Commands that change the geometry in ways this reader does not model: refused, never approximated.
_REFUSED = {
    "SC": "plotter scaling (SC)",
    "IP": "scaling points (IP)",
    "IW": "an input window (IW)",
    "RO": "page rotation (RO)",
    "AA": "arcs (AA)",
    "AR": "arcs (AR)",
    "AT": "arcs (AT)",
    "RT": "arcs (RT)",
    "EA": "edge rectangles (EA)",
    "ER": "edge rectangles (ER)",
    "RA": "filled rectangles (RA)",
    "RR": "filled rectangles (RR)",
    "EW": "wedges (EW)",
    "WG": "wedges (WG)",
    "PE": "polyline-encoded data (PE)",
    "PM": "polygon mode (PM)",
    "BZ": "Bézier curves (BZ)",
    "BR": "Bézier curves (BR)",
}
_COMMAND = re.compile(r"([A-Za-z]{2})")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_PARAMETERS = re.compile(rf"[\s,]*(?:{_NUMBER.pattern}(?:(?:[\s,]+|(?=[-+])){_NUMBER.pattern})*)?[\s,]*")
_TYPE_WORDS = (
    ("acetabular-cup", ("cup", "acetabul", "shell")),
    ("femoral-stem", ("stem",)),
    ("femoral-head", ("head", "ball")),
    ("knee-femoral", ("femoral component", "knee femoral")),
    ("knee-tibial", ("tibial", "tibia")),
    ("plate", ("plate",)),
    ("screw", ("screw",)),
    ("nail", ("nail",)),
)


class HpglError(TemplateError):
    """An HPGL drawing this reader cannot turn into true-size outlines."""


@dataclass
class HpglPath:
    """One pen-down polyline in HPGL plotter units (y up, as printed)."""

    pen: int
    dashed: bool
    points: list[tuple[float, float]] = field(default_factory=list)


def parse_hpgl(document: bytes | str) -> list[HpglPath]:
    """The pen-down polylines of an HPGL program, in plotter units.

    Tolerant where it costs nothing (separators, case, whitespace, labels, trailing NUL padding
    from the OB value), strict where the geometry would be wrong (see ``_REFUSED``)."""
    text = document.decode("latin-1") if isinstance(document, bytes) else document
    text = text.replace("\x00", "")
    paths: list[HpglPath] = []
    pen, dashed, down, absolute = 1, False, False, True
    x = y = 0.0
    current: HpglPath | None = None
    position = 0
    seen_command = False

    def finish() -> None:
        nonlocal current
        if current is not None and len(current.points) >= 2:
            paths.append(current)
        current = None

    while position < len(text):
        char = text[position]
        if char.isspace() or char in ";,":
            position += 1
            continue
        match = _COMMAND.match(text, position)
        if match is None:
            raise HpglError(f"HPGL: unexpected {char!r} at byte {position}; expected a two-letter command")
        command = match.group(1).upper()
        start = match.end()
        if command == "LB":  # a label: text up to the terminator (ETX), not geometry
            end = text.find("\x03", start)
            position = len(text) if end < 0 else end + 1
            seen_command = True
            continue
        end = start
        while end < len(text) and not text[end].isalpha() and text[end] != ";":
            end += 1
        arguments = text[start:end]
        position = end
        seen_command = True
        if not _PARAMETERS.fullmatch(arguments):
            raise HpglError(f"HPGL: {command} has unreadable parameters {arguments.strip()!r}")
        numbers = [float(n) for n in _NUMBER.findall(arguments)]
        if command in _HARMLESS:
            continue
        if command in _REFUSED:
            raise HpglError(
                f"HPGL: {_REFUSED[command]} is not supported; convert the drawing to plain PU/PD/PA"
            )
        if command == "SP":
            finish()
            pen = int(numbers[0]) if numbers else 0
            continue
        if command == "LT":
            finish()
            dashed = bool(numbers)  # LT with a pattern number: dashed; bare LT: solid
            continue
        if command in ("PA", "PR"):
            absolute = command == "PA"
        elif command in ("PU", "PD"):
            if command == "PU":
                finish()
            down = command == "PD"
        elif command == "CI":
            if not numbers or numbers[0] <= 0:
                raise HpglError("HPGL: CI needs a positive radius")
            finish()
            radius = numbers[0]
            circle = HpglPath(pen, dashed)
            for k in range(CIRCLE_SEGMENTS + 1):
                angle = 2 * math.pi * k / CIRCLE_SEGMENTS
                circle.points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
            paths.append(circle)
            continue
        else:
            raise HpglError(f"HPGL: command {command!r} is not supported")
        if len(numbers) % 2:
            raise HpglError(f"HPGL: {command} needs x,y pairs, got {len(numbers)} numbers")
        for i in range(0, len(numbers), 2):
            nx, ny = (numbers[i], numbers[i + 1]) if absolute else (x + numbers[i], y + numbers[i + 1])
            if not (math.isfinite(nx) and math.isfinite(ny)):
                raise HpglError(f"HPGL: {command} has a non-finite coordinate")
            if down:
                if current is None:
                    current = HpglPath(pen, dashed, [(x, y)])
                current.points.append((nx, ny))
            x, y = nx, ny
    finish()
    if not seen_command:
        raise HpglError("HPGL: the document is empty")
    if not paths:
        raise HpglError("HPGL: the document draws nothing (no pen-down moves)")
    return paths


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value not in (None, "") else ""


def _slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")


def _meanings(sequence: Iterable[Dataset] | None) -> list[str]:
    meanings: list[str] = []
    for item in sequence or ():
        for keyword in ("CodeMeaning",):
            if item.get(keyword):
                meanings.append(str(item.get(keyword)))
        for nested in ("AnatomicRegionSequence", "ImplantTypeCodeSequence"):
            meanings.extend(_meanings(item.get(nested)))
    return meanings


def _implant_type(ds: Dataset) -> str:
    """Library type from the names and codes: manufacturers' codes vary, words do not much."""
    words = " ".join(
        [_text(ds, "ImplantName"), *_meanings(ds.get("ImplantTypeCodeSequence"))]
        + [_text(d, "HPGLDocumentLabel") for d in ds.get("HPGLDocumentSequence", [])]
    ).lower()
    for kind, needles in _TYPE_WORDS:
        if any(n in words for n in needles):
            return kind
    return "other"


def _choose_document(ds: Dataset) -> Dataset:
    """The AP (frontal) drawing when the views are coded, else the first: templating is on AP films."""
    documents = list(ds.get("HPGLDocumentSequence", []))
    if not documents:
        raise TemplateError("no HPGL Document Sequence (0068,62C0): the template has no 2D drawing")
    for document in documents:
        text = " ".join(
            [*_meanings(document.get("ViewOrientationCodeSequence")), _text(document, "HPGLDocumentLabel")]
        )
        words = set(re.split(r"[^a-z-]+", text.lower()))
        if words & {"ap", "a-p", "anterior", "frontal", "anteroposterior", "antero-posterior"}:
            return document
    return documents[0]


def _scale(document: Dataset) -> float:
    raw = document.get("HPGLDocumentScaling")
    try:
        scaling = float(raw) if raw is not None else math.nan
    except (TypeError, ValueError):
        scaling = math.nan
    if not (math.isfinite(scaling) and 0.01 <= scaling <= 100):
        raise TemplateError(
            f"HPGL Document Scaling (0068,62F2) is missing or implausible ({raw!r}): the drawing's true size is unknown"
        )
    return HPGL_UNIT_MM * scaling


def template_size_from_dataset(ds: Dataset) -> dict[str, Any]:
    """One GIT instance as one size entry of the library format (outlines in mm, y down).

    The anchor ``centre`` is the first planning landmark point drawn on the chosen view (the
    manufacturer's centre of rotation for a cup), else the middle of the drawing's bounding
    box; named landmarks come from the Planning Landmark Point Sequence."""
    if str(ds.get("SOPClassUID", "")) != GENERIC_IMPLANT_TEMPLATE:
        raise TemplateError(f"SOP class {ds.get('SOPClassUID')} is not a Generic Implant Template")
    document = _choose_document(ds)
    mm_per_unit = _scale(document)
    raw = document.get("HPGLDocument")
    if not raw:
        raise TemplateError("the HPGL Document (0068,6300) is empty")
    paths = parse_hpgl(bytes(raw))
    contour_pen = document.get("HPGLContourPenNumber")
    labels = {
        int(p.HPGLPenNumber): _text(p, "HPGLPenLabel")
        for p in document.get("HPGLPenSequence", [])
        if "HPGLPenNumber" in p
    }

    def to_mm(point: tuple[float, float]) -> tuple[float, float]:
        return point[0] * mm_per_unit, -point[1] * mm_per_unit

    outlines: list[dict[str, Any]] = []
    for index, path in enumerate(paths):
        points = [to_mm(p) for p in path.points]
        closed = math.dist(points[0], points[-1]) < 1e-6 and len(points) > 2
        auxiliary = contour_pen is not None and path.pen != int(contour_pen)
        outlines.append(
            {
                "name": labels.get(path.pen) or f"pen {path.pen} #{index + 1}",
                "closed": closed,
                "dashed": path.dashed or auxiliary,
                "points": [[round(x, 6), round(y, 6)] for x, y in (points[:-1] if closed else points)],
            }
        )
    landmarks: dict[str, list[float]] = {}
    document_id = document.get("HPGLDocumentID")
    printed_to_real = mm_per_unit / HPGL_UNIT_MM  # landmark coordinates are printed mm
    for landmark in ds.get("PlanningLandmarkPointSequence", []):
        for item in landmark.get("TwoDPointCoordinatesSequence", []):
            if document_id is not None and item.get("ReferencedHPGLDocumentID") != document_id:
                continue
            coords = item.get("TwoDPointCoordinates")
            if not isinstance(coords, list | tuple | MultiValue) or len(coords) != 2:
                # An anchor guessed from the bounding box instead would misplace the implant.
                raise TemplateError(
                    f"planning landmark {landmark.get('PlanningLandmarkID')}: "
                    "2D Point Coordinates (0068,6560) must be two numbers"
                )
            name = (
                _slug(_text(landmark, "PlanningLandmarkDescription"))
                or f"landmark-{landmark.get('PlanningLandmarkID')}"
            )
            point = [float(coords[0]) * printed_to_real, -float(coords[1]) * printed_to_real]
            landmarks.setdefault(name, point)
            landmarks.setdefault("centre", point)
    if "centre" not in landmarks:
        xs = [p[0] for o in outlines for p in o["points"]]
        ys = [p[1] for o in outlines for p in o["points"]]
        landmarks["centre"] = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2]
    size = _text(ds, "ImplantSize") or _text(ds, "ImplantPartNumber")
    anatomy = _meanings(ds.get("ImplantTargetAnatomySequence"))
    return {
        "size": size or "1",
        "label": size or _text(ds, "ImplantName"),
        "properties": {
            "part_number": _text(ds, "ImplantPartNumber"),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "target_anatomy": anatomy,
            "hpgl_document_scaling": float(document.HPGLDocumentScaling),
        },
        "landmarks": landmarks,
        "outlines": outlines,
    }


def template_id(manufacturer: str, name: str) -> str:
    """Stable, route-safe id per design (manufacturer + implant name): sizes of one design group."""
    digest = hashlib.sha1(f"{manufacturer}\0{name}".encode()).hexdigest()[:8]
    return f"dicom-git-{_slug(f'{manufacturer} {name}')[:48]}-{digest}"


def _size_key(size: str) -> tuple[float, str]:
    try:
        return float(size), size
    except ValueError:
        return math.inf, size


@dataclass(frozen=True)
class ImportResult:
    templates: list[ImplantTemplate]
    problems: list[dict[str, str]]  # {"sop_instance_uid", "message"}: each instance refused


def templates_from_datasets(datasets: Iterable[tuple[str, Dataset | Exception]]) -> ImportResult:
    """Group instances by (manufacturer, implant name) into one template each, sizes ordered.

    A bad instance is skipped with its message in ``problems``; the others still import."""
    groups: dict[tuple[str, str], list[tuple[Dataset, dict[str, Any]]]] = {}
    problems: list[dict[str, str]] = []
    for uid, ds in datasets:
        try:
            if isinstance(ds, Exception):
                raise TemplateError(f"unreadable: {ds}")
            size = template_size_from_dataset(ds)
            key = (
                _text(ds, "Manufacturer") or "unknown manufacturer",
                _text(ds, "ImplantName") or "unnamed implant",
            )
            existing = [s["size"] for _, s in groups.get(key, [])]
            if size["size"] in existing:
                raise TemplateError(
                    f"size {size['size']!r} of {key[1]} is already imported from another instance"
                )
            groups.setdefault(key, []).append((ds, size))
        except TemplateError as exc:
            problems.append({"sop_instance_uid": uid, "message": str(exc)})
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
            # Malformed attribute values (wrong VR content, missing items): skip this one, keep the rest.
            problems.append({"sop_instance_uid": uid, "message": f"unreadable template attributes: {exc}"})
    templates = []
    for (manufacturer, name), members in groups.items():
        members.sort(key=lambda m: _size_key(m[1]["size"]))
        first = members[0][0]
        document = {
            "format": TEMPLATE_FORMAT,
            "id": template_id(manufacturer, name),
            "name": name,
            "manufacturer": manufacturer,
            "type": _implant_type(first),
            "fixation": "",
            "view": "AP",
            "units": "mm",
            "outline_magnification": 1.0,
            "drawn_for_side": "B",
            "anchor": "centre",
            "source": SOURCE,
            "description": f"Imported from {len(members)} DICOM Generic Implant Template instance(s)",
            "sizes": [size for _, size in members],
        }
        try:
            templates.append(parse_template(document, f"DICOM GIT {name!r}"))
        except TemplateError as exc:
            for ds, _ in members:
                problems.append({"sop_instance_uid": str(ds.get("SOPInstanceUID", "")), "message": str(exc)})
    return ImportResult(templates, problems)


def read_template_file(path: Path) -> Dataset | Exception:
    """The data set of a stored instance, or why it could not be read (kept as a problem)."""
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        return exc
