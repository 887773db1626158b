"""Calibrations and plans saved with the study, so anyone who reopens it sees the same thing.

One module document per radiograph, keyed ``{study}/{sop}`` (see ``server.archive.documents``:
every server process of a deployment shares it through the index database, whatever data
folder it has; earlier versions kept ``{data dir}/orthopedics/studies/{study}/{sop}.json``
files, imported on first start). It holds

* ``calibration``: the user's calibration (marker/line) or their choice of a DICOM
  source, or nothing (then the DICOM order applies);
* ``plan``: measurements (kind, points in image pixels, side), template placements
  (template, size, pose), a note, a revision number and when it was saved;
* ``archived``: the SR / Secondary Capture UIDs each archive export produced.

Values (lengths, angles, offset changes) are *not* stored as truth: they are recomputed
from the points and the calibration every time (:func:`evaluate_plan`), so a changed
calibration changes every number consistently. Every change is an optimistic
read-modify-write on the document's version (:meth:`PlanStore.update`), so two saves from
any two processes never interleave and neither is lost.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.orthopedics.measurements import (
    LLD_REFERENCES,
    MEASUREMENTS,
    MeasurementError,
    Plane,
    Quantity,
    measure,
    parse_points,
    reconstruction_change,
)
from modules.orthopedics.templates import (
    TemplateError,
    TemplateLibrary,
    TemplatePlacement,
    placed_landmarks,
)
from server.archive.documents import DocumentStore
from server.imaging.calibration import Calibration, CalibrationError, CalibrationSource

PLAN_FORMAT = "tessera.orthopedic-plan/1"
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_ITEMS = 200


class PlanError(ValueError):
    """A plan document that cannot be saved (bad structure, unknown template, bad points)."""


@dataclass(frozen=True)
class PlannedMeasurement:
    id: str
    kind: str
    points: tuple[tuple[float, float], ...]
    side: str | None = None
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "points": [list(p) for p in self.points],
            "side": self.side,
            "label": self.label,
        }


@dataclass(frozen=True)
class PlannedTemplate:
    id: str
    placement: TemplatePlacement

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.placement.to_json()}


@dataclass(frozen=True)
class Plan:
    measurements: tuple[PlannedMeasurement, ...] = ()
    templates: tuple[PlannedTemplate, ...] = ()
    note: str = ""
    revision: int = 0
    saved_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "measurements": [m.to_json() for m in self.measurements],
            "templates": [t.to_json() for t in self.templates],
            "note": self.note,
            "revision": self.revision,
            "saved_at": self.saved_at,
        }


def _item_id(raw: dict[str, Any]) -> str:
    value = str(raw.get("id") or uuid.uuid4().hex[:12])
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise PlanError(f"item id {value!r} must be 1–64 letters, digits, '-' or '_'")
    return value


def parse_plan(document: Any, library: TemplateLibrary) -> Plan:
    """Validate a plan sent by a client; every error names the item at fault."""
    if not isinstance(document, dict):
        raise PlanError("a plan is a JSON object with 'measurements' and 'templates'")
    raw_measurements = document.get("measurements", [])
    raw_templates = document.get("templates", [])
    if not isinstance(raw_measurements, list) or not isinstance(raw_templates, list):
        raise PlanError("'measurements' and 'templates' must be lists")
    if len(raw_measurements) > MAX_ITEMS or len(raw_templates) > MAX_ITEMS:
        raise PlanError(f"a plan holds at most {MAX_ITEMS} measurements and {MAX_ITEMS} templates")
    measurements = []
    for index, raw in enumerate(raw_measurements):
        if not isinstance(raw, dict):
            raise PlanError(f"measurement {index + 1} is not an object")
        try:
            kind = str(raw.get("kind", ""))
            if kind not in MEASUREMENTS:  # never computable, whatever the calibration
                raise MeasurementError(f"unknown measurement {kind[:40]!r}; known: {', '.join(MEASUREMENTS)}")
            side = raw.get("side")
            if side not in (None, "", "R", "L"):
                raise MeasurementError("side must be 'R', 'L' or absent")
            measurements.append(
                PlannedMeasurement(
                    _item_id(raw),
                    kind,
                    tuple(parse_points(raw.get("points"))),
                    side or None,
                    str(raw.get("label", ""))[:200],
                )
            )
        except MeasurementError as exc:
            raise PlanError(f"measurement {index + 1}: {exc}") from exc
    templates = []
    for index, raw in enumerate(raw_templates):
        if not isinstance(raw, dict):
            raise PlanError(f"template {index + 1} is not an object")
        try:
            placement = TemplatePlacement.from_json(raw)
            library.get(placement.template_id).size(placement.size)
        except TemplateError as exc:
            raise PlanError(f"template {index + 1}: {exc}") from exc
        templates.append(PlannedTemplate(_item_id(raw), placement))
    ids = [m.id for m in measurements] + [t.id for t in templates]
    if len(set(ids)) != len(ids):
        raise PlanError("item ids must be unique within a plan")
    return Plan(tuple(measurements), tuple(templates), str(document.get("note", ""))[:4000])


def _plan_from_stored(document: dict[str, Any]) -> Plan:
    return Plan(
        measurements=tuple(
            PlannedMeasurement(
                m["id"],
                m["kind"],
                tuple((float(p[0]), float(p[1])) for p in m["points"]),
                m.get("side"),
                m.get("label", ""),
            )
            for m in document.get("measurements", [])
        ),
        templates=tuple(
            PlannedTemplate(t["id"], TemplatePlacement.from_json(t)) for t in document.get("templates", [])
        ),
        note=document.get("note", ""),
        revision=int(document.get("revision", 0)),
        saved_at=document.get("saved_at", ""),
    )


@dataclass
class ImageRecord:
    """Everything saved for one radiograph."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    user_calibration: Calibration | None = None
    preferred_source: CalibrationSource | None = None
    plan: Plan = field(default_factory=Plan)
    archived: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "calibration": {
                "user": self.user_calibration.to_json() if self.user_calibration else None,
                "prefer": self.preferred_source.value if self.preferred_source else None,
            },
            "plan": self.plan.to_json(),
            "archived": self.archived,
        }


