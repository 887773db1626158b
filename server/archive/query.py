"""Attribute matching shared by QIDO-RS and C-FIND: one implementation of PS3.4 C.2.2.2.

Callers hand in matching keys as ``{keyword: value}`` strings (QIDO query parameters
and C-FIND identifiers both reduce to that), a level, and the attributes to return;
results come back as DICOM JSON objects (PS3.18 F.2), which C-FIND turns into data sets.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from server.archive.models import Instance, Patient, Series, Study


class QueryLevel(Enum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


class QueryError(ValueError):
    """A matching key or value that cannot be understood (answered as 400 / C-FIND failure)."""


class Match(Enum):
    UID = "uid"  # single value or list (backslash or comma separated)
    TEXT = "text"  # exact or wildcard, case-sensitive
    NAME = "name"  # person name: wildcard, case-insensitive
    DATE = "date"  # DA with ranges
    TIME = "time"  # TM with ranges
    NUMBER = "number"  # IS / US: exact, or a list


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: QueryLevel
    column: InstrumentedAttribute[Any] | None  # None: computed (counts) or special
    match: Match | None  # None: returned but not matchable


_P, _ST, _SE, _IN = QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.INSTANCE

ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in [
        Attribute("PatientName", _P, Patient.patient_name, Match.NAME),
        Attribute("PatientID", _P, Patient.patient_id, Match.TEXT),
        Attribute("IssuerOfPatientID", _P, Patient.issuer_of_patient_id, Match.TEXT),
        Attribute("PatientBirthDate", _P, Patient.patient_birth_date, Match.DATE),
        Attribute("PatientSex", _P, Patient.patient_sex, Match.TEXT),
        Attribute("StudyInstanceUID", _ST, Study.study_instance_uid, Match.UID),
        Attribute("StudyDate", _ST, Study.study_date, Match.DATE),
        Attribute("StudyTime", _ST, Study.study_time, Match.TIME),
        Attribute("AccessionNumber", _ST, Study.accession_number, Match.TEXT),
        Attribute("StudyID", _ST, Study.study_id, Match.TEXT),
        Attribute("ReferringPhysicianName", _ST, Study.referring_physician_name, Match.NAME),
        Attribute("StudyDescription", _ST, Study.study_description, Match.TEXT),
        Attribute("ModalitiesInStudy", _ST, Study.modalities_in_study, Match.TEXT),
        Attribute("NumberOfStudyRelatedSeries", _ST, Study.number_of_series, None),
        Attribute("NumberOfStudyRelatedInstances", _ST, Study.number_of_instances, None),
        Attribute("SeriesInstanceUID", _SE, Series.series_instance_uid, Match.UID),
        Attribute("Modality", _SE, Series.modality, Match.TEXT),
        Attribute("SeriesNumber", _SE, Series.series_number, Match.NUMBER),
        Attribute("SeriesDescription", _SE, Series.series_description, Match.TEXT),
        Attribute("BodyPartExamined", _SE, Series.body_part_examined, Match.TEXT),
        Attribute("Laterality", _SE, Series.laterality, Match.TEXT),
        Attribute("SeriesDate", _SE, Series.series_date, Match.DATE),
        Attribute("SeriesTime", _SE, Series.series_time, Match.TIME),
        Attribute(
            "PerformedProcedureStepStartDate", _SE, Series.performed_procedure_step_start_date, Match.DATE
        ),
        Attribute("NumberOfSeriesRelatedInstances", _SE, Series.number_of_instances, None),
        Attribute("SOPInstanceUID", _IN, Instance.sop_instance_uid, Match.UID),
        Attribute("SOPClassUID", _IN, Instance.sop_class_uid, Match.UID),
        Attribute("InstanceNumber", _IN, Instance.instance_number, Match.NUMBER),
        Attribute("ContentDate", _IN, Instance.content_date, Match.DATE),
        Attribute("ContentTime", _IN, Instance.content_time, Match.TIME),
        Attribute("Rows", _IN, Instance.rows, Match.NUMBER),
        Attribute("Columns", _IN, Instance.columns, Match.NUMBER),
        Attribute("NumberOfFrames", _IN, Instance.number_of_frames, Match.NUMBER),
        Attribute("BitsAllocated", _IN, Instance.bits_allocated, None),
        Attribute("PhotometricInterpretation", _IN, Instance.photometric_interpretation, Match.TEXT),
        Attribute("ImageType", _IN, Instance.image_type, Match.TEXT),
        Attribute("ImageLaterality", _IN, Instance.image_laterality, Match.TEXT),
        Attribute("ViewPosition", _IN, Instance.view_position, Match.TEXT),
    ]
}

# Attributes every answer at a level carries (PS3.18 Table 10.6.3-3/4/5), beyond the matching keys.
DEFAULT_RETURN: dict[QueryLevel, tuple[str, ...]] = {
    _P: ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex"),
    _ST: (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    _SE: (
        "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "BodyPartExamined",
        "Laterality", "PerformedProcedureStepStartDate", "NumberOfSeriesRelatedInstances", "StudyInstanceUID",
    ),
    _IN: (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
        "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID",
    ),
}  # fmt: skip

# What is answered per study/series, never taken from one instance's header at those levels.
_INSTANCE_ONLY_GROUPS = {0x0028, 0x7FE0}
_INSTANCE_ONLY = {
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ContentDate", "ContentTime", "ImageType",
    "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceLocation", "InstanceCreationDate", "InstanceCreationTime",
}  # fmt: skip
_SERIES_KEYWORDS = {k for k, a in ATTRIBUTES.items() if a.level is _SE}


@dataclass
class QuerySpec:
    """A parsed query: what to match, what to return, and which page."""

    level: QueryLevel
    matches: dict[str, str] = field(default_factory=dict)  # keyword -> value ("" = return only)
    include: set[str] = field(default_factory=set)  # keywords to return beyond the defaults
    include_all: bool = False
    limit: int = 100
    offset: int = 0
    fuzzy: bool = False
    unsupported: list[str] = field(default_factory=list)  # matching keys we cannot match on (ignored)
    # Only studies for which this SQL condition (over Study) holds: a user limited to study groups.
    scope: ColumnElement[bool] | None = None


def resolve_keyword(key: str) -> str:
    """A keyword or 8-hex-digit tag (as QIDO allows) to the DICOM keyword."""
    key = key.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        keyword = keyword_for_tag(int(key, 16))
        if not keyword:
            raise QueryError(f"unknown attribute tag {key}")
        return keyword
    if tag_for_keyword(key) is None:
        raise QueryError(f"unknown attribute {key!r}")
    return key


def _like(value: str) -> str:
    """Translate DICOM wildcards to LIKE, with ``%``, ``_`` and ``\\`` matching literally."""
    out = []
    for ch in value:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _text_condition(column: Any, value: str, *, upper: bool = False) -> ColumnElement[bool]:
    target = func.upper(column) if upper else column
    if upper:
        value = value.upper()
    if "*" in value or "?" in value:
        if value.strip("*") == "":
            return column.is_not(None)
        pattern = _like(value)
        if "\\" in pattern:
            return target.like(pattern, escape="\\")
        return target.like(pattern)  # no ESCAPE clause, so SQLite may use the index for a prefix
    return target == value


_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _range_condition(column: Any, value: str, pattern: re.Pattern[str], what: str) -> ColumnElement[bool]:
    if what == "time":
        value = value.replace(":", "")
    if "-" in value:
        low, _, high = value.partition("-")
        for bound in (low, high):
            if bound and not pattern.match(bound):
                raise QueryError(f"{what} range bound {bound!r} is not valid")
        if not low and not high:
            raise QueryError(f"{what} range {value!r} has no bounds")
        conditions = []
        if low:
            conditions.append(column >= low)
        if high:
            # A time bound like 1200 must include 1200xx: compare on the prefix length given.
            conditions.append(func.substr(column, 1, len(high)) <= high if what == "time" else column <= high)
        conditions.append(column != "")
        return and_(*conditions)
    if not pattern.match(value):
        raise QueryError(f"{what} {value!r} is not valid")
    if what == "time":
        return func.substr(column, 1, len(value)) == value
    return column == value


def _condition(attribute: Attribute, value: str, fuzzy: bool) -> ColumnElement[bool]:
    column = attribute.column
    if attribute.keyword == "ModalitiesInStudy":
        values = [v for v in re.split(r"[\\,]", value) if v]
        other = aliased(Series)
        return exists().where(
            and_(other.study_pk == Study.id, or_(*(_text_condition(other.modality, v) for v in values)))
        )
    if attribute.keyword == "PatientName":
        if fuzzy and "*" not in value and "?" not in value:
            value = value + "*"  # fuzzy: a name prefix matches (Doe matches Doe^John)
        return _text_condition(Patient.patient_name_search, value.upper())
    match = attribute.match
    if match is Match.UID:
        uids = [v.strip() for v in re.split(r"[\\,]", value) if v.strip()]
        for uid in uids:
            if len(uid) > 64 or not re.fullmatch(r"[0-9.]+", uid):
                raise QueryError(f"{attribute.keyword} {uid[:80]!r} is not a valid UID")
        return column.in_(uids)  # type: ignore[union-attr]
    if match is Match.NAME:
        if fuzzy and "*" not in value and "?" not in value:
            value = value + "*"
        return _text_condition(column, value, upper=True)
    if match is Match.DATE:
        return _range_condition(column, value, _DATE, "date")
    if match is Match.TIME:
        return _range_condition(column, value, _TIME, "time")
    if match is Match.NUMBER:
        try:
            numbers = [int(v) for v in re.split(r"[\\,]", value) if v.strip()]
        except ValueError as exc:
            raise QueryError(f"{attribute.keyword} {value!r} is not a number") from exc
        if any(not -(2**31) <= n < 2**31 for n in numbers):  # IS/US range; the index columns hold no more
            raise QueryError(f"{attribute.keyword} {value[:80]!r} is out of range")
        return column.in_(numbers)  # type: ignore[union-attr]
    values = value.split("\\")
    return or_(*(_text_condition(column, v) for v in values))


# Per level: the primary key and the UIDs that make the answer's URLs (study, series, instance).
_KEY: dict[QueryLevel, InstrumentedAttribute[Any]] = {
    _P: Patient.id,
    _ST: Study.id,
    _SE: Series.id,
    _IN: Instance.id,
}
_URL_UIDS: dict[QueryLevel, tuple[InstrumentedAttribute[Any], ...]] = {
    _P: (),
    _ST: (Study.study_instance_uid,),
    _SE: (Study.study_instance_uid, Series.series_instance_uid),
    _IN: (Study.study_instance_uid, Series.series_instance_uid, Instance.sop_instance_uid),
}


def _base_select(level: QueryLevel, columns: list[Any]) -> Any:
    """``columns`` from the level's entity joined up to its patient (plain columns, no ORM entities)."""
    query = select(*columns)
    if level is _P:
        return query.select_from(Patient)
    if level is _ST:
        return query.select_from(Study).join(Patient, Study.patient_pk == Patient.id)
    if level is _SE:
        return (
            query.select_from(Series)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
        )
    return (
        query.select_from(Instance)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )


