"""The audit trail for DIMSE: the same records, chain and event IDs as the HTTP side.

Each record is appended (and, on SQLite, fsync'd) before the answer it concerns is sent.
C-STORE is recorded once per association and study (PS3.15 "DICOM Instances Transferred"
is per transfer, not per instance); refusals and failures are always recorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from pynetdicom.events import Event

from server.context import ServerContext
from server.dimse.access import remote_ae_title
from server.security.audit import (
    INSTANCES_TRANSFERRED,
    QUERY,
    SECURITY_ALERT,
    SERIOUS_FAILURE,
    SUCCESS,
    AuditRecord,
)
from server.security.service import security_of

log = logging.getLogger(__name__)


class AuditUnavailable(RuntimeError):
    """The record could not be written: the operation must not be acknowledged."""


class DimseAudit:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._seen: set[tuple[int, str]] = set()  # (association, study) already recorded
        self._lock = threading.Lock()

    def _append(self, event: Event, record: AuditRecord) -> None:
        record.ae_title = remote_ae_title(event.assoc)
        record.client_address = str(event.assoc.remote.get("address", "") or "")
        record.auth_method = "AE title"
        try:
            security_of(self.ctx).record(record)
        except Exception as exc:
            log.exception(
                "audit record for %s from %s could not be written", record.event_id, record.ae_title
            )
            raise AuditUnavailable(str(exc)) from exc

    def stored(self, event: Event, study_uid: str, patient_id: str, ok: bool, detail: str = "") -> None:
        """C-STORE (received instances): one success record per association and study."""
        key = (id(event.assoc), study_uid)
        if ok:
            with self._lock:
                if key in self._seen:
                    return
                self._seen.add(key)
                if len(self._seen) > 100_000:
                    self._seen.clear()
        record = AuditRecord(
            INSTANCES_TRANSFERRED,
            "C",
            outcome=SUCCESS if ok else SERIOUS_FAILURE,
            event_type="C-STORE",
            outcome_detail=detail[:1024],
            resource="C-STORE",
            study_uids=[study_uid] if study_uid else [],
            patient_ids=[patient_id] if patient_id else [],
        )
        try:
            self._append(event, record)
        except AuditUnavailable:
            with self._lock:
                self._seen.discard(key)
            raise

    def refused(self, event: Event, operation: str, reason: str) -> None:
        """An unknown AE or a refused operation: a security alert."""
        self._append(
            event,
            AuditRecord(
                SECURITY_ALERT,
                "E",
                outcome=SERIOUS_FAILURE,
                event_type=operation,
                outcome_detail=reason[:1024],
                resource=operation,
            ),
        )

    def queried(
        self, event: Event, level: str, keys: dict[str, Any], matches: int, detail: str = "", ok: bool = True
    ) -> None:
        """C-FIND: the query's level and matching keys, and how many matches were answered."""
        studies = _values(keys.get("StudyInstanceUID"))
        patients = _values(keys.get("PatientID"))
        self._append(
            event,
            AuditRecord(
                QUERY,
                "E",
                outcome=SUCCESS if ok else SERIOUS_FAILURE,
                event_type="C-FIND",
                outcome_detail=detail[:1024],
                resource=f"C-FIND {level}",
                study_uids=studies,
                patient_ids=patients,
                objects={
                    "level": level,
                    "keys": {k: str(v)[:64] for k, v in keys.items() if v},
                    "matches": matches,
                },
            ),
        )

    def transferred(
        self, event: Event, operation: str, study_uids: Iterable[str], count: int, destination: str = ""
    ) -> None:
        """C-GET / C-MOVE: which studies leave, how many instances, and to whom."""
        studies = sorted(set(study_uids))
        self._append(
            event,
            AuditRecord(
                INSTANCES_TRANSFERRED,
                "R",
                event_type=operation,
                resource=operation,
                study_uids=studies,
                objects={"instances": count, "destination": destination or remote_ae_title(event.assoc)},
            ),
        )


def _values(value: Any) -> Sequence[str]:
    if value in (None, ""):
        return []
    text = str(value)
    return [v for v in text.replace(",", "\\").split("\\") if v and "*" not in v and "?" not in v]