class PlanStore:
    """Reads and writes :class:`ImageRecord` documents; blocking, so call it from an executor."""

    def __init__(self, documents: DocumentStore) -> None:
        self.shelf = documents.shelf("orthopedics", "image")

    @staticmethod
    def key_for(study_uid: str, sop_uid: str) -> str:
        if not (UID_PATTERN.match(study_uid) and UID_PATTERN.match(sop_uid)):
            raise PlanError("not a DICOM UID")
        return f"{study_uid}/{sop_uid}"

    def import_files(self, root: Path) -> int:
        """Earlier versions kept ``{root}/studies/{study}/{sop}.json``: bring them in."""
        studies = root / "studies"
        files = sorted(studies.glob("*/*.json")) if studies.is_dir() else []

        def key_for(path: Path) -> str | None:
            study, sop = path.parent.name, path.stem
            return f"{study}/{sop}" if UID_PATTERN.match(study) and UID_PATTERN.match(sop) else None

        return self.shelf.import_files(files, key_for, lambda path: json.loads(path.read_text("utf-8")))

    def load(self, study_uid: str, series_uid: str, sop_uid: str) -> ImageRecord:
        document = self.shelf.get(self.key_for(study_uid, sop_uid))
        return _record(study_uid, series_uid, sop_uid, None if document is None else document.body)

    def save(self, record: ImageRecord, *, by: str | None = None) -> None:
        key = self.key_for(record.study_instance_uid, record.sop_instance_uid)
        self.shelf.put(key, record.to_json(), by=by)

    def update(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        change: Callable[[ImageRecord], object],
        *,
        by: str | None = None,
    ) -> ImageRecord:
        """Load, apply ``change(record)``, save, as one step against every other writer.

        ``change`` runs again on a freshly loaded record whenever another writer saved first,
        so it must decide from the record it is given, not from what an earlier call saw."""
        written: list[ImageRecord] = []

        def apply(body: Any) -> dict[str, Any]:
            record = _record(study_uid, series_uid, sop_uid, body)
            change(record)
            written[:] = [record]
            return record.to_json()

        self.shelf.update(self.key_for(study_uid, sop_uid), apply, by=by)
        return written[0]