def _order(level: QueryLevel, query: Select[Any]) -> Select[Any]:
    if level is _P:
        return query.order_by(Patient.patient_name, Patient.id)
    if level is _ST:
        return query.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.id)
    if level is _SE:
        return query.order_by(Series.series_number.asc().nulls_last(), Series.id)
    return query.order_by(Instance.instance_number.asc().nulls_last(), Instance.id)


def build_select(spec: QuerySpec, base: Select[Any] | None = None) -> Select[Any]:
    """SQL for a query; matching keys below the query level filter through EXISTS.

    ``base`` is the ordered select of what to return (default: the level's key)."""
    query = base if base is not None else _order(spec.level, _base_select(spec.level, [_KEY[spec.level]]))
    conditions: list[ColumnElement[bool]] = []
    lower_series: list[ColumnElement[bool]] = []
    lower_instance: list[ColumnElement[bool]] = []
    for keyword, value in spec.matches.items():
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or attribute.match is None:
            if value:
                spec.unsupported.append(keyword)
            continue
        if value == "":
            continue  # universal matching: only asks for the attribute back
        condition = _condition(attribute, value, spec.fuzzy)
        if attribute.level.value <= spec.level.value or attribute.keyword == "ModalitiesInStudy":
            conditions.append(condition)
        elif attribute.level is _SE:
            lower_series.append(condition)
        else:
            lower_instance.append(condition)
    if spec.level is _P and (lower_series or lower_instance):
        raise QueryError("patient-level queries match on patient attributes only")
    if lower_instance and spec.level is _SE:
        conditions.append(exists(select(Instance.id).where(Instance.series_pk == Series.id, *lower_instance)))
    elif lower_instance:
        sub = (
            select(Instance.id)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == Study.id)
        )
        conditions.append(exists(sub.where(*lower_instance, *lower_series)))
    elif lower_series:
        conditions.append(exists(select(Series.id).where(Series.study_pk == Study.id, *lower_series)))
    if spec.scope is not None:
        if spec.level is _P:
            conditions.append(exists(select(Study.id).where(Study.patient_pk == Patient.id, spec.scope)))
        else:
            conditions.append(spec.scope)
    if conditions:
        query = query.where(and_(*conditions))
    return query


