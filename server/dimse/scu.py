"""Tessera as an SCU: send stored instances to a peer, and pull a study from a peer into the archive.

Everything received while retrieving goes through the same C-STORE handler, and so the
same ingest path, as instances a modality sends to the listener.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.transport import ThreadedAssociationServer

from server.archive.archive import Archive, StoredInstance
from server.archive.query import QueryLevel, QuerySpec, run_query
from server.config import DicomPeer, Settings
from server.dimse.access import PeerDirectory
from server.dimse.contexts import (
    MAX_REQUESTED_CONTEXTS,
    STORAGE_SOP_CLASSES,
    retrieve_storage_contexts,
    storage_contexts_for,
)
from server.dimse.service import add_scp_contexts, configured_ae
from server.dimse.storage import StorageSCP
from server.dimse.transport import disable_nagle, handle_connection_open

log = logging.getLogger(__name__)

RetrieveMethod = Literal["move", "get"]
_PENDING = (0xFF00, 0xFF01)


class DimseError(RuntimeError):
    """The peer could not be reached, refused the association, or refused the request."""


@dataclass
class TransferReport:
    """How many instances went across, and which failed (SOP Instance UIDs when known)."""

    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_instances: list[str] = field(default_factory=list)
    status: int = 0x0000

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.status in (0x0000, 0xB000) and not self.failed_instances


def known_peer(settings: Settings, ae_title: str) -> DicomPeer:
    peer = PeerDirectory.from_settings(settings).peer(ae_title)
    if peer is None:
        known = ", ".join(p.ae_title for p in settings.dicom_peers) or "none configured"
        raise DimseError(f"{ae_title!r} is not a known DICOM peer (TESSERA_DICOM_PEERS: {known})")
    return peer


def _associate(settings: Settings, peer: DicomPeer, **kwargs: object) -> Association:
    ae = configured_ae(settings)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
    if not assoc.is_established:
        raise DimseError(f"{peer.ae_title} at {peer.host}:{peer.port} did not accept an association")
    disable_nagle(assoc)
    return assoc


def send_instances(
    settings: Settings,
    peer: DicomPeer,
    instances: list[StoredInstance],
    on_sent: Callable[[StoredInstance, int], None] | None = None,
) -> TransferReport:
    """C-STORE the instances over one association, each in its stored transfer syntax where accepted."""
    report = TransferReport()
    if not instances:
        return report
    try:
        contexts = storage_contexts_for(instances)
    except ValueError as exc:  # more SOP class/transfer syntax pairs than one association carries
        raise DimseError(f"cannot send in one association: {exc}; send series by series") from exc
    assoc = _associate(settings, peer, contexts=contexts)
    try:
        for instance in instances:
            try:
                status = int(assoc.send_c_store(instance.path).get("Status", 0xC000))
            except (ValueError, AttributeError, OSError) as exc:  # no accepted context / unreadable
                log.warning("cannot send %s: %s", instance.sop_instance_uid, exc)
                status = 0xC000
            if not assoc.is_established:
                raise DimseError(f"{peer.ae_title} ended the association while storing")
            if status == 0x0000:
                report.completed += 1
            elif status & 0xF000 == 0xB000:
                report.warning += 1
            else:
                report.failed += 1
                report.failed_instances.append(instance.sop_instance_uid)
            if on_sent is not None:
                on_sent(instance, status)
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def instances_to_send(
    archive: Archive, study_uid: str | None, series_uid: str | None
) -> list[StoredInstance]:
    """A study, or a series (its study found from the index when not given)."""
    if study_uid:
        return archive.stored_instances(study_uid, series_uid)
    if not series_uid:
        raise ValueError("give a study or a series")
    spec = QuerySpec(level=QueryLevel.SERIES, matches={"SeriesInstanceUID": series_uid}, limit=1)
    with archive.sessions() as session:
        found = run_query(session, spec)
    return archive.stored_instances(found[0].study_instance_uid, series_uid) if found else []


def find_at_peer(settings: Settings, peer: DicomPeer, identifier: Dataset) -> list[Dataset]:
    """C-FIND (Study Root) at a peer; the pending identifiers it answers."""
    assoc = _associate(settings, peer, contexts=[build_context(StudyRootQueryRetrieveInformationModelFind)])
    try:
        answers = []
        for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            code = int(status.get("Status", 0xC000)) if status else None
            if code is None:
                raise DimseError(f"{peer.ae_title} did not answer the C-FIND")
            if code in _PENDING and found is not None:
                answers.append(found)
            elif code not in _PENDING and code != 0x0000:
                raise DimseError(
                    f"{peer.ae_title} refused the C-FIND: 0x{code:04X} {status.get('ErrorComment', '')}".strip()
                )
        return answers
    finally:
        if assoc.is_established:
            assoc.release()


def _study_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def _final_counts(responses: Iterable[tuple[Dataset, Dataset | None]], peer: DicomPeer) -> TransferReport:
    report = TransferReport(status=0xC000)
    for status, identifier in responses:
        if not status:
            raise DimseError(f"{peer.ae_title} did not answer the retrieve request")
        code = int(status.Status)
        if code in _PENDING:
            continue
        report.status = code
        report.completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
        report.warning = int(status.get("NumberOfWarningSuboperations", 0) or 0)
        report.failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            report.failed_instances = [
                str(v) for v in (value if isinstance(value, list | tuple) else [value]) if v
            ]
        if code not in (0x0000, 0xB000):
            comment = status.get("ErrorComment", "")
            raise DimseError(f"{peer.ae_title} refused the retrieve: 0x{code:04X} {comment}".strip())
    return report


def retrieve_study(
    settings: Settings,
    archive: Archive,
    peer: DicomPeer,
    study_uid: str,
    method: RetrieveMethod = "move",
) -> TransferReport:
    """Pull a study from a peer into the archive: C-FIND what it holds, then C-MOVE or C-GET it.

    With C-MOVE the peer sends to our AE title, so it must know us as a destination; if
    nothing listens on our DICOM port (no ``tessera serve`` running), a listener is started
    for the duration of the move.
    """
    query = _study_identifier(study_uid)
    query.SOPClassUID = ""
    query.SOPInstanceUID = ""
    query.QueryRetrieveLevel = "IMAGE"
    held = find_at_peer(settings, peer, query)
    if not held:
        raise DimseError(f"{peer.ae_title} has no study {study_uid}")
    if method == "get":
        sop_classes = [str(ds.SOPClassUID) for ds in held if ds.get("SOPClassUID")]
        return _retrieve_by_get(settings, archive, peer, study_uid, sop_classes)
    return _retrieve_by_move(settings, archive, peer, study_uid)


def _retrieve_by_get(
    settings: Settings, archive: Archive, peer: DicomPeer, study_uid: str, sop_classes: list[str]
) -> TransferReport:
    wanted = list(dict.fromkeys(sop_classes)) or list(STORAGE_SOP_CLASSES)
    wanted = wanted[: MAX_REQUESTED_CONTEXTS - 1]
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet), *retrieve_storage_contexts(wanted)]
    roles = [build_role(uid, scp_role=True) for uid in wanted]
    storage = StorageSCP(archive, access=None)  # the sender is the peer we asked
    assoc = _associate(
        settings,
        peer,
        contexts=contexts,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, storage.handle_store)],
    )
    try:
        responses = assoc.send_c_get(_study_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet)
        return _final_counts(responses, peer)
    finally:
        if assoc.is_established:
            assoc.release()


def _receiving_listener(settings: Settings, archive: Archive) -> ThreadedAssociationServer | None:
    """A storage SCP on our DICOM port, unless one (a running ``tessera serve``) already listens."""
    ae = configured_ae(settings)
    ae.require_called_aet = True
    add_scp_contexts(ae)
    storage = StorageSCP(archive, PeerDirectory.from_settings(settings))
    try:
        return ae.start_server(
            (settings.host, settings.dicom_port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, storage.handle_store),
                (evt.EVT_CONN_OPEN, handle_connection_open),
            ],
        )
    except OSError:
        log.info("port %d is in use: assuming a running Tessera receives the move", settings.dicom_port)
        return None


def _retrieve_by_move(
    settings: Settings, archive: Archive, peer: DicomPeer, study_uid: str
) -> TransferReport:
    listener = _receiving_listener(settings, archive)
    try:
        assoc = _associate(
            settings, peer, contexts=[build_context(StudyRootQueryRetrieveInformationModelMove)]
        )
        try:
            responses = assoc.send_c_move(
                _study_identifier(study_uid), settings.ae_title, StudyRootQueryRetrieveInformationModelMove
            )
            return _final_counts(responses, peer)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        if listener is not None:
            listener.shutdown()
