"""Study groups: access limited to the studies matching rules, and break-glass to lift the limit.

A group is a set of rules on study attributes; a study belongs to the group when every rule
the group names matches (a rule is a list of accepted values, any of which will do). A user
given one or more groups sees the studies of any of them and nothing else; a user given none
is not limited. The same rules become an SQL condition (QIDO-RS, C-FIND, checks of addressed
objects: paging stays right because the filter is in the query) and a test on a data set
(STOW-RS and C-STORE, before anything is stored).

Break-glass: a limited user may declare an emergency with a reason; for a bounded time the
limits are lifted. Start, stop and expiry are recorded in the audit trail.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, and_, delete, exists, false, or_, select, true, update
from sqlalchemy.orm import Session

from server.archive.models import Instance, Patient, Series, Study
from server.security.models import EmergencyAccess, StudyGroup, User, UserStudyGroup

MAX_RULE_VALUES = 500
MAX_EMERGENCY_MINUTES = 24 * 60
DEFAULT_EMERGENCY_MINUTES = 60
MIN_REASON_LENGTH = 10


class GroupError(ValueError):
    """A group definition or assignment that cannot be done; the message says why."""


@dataclass(frozen=True)
class RuleKind:
    key: str  # in the stored JSON and the API
    keyword: str  # the DICOM attribute the rule tests
    what: str  # for messages and docs


RULE_KINDS: dict[str, RuleKind] = {
    k.key: k
    for k in (
        RuleKind("modalities", "Modality", "a modality of one of the study's series"),
        RuleKind("sop_classes", "SOPClassUID", "the SOP class of one of the study's instances"),
        RuleKind("institutions", "InstitutionName", "Institution Name (0008,0080) of one of its instances"),
        RuleKind(
            "departments",
            "InstitutionalDepartmentName",
            "Institutional Department Name (0008,1040) of one of its instances",
        ),
        RuleKind("issuers", "IssuerOfPatientID", "the issuer of the patient ID"),
        RuleKind("studies", "StudyInstanceUID", "an explicit list of Study Instance UIDs"),
    )
}
_HEADER_TAGS = {"institutions": "00080080", "departments": "00081040"}


@dataclass(frozen=True)
class GroupRules:
    """Accepted values per rule kind; a study matches when every named kind matches."""

    name: str
    rules: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def parse(cls, name: str, document: Mapping[str, Any]) -> GroupRules:
        if not isinstance(document, Mapping):
            raise GroupError("rules are a JSON object: {kind: [values]}")
        rules: list[tuple[str, tuple[str, ...]]] = []
        for key, values in document.items():
            if key not in RULE_KINDS:
                raise GroupError(f"unknown rule {key!r}; rules are {', '.join(RULE_KINDS)}")
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise GroupError(f"rule {key!r} is a list of strings")
            cleaned = tuple(dict.fromkeys(v.strip() for v in values if v.strip()))
            if not cleaned:
                raise GroupError(f"rule {key!r} has no value")
            if len(cleaned) > MAX_RULE_VALUES or any(len(v) > 128 for v in cleaned):
                raise GroupError(f"rule {key!r}: at most {MAX_RULE_VALUES} values of 128 characters")
            rules.append((key, cleaned))
        if not rules:
            raise GroupError("a group needs at least one rule (it would match no study)")
        return cls(name, tuple(sorted(rules)))

    def as_json(self) -> dict[str, list[str]]:
        return {key: list(values) for key, values in self.rules}

    def condition(self) -> ColumnElement[bool]:
        """SQL over Study (and Patient, joined by the caller or correlated here)."""
        parts: list[ColumnElement[bool]] = []
        for key, values in self.rules:
            if key == "modalities":
                parts.append(
                    exists(
                        select(Series.id)
                        .where(Series.study_pk == Study.id, Series.modality.in_(values))
                        .correlate_except(Series)
                    )
                )
            elif key == "sop_classes":
                parts.append(
                    exists(
                        select(Instance.id)
                        .join(Series, Instance.series_pk == Series.id)
                        .where(Series.study_pk == Study.id, Instance.sop_class_uid.in_(values))
                        .correlate_except(Instance, Series)
                    )
                )
            elif key in _HEADER_TAGS:
                # Not an index column: matched in the stored DICOM JSON header of the study's instances.
                tag = _HEADER_TAGS[key]
                patterns = [_header_pattern(tag, v) for v in values]
                parts.append(
                    exists(
                        select(Instance.id)
                        .join(Series, Instance.series_pk == Series.id)
                        .where(
                            Series.study_pk == Study.id,
                            or_(*(Instance.header.like(p, escape="\\") for p in patterns)),
                        )
                        .correlate_except(Instance, Series)
                    )
                )
            elif key == "issuers":
                parts.append(
                    exists(
                        select(Patient.id)
                        .where(Patient.id == Study.patient_pk, Patient.issuer_of_patient_id.in_(values))
                        .correlate_except(Patient)
                    )
                )
            elif key == "studies":
                parts.append(Study.study_instance_uid.in_(values))
        return and_(*parts)

    def matches_dataset(self, ds: Dataset) -> bool:
        """The rules applied to one instance about to be stored (as if it were its whole study)."""
        for key, values in self.rules:
            value = str(ds.get(RULE_KINDS[key].keyword, "") or "").strip()
            if value not in values:
                return False
        return True


def _header_pattern(tag: str, value: str) -> str:
    """LIKE pattern for one single-valued string element in the compact DICOM JSON header."""
    encoded = json.dumps(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f'%"{tag}":{{"vr":"LO","Value":[{encoded}]}}%'


@dataclass(frozen=True)
class Scope:
    """The studies a limited user may see: those of any of their groups."""

    groups: tuple[GroupRules, ...]

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def condition(self) -> ColumnElement[bool]:
        if not self.groups:
            return false()
        return or_(*(g.condition() for g in self.groups))

    def matches_dataset(self, ds: Dataset) -> bool:
        return any(g.matches_dataset(ds) for g in self.groups)


@dataclass(frozen=True)
class Emergency:
    id: int
    username: str
    reason: str
    started_at: dt.datetime
    expires_at: dt.datetime
    ended_at: dt.datetime | None = None


@dataclass(frozen=True)
class GroupInfo:
    name: str
    description: str
    rules: dict[str, list[str]]
    members: list[str] = field(default_factory=list)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def load_scope(session: Session, user_id: int, now: dt.datetime) -> tuple[Scope, Emergency | None]:
    """The groups of a limited user and their active emergency, if any (one query each)."""
    rows = session.execute(
        select(StudyGroup.name, StudyGroup.rules)
        .join(UserStudyGroup, UserStudyGroup.group_id == StudyGroup.id)
        .where(UserStudyGroup.user_id == user_id)
        .order_by(StudyGroup.name)
    ).all()
    groups = []
    for name, text in rows:
        try:
            groups.append(GroupRules.parse(name, json.loads(text)))
        except (GroupError, ValueError):
            continue  # a broken definition matches nothing rather than everything
    emergency = session.execute(
        select(EmergencyAccess, User.username)
        .join(User, EmergencyAccess.user_id == User.id)
        .where(
            EmergencyAccess.user_id == user_id,
            EmergencyAccess.ended_at.is_(None),
            EmergencyAccess.expires_at > now,
        )
        .order_by(EmergencyAccess.id.desc())
        .limit(1)
    ).first()
    return Scope(tuple(groups)), _emergency(*emergency) if emergency else None


def _emergency(row: EmergencyAccess, username: str) -> Emergency:
    return Emergency(
        row.id,
        username,
        row.reason,
        _utc(row.started_at),
        _utc(row.expires_at),
        _utc(row.ended_at) if row.ended_at else None,
    )


class StudyGroups:
    """Group definitions, memberships and break-glass periods (blocking: call from an executor)."""

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    # -- groups -----------------------------------------------------------------------------

    def save_group(self, name: str, rules: Mapping[str, Any], description: str = "") -> GroupInfo:
        """Create a group or replace its rules."""
        name = name.strip()
        if not name or len(name) > 64 or any(c.isspace() for c in name):
            raise GroupError("a group name is 1-64 characters without spaces")
        parsed = GroupRules.parse(name, rules)
        with self.sessions.begin() as session:
            group = session.scalar(select(StudyGroup).where(StudyGroup.name == name))
            if group is None:
                group = StudyGroup(name=name, created_at=dt.datetime.now(dt.UTC))
                session.add(group)
            group.rules = json.dumps(parsed.as_json(), sort_keys=True)
            group.description = description[:256]
        return GroupInfo(name, description[:256], parsed.as_json())

    def delete_group(self, name: str) -> None:
        with self.sessions.begin() as session:
            group = self._group(session, name)
            session.execute(delete(UserStudyGroup).where(UserStudyGroup.group_id == group.id))
            session.delete(group)

    def list_groups(self) -> list[GroupInfo]:
        with self.sessions() as session:
            members: dict[int, list[str]] = {}
            for group_id, username in session.execute(
                select(UserStudyGroup.group_id, User.username)
                .join(User, UserStudyGroup.user_id == User.id)
                .order_by(User.username)
            ):
                members.setdefault(group_id, []).append(username)
            return [
                GroupInfo(g.name, g.description, json.loads(g.rules), members.get(g.id, []))
                for g in session.scalars(select(StudyGroup).order_by(StudyGroup.name))
            ]

    def set_user_groups(self, username: str, names: Sequence[str]) -> list[str]:
        """Give a user exactly these groups (none: not limited)."""
        with self.sessions.begin() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise GroupError(f"no user {username!r}")
            groups = [self._group(session, n) for n in dict.fromkeys(names)]
            session.execute(delete(UserStudyGroup).where(UserStudyGroup.user_id == user.id))
            for group in groups:
                session.add(UserStudyGroup(user_id=user.id, group_id=group.id))
            return [g.name for g in groups]

    def user_groups(self) -> dict[str, list[str]]:
        with self.sessions() as session:
            out: dict[str, list[str]] = {}
            for username, name in session.execute(
                select(User.username, StudyGroup.name)
                .join(UserStudyGroup, UserStudyGroup.user_id == User.id)
                .join(StudyGroup, UserStudyGroup.group_id == StudyGroup.id)
                .order_by(StudyGroup.name)
            ):
                out.setdefault(username, []).append(name)
            return out

    @staticmethod
    def _group(session: Session, name: str) -> StudyGroup:
        group = session.scalar(select(StudyGroup).where(StudyGroup.name == name))
        if group is None:
            raise GroupError(f"no study group {name!r}")
        return group

    # -- break-glass -------------------------------------------------------------------------

    def start_emergency(self, user_id: int, reason: str, minutes: int) -> Emergency:
        reason = reason.strip()
        if len(reason) < MIN_REASON_LENGTH:
            raise GroupError(f"say why (at least {MIN_REASON_LENGTH} characters): the reason is audited")
        if not 1 <= minutes <= MAX_EMERGENCY_MINUTES:
            raise GroupError(f"an emergency lasts 1 to {MAX_EMERGENCY_MINUTES} minutes")
        now = dt.datetime.now(dt.UTC)
        with self.sessions.begin() as session:
            limited = session.scalar(select(exists().where(UserStudyGroup.user_id == user_id)))
            if not limited:
                raise GroupError("this account is not limited to study groups: there is nothing to lift")
            session.execute(
                update(EmergencyAccess)
                .where(EmergencyAccess.user_id == user_id, EmergencyAccess.ended_at.is_(None))
                .values(ended_at=now)
            )
            row = EmergencyAccess(
                user_id=user_id,
                reason=reason[:2000],
                started_at=now,
                expires_at=now + dt.timedelta(minutes=minutes),
            )
            session.add(row)
            session.flush()
            username = session.scalar(select(User.username).where(User.id == user_id)) or ""
            return _emergency(row, username)

    def stop_emergency(self, user_id: int) -> Emergency | None:
        """End the user's active emergency; None if there was none."""
        now = dt.datetime.now(dt.UTC)
        with self.sessions.begin() as session:
            row = session.execute(
                select(EmergencyAccess, User.username)
                .join(User, EmergencyAccess.user_id == User.id)
                .where(
                    EmergencyAccess.user_id == user_id,
                    EmergencyAccess.ended_at.is_(None),
                    EmergencyAccess.expires_at > now,
                )
            ).first()
            if row is None:
                return None
            row[0].ended_at = now
            return _emergency(row[0], row[1])

    def close_expired(self) -> list[Emergency]:
        """Mark lapsed emergencies ended (each returned once, for the audit trail)."""
        now = dt.datetime.now(dt.UTC)
        with self.sessions.begin() as session:
            rows = session.execute(
                select(EmergencyAccess, User.username)
                .join(User, EmergencyAccess.user_id == User.id)
                .where(EmergencyAccess.ended_at.is_(None), EmergencyAccess.expires_at <= now)
                .with_for_update()
            ).all()
            for row, _name in rows:
                row.ended_at = row.expires_at
            return [_emergency(r, n) for r, n in rows]

    def emergencies(self, limit: int = 100) -> list[Emergency]:
        with self.sessions() as session:
            return [
                _emergency(r, n)
                for r, n in session.execute(
                    select(EmergencyAccess, User.username)
                    .join(User, EmergencyAccess.user_id == User.id)
                    .order_by(EmergencyAccess.id.desc())
                    .limit(limit)
                )
            ]