@functools.cache
def _vr(keyword: str) -> str:
    return str(dictionary_VR(keyword))


@functools.cache
def _converter(keyword: str) -> Callable[[Any], dict[str, Any]]:
    """The DICOM JSON element of an index value, decided once per attribute rather than per value."""
    vr = _vr(keyword)
    if vr == "PN":

        def person_name(value: Any) -> dict[str, Any]:
            if value is None or value == "":
                return {"vr": "PN"}
            return {"vr": "PN", "Value": [{"Alphabetic": str(value)}]}

        return person_name
    if vr in ("IS", "US", "UL", "SL", "SS"):

        def number(value: Any) -> dict[str, Any]:
            if value is None or value == "":
                return {"vr": vr}
            return {"vr": vr, "Value": [int(value)]}

        return number
    if vr == "CS":

        def code(value: Any) -> dict[str, Any]:
            if value is None or value == "":
                return {"vr": vr}
            if isinstance(value, str) and "\\" in value:
                return {"vr": vr, "Value": value.split("\\")}
            return {"vr": vr, "Value": [value]}

        return code

    def single(value: Any) -> dict[str, Any]:
        if value is None or value == "":
            return {"vr": vr}
        return {"vr": vr, "Value": [value]}

    return single


@functools.cache
def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return f"{tag:08X}"


