"""Hanging protocols as data, matched by rules, and hung onto a current exam and its priors.

A protocol is a JSON document (see ``protocols/*.json`` and docs/mammography.md): rules
that decide whether and how well it fits an exam, how many priors it wants, and stages
of viewports, each naming the study (current or the n-th prior), laterality, view and
the side its chest wall must face. Hanging is pure: it takes exams already read from
the archive, so the rules can be tested on shuffled, missing and surplus images without
a server. Nothing is dropped: an image no viewport takes is listed in ``other_images``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.mammography.views import BreastView, ImageKind

PROTOCOL_DIR = Path(__file__).parent / "protocols"
_STANDARD_EXCLUDED_MODIFIERS = frozenset({"MAGNIFICATION", "SPOT_COMPRESSION"})
_DEFAULT_KINDS = (ImageKind.MAMMOGRAM, ImageKind.SYNTHESIZED, ImageKind.TOMOSYNTHESIS, ImageKind.PROJECTION)


class ProtocolError(ValueError):
    """A hanging protocol document that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ExamImage:
    """One image of an exam as the hanging sees it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    breast: BreastView
    kind: ImageKind
    frames: int = 1
    chest_wall: str = ""  # "left" / "right": where the chest wall lies in the stored pixels
    chest_wall_source: str = ""  # "PatientOrientation" or "assumed"
    series_number: int = 0
    instance_number: int = 0
    source_sop_instance_uid: str = ""  # a synthesized 2D: the stack it was generated from
    notices: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "StudyInstanceUID": self.study_instance_uid,
            "SeriesInstanceUID": self.series_instance_uid,
            "SOPInstanceUID": self.sop_instance_uid,
            "SOPClassUID": self.sop_class_uid,
            "frame": (self.frames // 2) if self.kind is ImageKind.TOMOSYNTHESIS else 0,
            "frames": self.frames,
            "kind": self.kind.value,
            "laterality": self.breast.laterality,
            "view": self.breast.view,
            "modifiers": list(self.breast.modifiers),
            "label": self.breast.label,
            "chest_wall": self.chest_wall,
            "notices": [*self.breast.notices, *self.notices],
        }


@dataclass(frozen=True)
class Exam:
    """A study as far as mammography cares: when, and its images."""

    study_instance_uid: str
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    modalities: frozenset[str] = frozenset({"MG"})
    images: tuple[ExamImage, ...] = ()
    patient_name: str = ""
    patient_id: str = ""

    @property
    def views(self) -> frozenset[str]:
        return frozenset(f"{i.breast.laterality}{i.breast.view}" for i in self.images)

    @property
    def has_tomosynthesis(self) -> bool:
        return any(i.kind is ImageKind.TOMOSYNTHESIS for i in self.images)

    def summary(self) -> dict[str, Any]:
        return {
            "StudyInstanceUID": self.study_instance_uid,
            "StudyDate": self.study_date,
            "StudyTime": self.study_time,
            "AccessionNumber": self.accession_number,
            "StudyDescription": self.study_description,
            "PatientName": self.patient_name,
            "PatientID": self.patient_id,
            "images": len(self.images),
        }


@dataclass(frozen=True)
class Rule:
    """One matching rule: ``attribute`` of the exam compared by ``op`` with ``value``.

    Attributes: ``modalities`` (set), ``views`` (set of "RCC", "LMLO"…), ``prior_count``
    (int), ``has_tomosynthesis`` (bool), ``image_count`` (int). Ops: ``equals``,
    ``contains``, ``contains_all``, ``contains_any``, ``at_least``. A failing required
    rule excludes the protocol; a passing rule adds its weight to the score.
    """

    attribute: str
    op: str
    value: Any
    weight: int = 1
    required: bool = False

    def holds(self, facts: dict[str, Any]) -> bool:
        actual = facts.get(self.attribute)
        if self.op == "equals":
            return bool(actual == self.value)
        if self.op == "contains":
            return self.value in actual if actual is not None else False
        if self.op == "contains_all":
            return set(self.value) <= set(actual or ())
        if self.op == "contains_any":
            return bool(set(self.value) & set(actual or ()))
        if self.op == "at_least":
            return actual is not None and actual >= self.value
        return False


@dataclass(frozen=True)
class ViewportSpec:
    id: str
    row: int
    column: int
    study: str  # "current" or "prior"
    laterality: str
    views: tuple[str, ...]
    chest_wall: str  # the side of the viewport the chest wall must face
    prior_index: int = 0
    kinds: tuple[ImageKind, ...] = _DEFAULT_KINDS


@dataclass(frozen=True)
class Stage:
    name: str
    rows: int
    columns: int
    viewports: tuple[ViewportSpec, ...]


@dataclass(frozen=True)
class HangingProtocol:
    id: str
    name: str
    description: str
    rules: tuple[Rule, ...]
    prior_count: int
    prior_min_interval_days: int
    stages: tuple[Stage, ...]

    def score(self, facts: dict[str, Any]) -> int | None:
        """Sum of the weights of the rules that hold; None when a required rule fails."""
        total = 0
        for rule in self.rules:
            if rule.holds(facts):
                total += rule.weight
            elif rule.required:
                return None
        return total

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description}


_OPS = {"equals", "contains", "contains_all", "contains_any", "at_least"}


def protocol_from_json(document: dict[str, Any], origin: str = "protocol") -> HangingProtocol:
    """Validate and build a protocol; every error names ``origin`` and the offending field."""
    try:
        rules = []
        for r in document.get("rules", []):
            if r["op"] not in _OPS:
                raise ProtocolError(f"{origin}: rule op {r['op']!r} is not one of {sorted(_OPS)}")
            rules.append(
                Rule(r["attribute"], r["op"], r["value"], int(r.get("weight", 1)), bool(r.get("required")))
            )
        stages = []
        for s in document["stages"]:
            viewports = []
            for v in s["viewports"]:
                if v["study"] not in ("current", "prior"):
                    raise ProtocolError(f"{origin}: viewport {v.get('id')} study must be current or prior")
                if v["chest_wall"] not in ("left", "right"):
                    raise ProtocolError(f"{origin}: viewport {v.get('id')} chest_wall must be left or right")
                views = v["view"] if isinstance(v["view"], list) else [v["view"]]
                kinds = tuple(ImageKind(k) for k in v.get("kinds", [k.value for k in _DEFAULT_KINDS]))
                viewports.append(
                    ViewportSpec(
                        str(v["id"]),
                        int(v["row"]),
                        int(v["column"]),
                        v["study"],
                        str(v["laterality"]),
                        tuple(views),
                        v["chest_wall"],
                        int(v.get("prior_index", 0)),
                        kinds,
                    )
                )
            stages.append(Stage(str(s["name"]), int(s["rows"]), int(s["columns"]), tuple(viewports)))
        priors = document.get("priors", {})
        return HangingProtocol(
            str(document["id"]),
            str(document["name"]),
            str(document.get("description", "")),
            tuple(rules),
            int(priors.get("count", 0)),
            int(priors.get("min_interval_days", 0)),
            tuple(stages),
        )
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"{origin}: {type(exc).__name__}: {exc}") from exc


def load_protocols(folder: Path = PROTOCOL_DIR) -> tuple[HangingProtocol, ...]:
    """Every ``*.json`` protocol of a folder, in name order; duplicate ids are an error."""
    protocols: list[HangingProtocol] = []
    for path in sorted(folder.glob("*.json")):
        protocols.append(protocol_from_json(json.loads(path.read_text("utf-8")), path.name))
    ids = [p.id for p in protocols]
    if len(ids) != len(set(ids)):
        raise ProtocolError(f"duplicate hanging protocol ids in {folder}: {sorted(ids)}")
    return tuple(protocols)


def exam_facts(current: Exam, priors: Sequence[Exam]) -> dict[str, Any]:
    return {
        "modalities": set(current.modalities),
        "views": set(current.views),
        "prior_count": len(priors),
        "has_tomosynthesis": current.has_tomosynthesis,
        "image_count": len(current.images),
    }


def choose_protocol(
    protocols: Iterable[HangingProtocol], current: Exam, priors: Sequence[Exam], wanted: str | None = None
) -> HangingProtocol:
    """The asked protocol, else the best-scoring one (first in order on ties)."""
    protocols = list(protocols)
    if wanted:
        for protocol in protocols:
            if protocol.id == wanted:
                return protocol
        raise ProtocolError(f"no hanging protocol {wanted!r}; known: {[p.id for p in protocols]}")
    facts = exam_facts(current, priors)
    scored = [(p.score(facts), i, p) for i, p in enumerate(protocols)]
    fitting = [(s, i, p) for s, i, p in scored if s is not None]
    if not fitting:
        raise ProtocolError("no hanging protocol fits this exam")
    return max(fitting, key=lambda t: (t[0], -t[1]))[2]


def _days(date: str) -> int | None:
    import datetime as dt

    try:
        return dt.date(int(date[:4]), int(date[4:6]), int(date[6:8])).toordinal()
    except (ValueError, IndexError):
        return None


def select_priors(
    current: Exam, candidates: Iterable[Exam], count: int, min_interval_days: int = 0
) -> list[Exam]:
    """The ``count`` most recent mammography exams strictly earlier than ``current``.

    Earlier means an earlier StudyDate, or the same date and an earlier StudyTime;
    ``min_interval_days`` skips exams too close to be a useful comparison (e.g. the
    diagnostic work-up of the same screening). Exams without a date are never priors.
    """
    now = _days(current.study_date)
    eligible = []
    for exam in candidates:
        if exam.study_instance_uid == current.study_instance_uid or not exam.images:
            continue
        day = _days(exam.study_date)
        if now is None or day is None:
            continue
        if (exam.study_date, exam.study_time) >= (current.study_date, current.study_time):
            continue
        if now - day < min_interval_days:
            continue
        eligible.append(exam)
    eligible.sort(key=lambda e: (e.study_date, e.study_time), reverse=True)
    return eligible[:count]


def pick_image(exam: Exam, spec: ViewportSpec) -> ExamImage | None:
    """The image a viewport shows: the kinds in the viewport's order; within one kind the
    latest (highest series, then instance number: a repeated view replaces the first)."""
    candidates = [
        image
        for image in exam.images
        if image.breast.laterality == spec.laterality
        and image.breast.view in spec.views
        and not set(image.breast.modifiers) & _STANDARD_EXCLUDED_MODIFIERS
        and image.kind in spec.kinds
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda i: (spec.kinds.index(i.kind), -i.series_number, -i.instance_number, i.sop_instance_uid),
    )


def tomosynthesis_partner(exam: Exam, image: ExamImage) -> ExamImage | None:
    """The stack a 2D image pairs with: the one it was synthesized from, else the same breast and view."""
    if image.kind is ImageKind.TOMOSYNTHESIS:
        return None
    stacks = [i for i in exam.images if i.kind is ImageKind.TOMOSYNTHESIS]
    for stack in stacks:
        if stack.sop_instance_uid == image.source_sop_instance_uid:
            return stack
    same = [
        s
        for s in stacks
        if s.breast.laterality == image.breast.laterality and s.breast.view == image.breast.view
    ]
    return max(same, key=lambda s: (s.series_number, s.instance_number)) if same else None


@dataclass
class Hanging:
    """A protocol hung on an exam: what the JSON endpoint answers."""

    protocol: HangingProtocol
    current: Exam
    priors: list[Exam]
    prior_candidates: list[Exam]
    stages: list[dict[str, Any]] = field(default_factory=list)
    other_images: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.to_json(),
            "StudyInstanceUID": self.current.study_instance_uid,
            "current": self.current.summary(),
            "priors": [p.summary() for p in self.priors],
            "prior_candidates": [p.summary() for p in self.prior_candidates],
            "stages": self.stages,
            "other_images": self.other_images,
            "notices": self.notices,
        }


def hang(
    protocol: HangingProtocol,
    current: Exam,
    priors: Sequence[Exam],
    prior_candidates: Sequence[Exam] = (),
) -> Hanging:
    """Place images into every stage's viewports; list the rest as ``other_images``."""
    hanging = Hanging(protocol, current, list(priors), list(prior_candidates))
    placed: set[str] = set()
    for stage in protocol.stages:
        viewports = []
        for spec in stage.viewports:
            exam: Exam | None = current
            if spec.study == "prior":
                exam = priors[spec.prior_index] if spec.prior_index < len(priors) else None
            image = pick_image(exam, spec) if exam is not None else None
            viewport: dict[str, Any] = {
                "id": spec.id,
                "row": spec.row,
                "column": spec.column,
                "laterality": spec.laterality,
                "view": spec.views[0],
                "chest_wall": spec.chest_wall,
                "is_prior": spec.study == "prior",
                "prior_index": spec.prior_index if spec.study == "prior" else None,
                "mirrored": False,
                "image": None,
                "tomosynthesis": None,
            }
            if image is None:
                viewport["empty"] = (
                    "no prior exam" if exam is None else f"no {spec.laterality}{'/'.join(spec.views)} image"
                )
            else:
                assert exam is not None
                placed.add(image.sop_instance_uid)
                viewport["image"] = image.to_json()
                viewport["mirrored"] = bool(image.chest_wall) and image.chest_wall != spec.chest_wall
                partner = tomosynthesis_partner(exam, image)
                if partner is not None:
                    placed.add(partner.sop_instance_uid)
                    viewport["tomosynthesis"] = partner.to_json()
            viewports.append(viewport)
        hanging.stages.append(
            {"name": stage.name, "rows": stage.rows, "columns": stage.columns, "viewports": viewports}
        )
    for exam, is_prior in [(current, False), *((p, True) for p in priors)]:
        for image in sorted(exam.images, key=lambda i: (i.series_number, i.instance_number)):
            if image.sop_instance_uid not in placed:
                hanging.other_images.append({**image.to_json(), "is_prior": is_prior})
    for image in current.images:
        for notice in (*image.breast.notices, *image.notices):
            hanging.notices.append(f"{image.breast.label} ({image.sop_instance_uid}): {notice}")
    if protocol.prior_count and not priors:
        hanging.notices.append("no earlier mammography of this patient: prior viewports are empty")
    return hanging