def _record(study_uid: str, series_uid: str, sop_uid: str, document: dict[str, Any] | None) -> ImageRecord:
    if document is None:
        return ImageRecord(study_uid, series_uid, sop_uid)
    calibration = document.get("calibration") or {}
    user = calibration.get("user")
    prefer = calibration.get("prefer")
    return ImageRecord(
        study_uid,
        series_uid,
        sop_uid,
        user_calibration=Calibration.from_json(user) if user else None,
        preferred_source=CalibrationSource(prefer) if prefer else None,
        plan=_plan_from_stored(document.get("plan") or {}),
        archived=list(document.get("archived", [])),
    )


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _reference_line(plan: Plan) -> tuple[tuple[float, float], tuple[float, float], str] | None:
    """The pelvic reference line a plan defines, and its name: the leg-length teardrop points,
    else the leg-length ischial points, else the cup-inclination teardrop points."""
    for kind in ("leg-length", "leg-length-ischial"):
        for m in plan.measurements:
            if m.kind == kind:
                return m.points[0], m.points[1], LLD_REFERENCES[kind]
    for m in plan.measurements:
        if m.kind == "cup-inclination":
            return m.points[2], m.points[3], LLD_REFERENCES["leg-length"]
    return None


def evaluate_plan(
    plan: Plan, calibration: Calibration, library: TemplateLibrary, columns: int | None
) -> dict[str, Any]:
    """Every value of the plan, recomputed from its geometry and the active calibration."""
    plane = Plane(calibration, columns)
    measurements = []
    for m in plan.measurements:
        entry: dict[str, Any] = {**m.to_json()}
        try:
            entry["result"] = measure(m.kind, m.points, plane, m.side).to_json()
        except MeasurementError as exc:
            entry["error"] = str(exc)
        measurements.append(entry)
    templates = []
    cups: list[tuple[str, tuple[float, float]]] = []
    stems: list[tuple[str, tuple[float, float]]] = []
    for t in plan.templates:
        try:
            template = library.get(t.placement.template_id)
            size = template.size(t.placement.size)
        except TemplateError as exc:  # a template file removed since the plan was saved
            templates.append(
                {
                    **t.to_json(),
                    "name": t.placement.template_id,
                    "type": "",
                    "label": t.placement.size,
                    "properties": {},
                    "error": str(exc),
                }
            )
            continue
        entry = {
            **t.to_json(),
            "name": template.name,
            "type": template.type,
            "label": size.label,
            "properties": size.properties,
        }
        try:
            landmarks = placed_landmarks(template, t.placement, calibration)
            entry["landmarks_px"] = {k: [round(v[0], 3), round(v[1], 3)] for k, v in landmarks.items()}
            side = "L" if t.placement.mirror else "R"
            if template.type == "acetabular-cup":
                cups.append((side, landmarks["centre"]))
            elif template.type == "femoral-stem":
                stems.append((side, landmarks["head_centre"]))
        except CalibrationError as exc:
            entry["error"] = str(exc)
        templates.append(entry)
    reconstruction = []
    reference = _reference_line(plan)
    for side, cup in cups:
        for stem_side, head in stems:
            if stem_side != side:
                continue
            a, b, name = reference or ((0.0, cup[1]), (1.0, cup[1]), "image horizontal (no reference line)")
            change = reconstruction_change(cup, head, a, b, plane, side)
            reconstruction.append(
                {
                    "side": side,
                    "reference": name,
                    **{k: q.to_json() for k, q in change.items()},
                }
            )
    return {
        **plan.to_json(),
        "measurements": measurements,
        "templates": templates,
        "reconstruction": reconstruction,
    }


def quantity_rows(evaluated: dict[str, Any]) -> list[tuple[str, Quantity]]:
    """(label, quantity) for every number in an evaluated plan: the SR and the PDF list these."""
    rows: list[tuple[str, Quantity]] = []
    for m in evaluated["measurements"]:
        result = m.get("result")
        if not result:
            continue
        prefix = m["label"] or m["kind"]
        for q in result["quantities"]:
            if q["name"] in ("centre_x", "centre_y"):
                continue
            rows.append(
                (f"{prefix}: {q['name'].replace('_', ' ')}", Quantity(q["name"], q["value"], q["unit"]))
            )
    for r in evaluated["reconstruction"]:
        for key in ("leg_length_change", "offset_change"):
            q = r[key]
            rows.append(
                (f"planned {key.replace('_', ' ')} ({r['side']})", Quantity(q["name"], q["value"], q["unit"]))
            )
    return rows