@dataclass
class QueryResult:
    """One match: DICOM JSON with its keys in tag order, plus the UIDs for URLs."""

    dataset: dict[str, Any]
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""


def _representative_headers(session: Session, level: QueryLevel, pks: list[int]) -> dict[int, dict[str, Any]]:
    """The header of the first instance of each study/series, for attributes not in the index."""
    if not pks:
        return {}
    if level is _IN:
        rows = session.execute(select(Instance.id, Instance.header).where(Instance.id.in_(pks)))
        return {pk: json.loads(h) for pk, h in rows}
    if level is _SE:
        first = (
            select(Instance.series_pk.label("owner"), func.min(Instance.id).label("iid"))
            .where(Instance.series_pk.in_(pks))
            .group_by(Instance.series_pk)
            .subquery()
        )
    else:
        first = (
            select(Series.study_pk.label("owner"), func.min(Instance.id).label("iid"))
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.study_pk.in_(pks))
            .group_by(Series.study_pk)
            .subquery()
        )
    rows = session.execute(select(first.c.owner, Instance.header).join(Instance, Instance.id == first.c.iid))
    return {owner: json.loads(h) for owner, h in rows}


@functools.cache
def _belongs(keyword: str, level: QueryLevel) -> bool:
    """Whether an attribute from an instance header may be answered at a study or series level."""
    if level is _IN:
        return True
    tag = tag_for_keyword(keyword)
    if tag is None or (tag >> 16) in _INSTANCE_ONLY_GROUPS or keyword in _INSTANCE_ONLY:
        return False
    return not (level is _ST and keyword in _SERIES_KEYWORDS)


@functools.cache
def _header_tag_belongs(tag: str, level: QueryLevel) -> bool:
    """``_belongs`` for a header element's tag (includefield=all): only dictionary attributes."""
    keyword = keyword_for_tag(int(tag, 16))
    return bool(keyword) and _belongs(keyword, level)


@dataclass(frozen=True)
class _Plan:
    """What a query selects and how each row becomes DICOM JSON, worked out once per query."""

    select: Select[Any]  # ordered; selects the level's key, the URL UIDs, then each distinct returned column
    from_index: list[tuple[str, int, Callable[[Any], dict[str, Any]]]]  # tag, row position, converter
    from_header: list[tuple[str, str]]  # tag, keyword: answered from the representative header
    absent: list[tuple[str, str]]  # tag, VR: returned empty (e.g. a study attribute at series level)


