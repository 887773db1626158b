"""The audit trail: DICOM audit vocabulary (PS3.15 A.5), an append-only hash chain, queries, export.

Each record stores the SHA-256 of the previous record and its own hash over
(previous hash + canonical JSON of its fields). Changing, removing or reordering any
row breaks every later link, and ``verify`` names the first bad record. Appends lock one
head row, so writers in several processes still form a single chain.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from server.security.accounts import as_utc, now_utc
from server.security.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64

# PS3.16 CID 400 Audit Event ID (DCM codes) and CID 401 Audit Event Type Code used here.
APPLICATION_ACTIVITY = "110100"
AUDIT_LOG_USED = "110101"
INSTANCES_ACCESSED = "110103"
INSTANCES_TRANSFERRED = "110104"
STUDY_DELETED = "110105"
EXPORT = "110106"
IMPORT = "110107"
QUERY = "110112"
SECURITY_ALERT = "110113"
USER_AUTHENTICATION = "110114"

APPLICATION_START = "110120"
APPLICATION_STOP = "110121"
LOGIN = "110122"
LOGOUT = "110123"
SECURITY_CONFIGURATION = "110129"
SECURITY_ROLES_CHANGED = "110136"
USER_SECURITY_ATTRIBUTES_CHANGED = "110137"
# PS3.16 CID 402 Security Alert Type Code: break-glass (with event ID 110113 Security Alert)
EMERGENCY_OVERRIDE_STARTED = "110127"
EMERGENCY_OVERRIDE_STOPPED = "110138"

EVENT_NAMES = {
    APPLICATION_ACTIVITY: "Application Activity",
    AUDIT_LOG_USED: "Audit Log Used",
    INSTANCES_ACCESSED: "DICOM Instances Accessed",
    INSTANCES_TRANSFERRED: "DICOM Instances Transferred",
    STUDY_DELETED: "DICOM Study Deleted",
    EXPORT: "Export",
    IMPORT: "Import",
    QUERY: "Query",
    SECURITY_ALERT: "Security Alert",
    USER_AUTHENTICATION: "User Authentication",
    APPLICATION_START: "Application Start",
    APPLICATION_STOP: "Application Stop",
    LOGIN: "Login",
    LOGOUT: "Logout",
    SECURITY_CONFIGURATION: "Security Configuration",
    SECURITY_ROLES_CHANGED: "Security Roles Changed",
    USER_SECURITY_ATTRIBUTES_CHANGED: "User Security Attributes Changed",
    EMERGENCY_OVERRIDE_STARTED: "Emergency Override Started",
    EMERGENCY_OVERRIDE_STOPPED: "Emergency Override Stopped",
}

# EventOutcomeIndicator
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


def outcome_of_status(status: int) -> int:
    return SUCCESS if status < 400 else MINOR_FAILURE if status < 500 else SERIOUS_FAILURE


@dataclass
class AuditRecord:
    """What happened, to be appended; ``seq`` and hashes are assigned by the trail."""

    event_id: str
    action: str  # C create, R read, U update, D delete, E execute
    outcome: int = SUCCESS
    event_type: str = ""
    outcome_detail: str = ""
    username: str = ""
    role: str = ""
    auth_method: str = ""
    ae_title: str = ""
    client_address: str = ""
    http_method: str = ""
    resource: str = ""
    study_uids: Sequence[str] = ()
    patient_ids: Sequence[str] = ()
    objects: dict[str, Any] = field(default_factory=dict)
    occurred_at: dt.datetime | None = None


COLUMNS = (
    "seq",
    "occurred_at",
    "event_id",
    "event_type",
    "action",
    "outcome",
    "outcome_detail",
    "username",
    "role",
    "auth_method",
    "ae_title",
    "client_address",
    "http_method",
    "resource",
    "study_uids",
    "patient_ids",
    "objects",
    "prev_hash",
)


def _timestamp(value: dt.datetime) -> str:
    return as_utc(value).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _joined(values: Sequence[str]) -> str:
    clean = [v.strip() for v in dict.fromkeys(values) if v and v.strip()]
    return "|" + "|".join(clean) + "|" if clean else ""


def _storable(text: str) -> str:
    """Hostile text is recorded, not refused: NUL (which PostgreSQL will not store) becomes U+FFFD."""
    return text.replace("\x00", "\ufffd")


def _split(values: str) -> list[str]:
    return [v for v in values.split("|") if v]


def record_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the record's canonical JSON (sorted keys, UTC µs time)."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + "\n" + canonical).encode()).hexdigest()


def _content(row: Any) -> dict[str, Any]:
    values = {name: getattr(row, name) for name in COLUMNS}
    values["occurred_at"] = _timestamp(values["occurred_at"])
    values["seq"] = int(values["seq"])
    values["outcome"] = int(values["outcome"])
    return values


def _document(row: Any) -> dict[str, Any]:
    """A record as the API and the export show it."""
    out = _content(row)
    out["event_name"] = EVENT_NAMES.get(row.event_id, "")
    out["event_type_name"] = EVENT_NAMES.get(row.event_type, "")
    out["study_uids"] = _split(row.study_uids)
    out["patient_ids"] = _split(row.patient_ids)
    out["objects"] = json.loads(row.objects) if row.objects else {}
    out["record_hash"] = row.record_hash
    return out


@dataclass(frozen=True)
class AuditFilter:
    username: str | None = None
    event_id: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive
    outcome: int | None = None


@dataclass(frozen=True)
class VerifyReport:
    records: int
    ok: bool
    first_bad_seq: int | None
    problem: str
    head_hash: str


class AuditTrail:
    """Append, query, export and verify the chain. Blocking: run in an executor."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, record: AuditRecord) -> int:
        """Append one record durably (committed before this returns); returns its sequence number."""
        occurred = record.occurred_at or now_utc()
        with self.engine.begin() as connection:
            # The UPDATE takes the write lock (SQLite) / row lock (PostgreSQL) before we read the head.
            head = connection.execute(
                update(AuditChainHead)
                .where(AuditChainHead.id == 1)
                .values(last_seq=AuditChainHead.last_seq + 1)
                .returning(AuditChainHead.last_seq, AuditChainHead.last_hash)
            ).first()
            if head is None:
                raise RuntimeError("audit_chain_head has no row: the database was not migrated")
            seq, prev_hash = int(head[0]), str(head[1])
            values: dict[str, Any] = {
                "seq": seq,
                "occurred_at": occurred,
                "event_id": record.event_id,
                "event_type": record.event_type,
                "action": record.action,
                "outcome": int(record.outcome),
                "outcome_detail": _storable(record.outcome_detail)[:256],
                "username": _storable(record.username)[:64],
                "role": record.role[:16],
                "auth_method": record.auth_method[:16],
                "ae_title": _storable(record.ae_title)[:16],
                "client_address": record.client_address[:64],
                "http_method": record.http_method[:8],
                "resource": _storable(record.resource)[:4000],
                "study_uids": _storable(_joined(record.study_uids)),
                "patient_ids": _storable(_joined(record.patient_ids)),
                "objects": json.dumps(record.objects, sort_keys=True) if record.objects else "",
                "prev_hash": prev_hash,
            }
            content = dict(values)
            content["occurred_at"] = _timestamp(occurred)
            digest = record_hash(prev_hash, content)
            connection.execute(insert(AuditEvent).values(**values, record_hash=digest))
            connection.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(last_hash=digest))
        return seq

    def query(
        self, flt: AuditFilter, *, offset: int = 0, limit: int = 100
    ) -> tuple[list[dict[str, Any]], int]:
        """Matching records, newest first, and how many match in all."""
        where = _conditions(flt)
        with self.engine.connect() as connection:
            total = int(connection.scalar(select(func.count()).select_from(AuditEvent).where(*where)) or 0)
            rows = connection.execute(
                select(AuditEvent).where(*where).order_by(AuditEvent.seq.desc()).offset(offset).limit(limit)
            ).all()
        return [_document(row) for row in rows], total

    def iterate(self, flt: AuditFilter, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Matching records, oldest first, in batches (for export)."""
        where = _conditions(flt)
        last = 0
        while True:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    select(AuditEvent)
                    .where(AuditEvent.seq > last, *where)
                    .order_by(AuditEvent.seq)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield _document(row)
            last = int(rows[-1].seq)

    def verify(self, batch: int = 2000) -> VerifyReport:
        """Walk the whole chain: links, hashes, sequence without gaps, and the head row."""
        prev = GENESIS_HASH
        expected_seq = 1
        count = 0
        with self.engine.connect() as connection:
            head = connection.execute(select(AuditChainHead.last_seq, AuditChainHead.last_hash)).first()
            while True:
                rows = connection.execute(
                    select(AuditEvent)
                    .where(AuditEvent.seq >= expected_seq)
                    .order_by(AuditEvent.seq)
                    .limit(batch)
                ).all()
                if not rows:
                    break
                for row in rows:
                    seq = int(row.seq)
                    if seq != expected_seq:
                        return VerifyReport(
                            count, False, expected_seq, f"record {expected_seq} is missing", prev
                        )
                    if row.prev_hash != prev:
                        return VerifyReport(
                            count, False, seq, f"record {seq} does not link to record {seq - 1}", prev
                        )
                    if record_hash(prev, _content(row)) != row.record_hash:
                        return VerifyReport(
                            count, False, seq, f"record {seq} was altered after it was written", prev
                        )
                    prev = row.record_hash
                    expected_seq += 1
                    count += 1
        if head is None:
            return VerifyReport(count, False, None, "the chain head row is missing", prev)
        if int(head[0]) != count or head[1] != prev:
            return VerifyReport(
                count,
                False,
                count + 1,
                f"the chain head says {head[0]} records; records after {count} were removed",
                prev,
            )
        return VerifyReport(count, True, None, "", prev)


def _conditions(flt: AuditFilter) -> list[Any]:
    where: list[Any] = []
    if flt.username is not None:
        where.append(AuditEvent.username == flt.username)
    if flt.event_id:
        where.append(AuditEvent.event_id == flt.event_id)
    if flt.study_uid:
        where.append(AuditEvent.study_uids.contains(f"|{flt.study_uid}|", autoescape=True))
    if flt.patient_id:
        where.append(AuditEvent.patient_ids.contains(f"|{flt.patient_id}|", autoescape=True))
    if flt.since is not None:
        where.append(AuditEvent.occurred_at >= flt.since)
    if flt.until is not None:
        where.append(AuditEvent.occurred_at < flt.until)
    if flt.outcome is not None:
        where.append(AuditEvent.outcome == flt.outcome)
    return where


CSV_FIELDS = (*COLUMNS, "event_name", "event_type_name", "record_hash")


def to_json_line(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"


def csv_header() -> str:
    return _csv_row(list(CSV_FIELDS))


def to_csv_row(document: dict[str, Any]) -> str:
    values = []
    for name in CSV_FIELDS:
        value = document.get(name, "")
        if isinstance(value, list):
            value = "|".join(value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True) if value else ""
        values.append(_neutralise(str(value)))
    return _csv_row(values)


def _neutralise(text: str) -> str:
    """Spreadsheets run cells starting with = + - @ as formulas; a quote keeps them text (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_row(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()
