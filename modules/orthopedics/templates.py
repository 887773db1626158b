"""Implant templates as data: vector outlines in millimetres, placed on a calibrated image.

A template file (``implant_templates/*.json``, format ``tessera.implant-template/1``, described in
docs/orthopedics.md) holds one implant design in all its sizes: per size, named outlines
(polylines in mm, x to the image's right, y down, origin at the ``anchor`` landmark),
landmarks (head centre, centre of rotation…) and properties (offset, diameter…).
Manufacturer acetates are usually printed magnified (e.g. 115 %): ``outline_magnification``
records that and is divided out on load, so every outline here is true size.

Placing a template is a pose (anchor position in image pixels, rotation, mirror); turning
mm into pixels uses the image's *active calibration*, so a 52 mm cup covers 52 mm of
anatomy whatever the detector. Without a calibration there is no true scale, and
placing a template is refused rather than drawn at a guessed size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.imaging.calibration import Calibration, CalibrationError

TEMPLATE_FORMAT = "tessera.implant-template/1"
TEMPLATE_DIR = Path(__file__).parent / "implant_templates"
TEMPLATE_TYPES = frozenset(
    {
        "acetabular-cup",
        "femoral-stem",
        "femoral-head",
        "knee-femoral",
        "knee-tibial",
        "plate",
        "screw",
        "nail",
        "other",
    }
)


class TemplateError(ValueError):
    """A template file or a placement that does not follow the format."""


Point = tuple[float, float]


@dataclass(frozen=True)
class Outline:
    name: str
    points: tuple[Point, ...]
    closed: bool
    dashed: bool = False


@dataclass(frozen=True)
class TemplateSize:
    size: str
    label: str
    outlines: tuple[Outline, ...]
    landmarks: dict[str, Point]
    properties: dict[str, Any]


@dataclass(frozen=True)
class ImplantTemplate:
    id: str
    name: str
    manufacturer: str
    type: str
    fixation: str
    anchor: str
    drawn_for_side: str
    sizes: tuple[TemplateSize, ...]
    document: dict[str, Any]  # the file as loaded (magnification divided out), for the viewer

    def size(self, size: str) -> TemplateSize:
        for candidate in self.sizes:
            if candidate.size == size:
                return candidate
        raise TemplateError(f"template {self.id} has no size {size!r}; sizes: {[s.size for s in self.sizes]}")

    def step(self, size: str, steps: int) -> str:
        """The size ``steps`` up (positive) or down, clamped to the range."""
        names = [s.size for s in self.sizes]
        index = names.index(self.size(size).size)
        return names[min(max(index + steps, 0), len(names) - 1)]

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "manufacturer": self.manufacturer,
            "type": self.type,
            "fixation": self.fixation,
            "sizes": [s.size for s in self.sizes],
            "source": self.source,
        }

    @property
    def source(self) -> str:
        """Where the design came from: ``JSON`` (template files) or ``DICOM GIT`` (the archive)."""
        return str(self.document.get("source", "JSON"))


def _point(raw: Any, where: str) -> Point:
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, int | float) for v in raw)):
        raise TemplateError(f"{where}: a point must be [x, y] in mm")
    return float(raw[0]), float(raw[1])


def parse_template(document: dict[str, Any], origin: str = "template") -> ImplantTemplate:
    """Validate one template document and divide out its outline magnification."""
    if document.get("format") != TEMPLATE_FORMAT:
        raise TemplateError(f"{origin}: format must be {TEMPLATE_FORMAT!r}")
    for key in ("id", "name", "type", "anchor", "sizes"):
        if key not in document:
            raise TemplateError(f"{origin}: missing {key!r}")
    if document["type"] not in TEMPLATE_TYPES:
        raise TemplateError(f"{origin}: type {document['type']!r} is not one of {sorted(TEMPLATE_TYPES)}")
    if document.get("units", "mm") != "mm":
        raise TemplateError(f"{origin}: outlines must be in mm")
    magnification = float(document.get("outline_magnification", 1.0))
    if not 0.5 <= magnification <= 2.0:
        raise TemplateError(f"{origin}: outline_magnification {magnification} is implausible")
    scale = 1.0 / magnification
    sizes: list[TemplateSize] = []
    true_sizes: list[dict[str, Any]] = []
    if not document["sizes"]:
        raise TemplateError(f"{origin}: no sizes")
    for raw in document["sizes"]:
        where = f"{origin} size {raw.get('size')!r}"
        outlines = []
        for line in raw.get("outlines", []):
            points = tuple(
                (x * scale, y * scale) for x, y in (_point(p, where) for p in line.get("points", []))
            )
            if len(points) < 2:
                raise TemplateError(f"{where}: outline {line.get('name')!r} needs at least two points")
            outlines.append(
                Outline(str(line.get("name", "")), points, bool(line.get("closed")), bool(line.get("dashed")))
            )
        if not outlines:
            raise TemplateError(f"{where}: no outlines")
        landmarks = {
            k: (v[0] * scale, v[1] * scale)
            for k, v in ((k, _point(v, where)) for k, v in raw.get("landmarks", {}).items())
        }
        if document["anchor"] not in landmarks:
            raise TemplateError(f"{where}: the anchor landmark {document['anchor']!r} is missing")
        size = TemplateSize(
            str(raw["size"]),
            str(raw.get("label", raw["size"])),
            tuple(outlines),
            landmarks,
            dict(raw.get("properties", {})),
        )
        sizes.append(size)
        true_sizes.append(
            {
                "size": size.size,
                "label": size.label,
                "properties": size.properties,
                "landmarks": {k: list(v) for k, v in landmarks.items()},
                "outlines": [
                    {
                        "name": o.name,
                        "closed": o.closed,
                        "dashed": o.dashed,
                        "points": [list(p) for p in o.points],
                    }
                    for o in outlines
                ],
            }
        )
    names = [s.size for s in sizes]
    if len(set(names)) != len(names):
        raise TemplateError(f"{origin}: duplicate sizes")
    loaded = {**document, "outline_magnification": 1.0, "sizes": true_sizes}
    return ImplantTemplate(
        id=str(document["id"]),
        name=str(document["name"]),
        manufacturer=str(document.get("manufacturer", "generic")),
        type=str(document["type"]),
        fixation=str(document.get("fixation", "")),
        anchor=str(document["anchor"]),
        drawn_for_side=str(document.get("drawn_for_side", "B")),
        sizes=tuple(sizes),
        document=loaded,
    )


class TemplateLibrary:
    """Every template found in the given folders; a duplicate id is an error, not an override.

    Templates imported from DICOM Generic Implant Template objects live beside the files and
    are replaced as a whole on each import (``set_imported``), so a template removed from the
    archive disappears and a bad one never hides the others (it is listed in ``problems``)."""

    def __init__(self, folders: Iterable[Path] = (TEMPLATE_DIR,)) -> None:
        self.templates: dict[str, ImplantTemplate] = {}
        self.problems: list[dict[str, str]] = []
        self._files: dict[str, ImplantTemplate] = {}
        for folder in folders:
            for path in sorted(Path(folder).glob("*.json")):
                template = parse_template(json.loads(path.read_text(encoding="utf-8")), path.name)
                if template.id in self.templates:
                    raise TemplateError(f"{path.name}: template id {template.id!r} is declared twice")
                self.templates[template.id] = template
        self._files = dict(self.templates)

    def set_imported(self, imported: Iterable[ImplantTemplate], problems: Iterable[dict[str, str]]) -> None:
        """Replace the imported templates; an id already used by a template file is a problem."""
        merged = dict(self._files)
        found = list(problems)
        for template in imported:
            if template.id in merged:
                found.append(
                    {"template_id": template.id, "message": f"template id {template.id!r} is declared twice"}
                )
                continue
            merged[template.id] = template
        self.templates, self.problems = merged, found  # swapped whole: readers never see a half-built dict

    def get(self, template_id: str) -> ImplantTemplate:
        template = self.templates.get(template_id)
        if template is None:
            raise TemplateError(f"no template {template_id!r}")
        return template


@dataclass(frozen=True)
class TemplatePlacement:
    """A template on an image: its anchor at (x, y) pixels, rotated, optionally mirrored (other side)."""

    template_id: str
    size: str
    x: float
    y: float
    rotation_deg: float = 0.0
    mirror: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "template_id": self.template_id,
            "size": self.size,
            "x": self.x,
            "y": self.y,
            "rotation_deg": self.rotation_deg,
            "mirror": self.mirror,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> TemplatePlacement:
        try:
            placement = cls(
                str(document["template_id"]),
                str(document["size"]),
                float(document["x"]),
                float(document["y"]),
                float(document.get("rotation_deg", 0.0)),
                bool(document.get("mirror", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TemplateError(f"a template placement needs template_id, size, x, y: {exc}") from exc
        if not all(math.isfinite(v) for v in (placement.x, placement.y, placement.rotation_deg)):
            raise TemplateError("a template placement must have finite coordinates")
        return placement


def mm_to_pixels(
    point: Point, placement: TemplatePlacement, anchor: Point, calibration: Calibration
) -> Point:
    """One template point (mm, template frame) to image pixels, for this pose and calibration."""
    if not calibration.calibrated:
        raise CalibrationError("templates need a calibrated image: calibrate first (marker or known length)")
    assert calibration.row_spacing_mm and calibration.column_spacing_mm
    x, y = point[0] - anchor[0], point[1] - anchor[1]
    if placement.mirror:
        x = -x
    angle = math.radians(placement.rotation_deg)  # clockwise on screen (y down)
    rx = x * math.cos(angle) - y * math.sin(angle)
    ry = x * math.sin(angle) + y * math.cos(angle)
    return placement.x + rx / calibration.column_spacing_mm, placement.y + ry / calibration.row_spacing_mm


def placed_outlines(
    template: ImplantTemplate, placement: TemplatePlacement, calibration: Calibration
) -> list[tuple[Outline, list[Point]]]:
    """Each outline of the placed size in image pixels (what the SC burn-in and the PDF draw)."""
    size = template.size(placement.size)
    anchor = size.landmarks[template.anchor]
    return [(o, [mm_to_pixels(p, placement, anchor, calibration) for p in o.points]) for o in size.outlines]


def placed_landmarks(
    template: ImplantTemplate, placement: TemplatePlacement, calibration: Calibration
) -> dict[str, Point]:
    size = template.size(placement.size)
    anchor = size.landmarks[template.anchor]
    return {name: mm_to_pixels(p, placement, anchor, calibration) for name, p in size.landmarks.items()}