@functools.lru_cache(maxsize=256)
def _plan(level: QueryLevel, wanted: tuple[str, ...]) -> _Plan:
    columns: list[Any] = [_KEY[level], *_URL_UIDS[level]]
    positions: dict[Any, int] = {}
    from_index: list[tuple[str, int, Callable[[Any], dict[str, Any]]]] = []
    from_header: list[tuple[str, str]] = []
    absent: list[tuple[str, str]] = []
    for keyword in sorted(wanted, key=_tag):
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None:
            if level is not _P and _belongs(keyword, level):
                from_header.append((_tag(keyword), keyword))
            else:
                absent.append((_tag(keyword), _vr(keyword)))
        elif attribute.level.value <= level.value and attribute.column is not None:
            column = attribute.column
            if column not in positions:
                positions[column] = len(columns)
                columns.append(column)
            from_index.append((_tag(keyword), positions[column], _converter(keyword)))
    return _Plan(_order(level, _base_select(level, columns)), from_index, from_header, absent)


def run_query(session: Session, spec: QuerySpec) -> list[QueryResult]:
    """Execute a query and answer each match as DICOM JSON (keys in tag order).

    Only the columns the answer needs are selected, as plain tuples: loading ORM entities
    (identity map, instance state) cost more than the query itself for a page of studies."""
    wanted = tuple(dict.fromkeys([*DEFAULT_RETURN[spec.level], *spec.matches.keys(), *sorted(spec.include)]))
    plan = _plan(spec.level, wanted)
    query = build_select(spec, plan.select).limit(spec.limit).offset(spec.offset)
    rows = session.connection().execute(query).all()  # plain columns: no ORM loading to go through
    headers: dict[int, dict[str, Any]] = {}
    if (plan.from_header or spec.include_all) and spec.level is not _P:
        headers = _representative_headers(session, spec.level, [row[0] for row in rows])
    uids = len(_URL_UIDS[spec.level])
    level = spec.level
    results = []
    for row in rows:
        dataset = {tag: convert(row[position]) for tag, position, convert in plan.from_index}
        if headers or plan.from_header or plan.absent:
            header = headers.get(row[0], {})
            for tag, _keyword in plan.from_header:
                dataset[tag] = header.get(tag) or {"vr": _vr(_keyword)}
            for tag, vr in plan.absent:
                dataset[tag] = {"vr": vr}
            if spec.include_all:
                for tag, element in header.items():
                    if (
                        tag not in dataset
                        and "BulkDataURI" not in element
                        and _header_tag_belongs(tag, level)
                    ):
                        dataset[tag] = element
            dataset = dict(sorted(dataset.items()))
        results.append(
            QueryResult(
                dataset,
                row[1] if uids > 0 else "",
                row[2] if uids > 1 else "",
                row[3] if uids > 2 else "",
            )
        )
    return results


def spec_from_pairs(
    level: QueryLevel,
    pairs: Iterable[tuple[str, str]],
    *,
    default_limit: int,
    max_limit: int,
    fixed: Mapping[str, str] | None = None,
) -> QuerySpec:
    """Parse QIDO-style query parameters (already URL-decoded) into a QuerySpec."""
    spec = QuerySpec(level=level, limit=default_limit)
    for raw_key, value in pairs:
        key = raw_key.strip()
        if "\x00" in key or "\x00" in value:  # PostgreSQL refuses NUL in text: refused on both databases
            raise QueryError("query keys and values may not contain NUL characters")
        if key == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item == "all":
                    spec.include_all = True
                else:
                    spec.include.add(resolve_keyword(item))
        elif key == "limit":
            spec.limit = _bounded_int("limit", value, 1, max_limit)
        elif key == "offset":
            spec.offset = _bounded_int("offset", value, 0, 2**31 - 1)
        elif key == "fuzzymatching":
            if value not in ("true", "false"):
                raise QueryError("fuzzymatching must be true or false")
            spec.fuzzy = value == "true"
        else:
            keyword = resolve_keyword(key)
            if keyword in spec.matches and spec.matches[keyword] != value:
                spec.matches[keyword] = spec.matches[keyword] + "\\" + value
            else:
                spec.matches[keyword] = value
    for keyword, value in (fixed or {}).items():
        spec.matches[keyword] = value
    return spec


def _bounded_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise QueryError(f"{name} {value!r} is not a whole number") from exc
    if not low <= number <= high:
        raise QueryError(f"{name} must be between {low} and {high}")
    return number