class StudyLocator:
    """Which study a Study, Series or SOP Instance UID belongs to, cached per process.

    A UID never moves to another study, so an entry stays right; unknown UIDs are not cached
    (the object may arrive later).
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def studies_of(self, session: Session, uids: Iterable[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        missing: list[str] = []
        with self._lock:
            for uid in uids:
                study = self._cache.get(uid)
                if study is None:
                    missing.append(uid)
                else:
                    self._cache.move_to_end(uid)
                    found[uid] = study
        if missing:
            resolved: dict[str, str] = {}
            for (uid,) in session.execute(
                select(Study.study_instance_uid).where(Study.study_instance_uid.in_(missing))
            ):
                resolved[uid] = uid
            rest = [u for u in missing if u not in resolved]
            if rest:
                for uid, study in session.execute(
                    select(Series.series_instance_uid, Study.study_instance_uid)
                    .join(Study, Series.study_pk == Study.id)
                    .where(Series.series_instance_uid.in_(rest))
                ):
                    resolved[uid] = study
            rest = [u for u in rest if u not in resolved]
            if rest:
                for uid, study in session.execute(
                    select(Instance.sop_instance_uid, Study.study_instance_uid)
                    .join(Series, Instance.series_pk == Series.id)
                    .join(Study, Series.study_pk == Study.id)
                    .where(Instance.sop_instance_uid.in_(rest))
                ):
                    resolved[uid] = study
            with self._lock:
                for uid, study in resolved.items():
                    self._cache[uid] = study
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            found.update(resolved)
        return found


def studies_in_scope(session: Session, scope: Scope, study_uids: Iterable[str]) -> set[str]:
    """Those of the given studies the scope lets the user see."""
    uids = list(dict.fromkeys(study_uids))
    if not uids:
        return set()
    return set(
        session.scalars(
            select(Study.study_instance_uid).where(Study.study_instance_uid.in_(uids), scope.condition())
        )
    )


def visible_studies(scope: Scope | None) -> ColumnElement[bool]:
    """SQL over Study for what a route adds beyond the studies it names (a patient's priors, other
    exams): the scope's condition for a limited user, no condition otherwise. The guard checks only
    named UIDs, so a query that reaches further must carry this one."""
    return true() if scope is None else scope.condition()


def hidden_uids(session: Session, locator: StudyLocator, scope: Scope, uids: Iterable[str]) -> list[str]:
    """The named UIDs that exist but lie in studies outside the scope (answered as not found)."""
    owners = locator.studies_of(session, uids)
    if not owners:
        return []
    visible = studies_in_scope(session, scope, owners.values())
    return [uid for uid, study in owners.items() if study not in visible]


_STORE_TAGS = [
    "StudyInstanceUID",
    "SOPInstanceUID",
    *(k.keyword for k in RULE_KINDS.values() if k.key != "studies"),
]


def may_store(session: Session, scope: Scope, datasets: Sequence[Dataset | None]) -> list[bool]:
    """Per data set about to be stored: an existing study must be in the scope; a new one must
    match it. An unreadable data set is refused (fail closed)."""
    existing = {
        str(ds.get("StudyInstanceUID", ""))
        for ds in datasets
        if ds is not None and ds.get("StudyInstanceUID")
    }
    known = set(
        session.scalars(select(Study.study_instance_uid).where(Study.study_instance_uid.in_(existing)))
    )
    visible = studies_in_scope(session, scope, known)
    out = []
    for ds in datasets:
        if ds is None:
            out.append(False)
            continue
        study = str(ds.get("StudyInstanceUID", ""))
        out.append(study in visible if study in known else scope.matches_dataset(ds))
    return out


def read_store_attributes(path: Any) -> Dataset | None:
    """The attributes the rules look at, read from a file about to be stored (None: unreadable)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(path, stop_before_pixels=True, specific_tags=_STORE_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None
