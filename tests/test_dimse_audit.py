"""DIMSE operations land in the same audit trail as HTTP: who (AE title, address), what, outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from sample_data.radiology import ct_series
from server.config import DicomPeer
from server.security.audit import INSTANCES_TRANSFERRED, QUERY, SECURITY_ALERT, AuditFilter
from server.security.service import security_of
from tests.conftest import free_port


def _associate(server: Any, calling: str, contexts: list[Any], roles: list[Any] | None = None) -> Any:
    ae = AE(ae_title=calling)
    assoc = ae.associate(
        "127.0.0.1", server.dicom_port, contexts=contexts, ae_title="TESSERA", ext_neg=roles or []
    )
    assert assoc.is_established
    return assoc


def test_store_find_and_refusals_are_audited(tessera_server_factory: Callable[..., Any]) -> None:
    server = tessera_server_factory(
        dicom_enabled=True, dicom_port=free_port(), dicom_peers=(DicomPeer("MODALITY1", "127.0.0.1", 104),)
    )
    slices = ct_series(3)
    study = str(slices[0].StudyInstanceUID)
    assoc = _associate(server, "MODALITY1", [build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    try:
        assert all(int(assoc.send_c_store(ds).Status) == 0 for ds in slices)
    finally:
        assoc.release()
    stranger = AE(ae_title="STRANGER").associate(
        "127.0.0.1",
        server.dicom_port,
        contexts=[build_context(CTImageStorage, [ExplicitVRLittleEndian])],
        ae_title="TESSERA",
    )
    assert stranger.is_rejected  # an unknown calling AE title does not get an association
    from pydicom import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    assoc = _associate(server, "MODALITY1", [build_context(StudyRootQueryRetrieveInformationModelFind)])
    try:
        assert (
            len(
                [
                    s
                    for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                    if s and s.Status == 0xFF00
                ]
            )
            == 1
        )
    finally:
        assoc.release()

    audit = security_of(server.ctx).audit
    stored, _ = audit.query(AuditFilter(event_id=INSTANCES_TRANSFERRED, study_uid=study))
    assert len(stored) == 1, "one record per association and study, not per instance"
    assert stored[0]["ae_title"] == "MODALITY1" and stored[0]["client_address"] == "127.0.0.1"
    assert stored[0]["event_type"] == "C-STORE" and stored[0]["outcome"] == 0
    alerts, _ = audit.query(AuditFilter(event_id=SECURITY_ALERT))
    assert any(a["ae_title"] == "STRANGER" and a["event_type"] == "A-ASSOCIATE" for a in alerts)
    queries, _ = audit.query(AuditFilter(event_id=QUERY, study_uid=study))
    assert (
        len(queries) == 1 and queries[0]["event_type"] == "C-FIND" and queries[0]["objects"]["matches"] == 1
    )
    assert audit.verify().ok
