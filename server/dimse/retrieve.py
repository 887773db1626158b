"""C-GET and C-MOVE SCP: resolve the identifier to stored instances and send them as stored.

The identifier is resolved with the same matcher as C-FIND and QIDO-RS; the files are
read from the blob store and sent in their stored transfer syntax when the peer accepts
it (native ones may be re-encoded between the little-endian syntaxes by pynetdicom).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from server.archive.archive import Archive, StoredInstance
from server.archive.query import QueryError, QueryLevel, QuerySpec, run_query
from server.dimse.access import NOT_AUTHORIZED, DimseOperation, PeerDirectory, remote_ae_title
from server.dimse.audit import AuditUnavailable, DimseAudit
from server.dimse.contexts import storage_contexts_for
from server.dimse.query import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    UNIQUE_KEYS,
    IdentifierError,
    query_level,
    value_string,
)
from server.dimse.storage import status_dataset
from server.dimse.transport import handle_connection_open
from server.security.groups import Scope

log = logging.getLogger(__name__)
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702  # Refused: out of resources, unable to perform sub-operations

MAX_SUBOPERATIONS = 65535  # Number of ... Sub-operations are US
UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
_HIGHER_UNIQUE_KEYS = {
    QueryLevel.SERIES: ("StudyInstanceUID",),
    QueryLevel.INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID"),
}


def _key(identifier: Dataset, keyword: str) -> str:
    return value_string(identifier[keyword]) if keyword in identifier else ""


def instances_for_identifier(
    archive: Archive, identifier: Dataset, information_model: str, scope: Scope | None = None
) -> list[StoredInstance]:
    """The stored instances a C-GET/C-MOVE identifier names (by unique keys, lists allowed)."""
    level = query_level(identifier, information_model)
    unique = UNIQUE_KEYS[level]
    value = _key(identifier, unique)
    if not value or "*" in value or "?" in value:
        raise IdentifierError(f"a {unique} without wildcards is required to retrieve at this level")
    matches = {unique: value}
    for keyword in _HIGHER_UNIQUE_KEYS.get(level, ()):
        if upper := _key(identifier, keyword):
            matches[keyword] = upper  # relational SCUs may leave them out; hierarchical ones narrow
    spec_level = QueryLevel.STUDY if level is QueryLevel.PATIENT else level
    spec = QuerySpec(level=spec_level, matches=matches, limit=MAX_SUBOPERATIONS + 1)
    if scope is not None:  # studies outside the AE's groups are not there for it
        spec.scope = scope.condition()
    try:
        with archive.sessions() as session:
            results = run_query(session, spec)
    except QueryError as exc:
        raise IdentifierError(str(exc)) from exc
    groups: dict[tuple[str, str | None], set[str] | None] = {}
    for result in results:
        if level is QueryLevel.INSTANCE:
            key = (result.study_instance_uid, result.series_instance_uid)
            members = groups.setdefault(key, set())
            assert members is not None
            members.add(result.sop_instance_uid)
        elif level is QueryLevel.SERIES:
            groups[(result.study_instance_uid, result.series_instance_uid)] = None
        else:
            groups[(result.study_instance_uid, None)] = None
    instances: list[StoredInstance] = []
    for (study_uid, series_uid), sop_uids in groups.items():
        found = archive.stored_instances(study_uid, series_uid)
        instances += [i for i in found if sop_uids is None or i.sop_instance_uid in sop_uids]
    return instances


def _datasets(instances: list[StoredInstance], event: Event) -> Iterator[tuple[int, Any]]:
    """Pending sub-operations, one per instance; an unreadable blob counts as a failed one."""
    for instance in instances:
        if event.is_cancelled:
            yield CANCEL, None
            return
        try:
            ds = dcmread(instance.path)
        except Exception:
            log.exception("cannot read the stored file of %s", instance.sop_instance_uid)
            # Anything but a Dataset makes pynetdicom count a failed sub-operation and go on.
            yield PENDING, f"unreadable {instance.sop_instance_uid}"
            continue
        yield PENDING, ds


class RetrieveSCP:
    """Answers C-GET (on the same association) and C-MOVE (to a configured peer)."""

    def __init__(self, archive: Archive, access: PeerDirectory, audit: DimseAudit | None = None) -> None:
        self.archive = archive
        self.access = access
        self.audit = audit

    def _audit_refusal(self, event: Event, operation: str, reason: str) -> None:
        if self.audit is not None:
            with contextlib.suppress(AuditUnavailable):
                self.audit.refused(event, operation, reason)

    def _audit_transfer(
        self, event: Event, operation: str, instances: list[StoredInstance], destination: str = ""
    ) -> bool:
        """Record what leaves before it leaves; False when the record cannot be written."""
        if self.audit is None:
            return True
        try:
            self.audit.transferred(
                event, operation, (i.study_instance_uid for i in instances), len(instances), destination
            )
        except AuditUnavailable:
            return False
        return True

    def handle_get(self, event: Event) -> Iterator[Any]:
        calling_ae = remote_ae_title(event.assoc)
        if not self.access.permits(calling_ae, DimseOperation.GET):
            log.warning("C-GET from unknown AE %r refused", calling_ae)
            self._audit_refusal(event, "C-GET", self.access.refusal(calling_ae, DimseOperation.GET))
            yield 1  # a failure can only be answered once a count has been given
            yield status_dataset(NOT_AUTHORIZED, self.access.refusal(calling_ae, DimseOperation.GET)), None
            return
        try:
            instances = instances_for_identifier(
                self.archive,
                event.identifier,
                str(event.request.AffectedSOPClassUID),
                self.access.scope(calling_ae),
            )
        except IdentifierError as exc:
            yield 1
            yield status_dataset(exc.status, exc.reason), None
            return
        except Exception as exc:
            log.exception("C-GET from %r failed", calling_ae)
            yield 1
            yield (
                status_dataset(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"cannot decode the identifier: {exc}"),
                None,
            )
            return
        log.info("C-GET from %r: %d instances", calling_ae, len(instances))
        if not self._audit_transfer(event, "C-GET", instances):
            yield 1
            yield status_dataset(OUT_OF_RESOURCES_SUBOPERATIONS, "the audit trail cannot be written"), None
            return
        yield len(instances)
        yield from _datasets(instances, event)

    def handle_move(self, event: Event) -> Iterator[Any]:
        calling_ae = remote_ae_title(event.assoc)
        destination_ae = str(event.move_destination or "").strip()
        destination = self.access.peer(destination_ae)
        if not self.access.permits(calling_ae, DimseOperation.MOVE):
            # pynetdicom can only refuse before associating with the destination as 0xA801.
            log.warning("C-MOVE from unknown AE %r refused", calling_ae)
            self._audit_refusal(event, "C-MOVE", self.access.refusal(calling_ae, DimseOperation.MOVE))
            yield None, None
            return
        if destination is None:
            log.warning("C-MOVE from %r to unknown destination %r refused", calling_ae, destination_ae)
            self._audit_refusal(event, "C-MOVE", f"unknown move destination {destination_ae!r}")
            yield None, None
            return
        failure: Dataset | None = None
        instances: list[StoredInstance] = []
        try:
            instances = instances_for_identifier(
                self.archive,
                event.identifier,
                str(event.request.AffectedSOPClassUID),
                self.access.scope(calling_ae),
            )
            contexts = storage_contexts_for(instances)
        except IdentifierError as exc:
            failure = status_dataset(exc.status, exc.reason)
        except ValueError as exc:
            failure = status_dataset(UNABLE_TO_PERFORM_SUBOPERATIONS, str(exc))
        except Exception as exc:
            log.exception("C-MOVE from %r failed", calling_ae)
            failure = status_dataset(
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"cannot decode the identifier: {exc}"
            )
        if failure is None and not self._audit_transfer(event, "C-MOVE", instances, destination_ae):
            failure = status_dataset(OUT_OF_RESOURCES_SUBOPERATIONS, "the audit trail cannot be written")
        if failure is not None:
            # pynetdicom answers failures only after associating with the destination.
            yield destination.host, destination.port, {"contexts": [build_context(Verification)]}
            yield 1
            yield failure, None
            return
        log.info("C-MOVE from %r: %d instances to %s", calling_ae, len(instances), destination_ae)
        yield (
            destination.host,
            destination.port,
            {"contexts": contexts, "evt_handlers": [(evt.EVT_CONN_OPEN, handle_connection_open)]},
        )
        yield len(instances)
        yield from _datasets(instances, event)
