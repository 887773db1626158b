"""DIMSE through the same roles and study groups as HTTP: calling AE titles act as accounts.

Real peers: pynetdicom SCUs and DCMTK's echoscu; a pynetdicom storage SCP as C-MOVE
destination. Unknown AE titles are rejected at association; a viewer's AE may query and
retrieve but not store; an auditor's may do nothing with patient data; a clinician's AE
limited to a study group finds, retrieves and stores only within it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from argon2 import PasswordHasher
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from server.config import DicomPeer
from server.dimse.access import ACCOUNT_CACHE_SECONDS
from server.security import accounts as accounts_module
from server.security.audit import SECURITY_ALERT, AuditFilter
from server.security.policy import Role
from server.security.service import security_of
from server.serve import BackgroundServer
from tests.conftest import free_port
from tests.test_security_groups import instance, store

PASSWORD = "correct horse battery staple"
pytestmark = pytest.mark.filterwarnings("ignore:The value length")


@pytest.fixture(autouse=True)
def quick_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        accounts_module, "_hasher", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    )


@dataclass
class Destination:
    """A C-MOVE destination: a pynetdicom storage SCP that keeps what it receives."""

    port: int
    received: list[str]


@pytest.fixture
def destination() -> Iterator[Destination]:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.StudyInstanceUID))
        return 0x0000

    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield Destination(port, received)
    server.shutdown()


@dataclass
class Site:
    server: BackgroundServer
    north: str  # study of group "north-ct"
    breast: str  # study outside it

    @property
    def port(self) -> int:
        return self.server.dicom_port


@pytest.fixture
def site(
    tessera_server_factory: Callable[..., BackgroundServer], db_url: str, destination: Destination
) -> Site:
    server = tessera_server_factory(
        dicom_enabled=True,
        dicom_port=free_port(),
        auth_enabled=True,
        dicom_peers=(DicomPeer("DEST", "127.0.0.1", destination.port),),
    )
    north = store(server, instance("CT", "North Hospital", "Radiology")).study
    breast = store(server, instance("CT", "South Clinic", "Breast imaging")).study
    service = security_of(server.ctx)
    service.groups.save_group("north-ct", {"modalities": ["CT"], "institutions": ["North Hospital"]})
    for name, role, ae_title in (
        ("reading-room", Role.VIEWER, "VIEWER_WS"),
        ("north-pacs", Role.CLINICIAN, "NORTH_PACS"),
        ("officer", Role.AUDITOR, "AUDIT_WS"),
    ):
        service.accounts.add_user(name, role, PASSWORD)
        service.accounts.map_ae_title(ae_title, name)
    service.groups.set_user_groups("north-pacs", ["north-ct"])
    return Site(server, north, breast)


def associate(site: Site, calling: str, contexts: list[Any], **kwargs: Any) -> Any:
    ae = AE(ae_title=calling)
    ae.dimse_timeout = 20
    return ae.associate("127.0.0.1", site.port, contexts=contexts, ae_title="TESSERA", **kwargs)


def find_studies(site: Site, calling: str, **keys: str) -> tuple[list[int], set[str]]:
    assoc = associate(site, calling, [build_context(StudyRootQueryRetrieveInformationModelFind)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = keys.get("StudyInstanceUID", "")
    try:
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    statuses = [int(s.Status) for s, _ in answers]
    return statuses, {str(i.StudyInstanceUID) for s, i in answers if int(s.Status) == 0xFF00}


def c_store(site: Site, calling: str, data: bytes) -> Dataset:
    from io import BytesIO

    from pydicom import dcmread

    ds = dcmread(BytesIO(data))
    assoc = associate(site, calling, [build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def c_get(site: Site, calling: str, study: str) -> tuple[int, list[str]]:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = associate(
        site,
        calling,
        [build_context(StudyRootQueryRetrieveInformationModelGet), build_context(CTImageStorage)],
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        answers = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    return int(answers[-1][0].Status), received


def c_move(site: Site, calling: str, study: str) -> int:
    assoc = associate(site, calling, [build_context(StudyRootQueryRetrieveInformationModelMove)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        answers = list(assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    return int(answers[-1][0].Status)


def echoscu(site: Site, calling: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "TESSERA", "127.0.0.1", str(site.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unknown_ae_rejected_and_accounts_take_effect_without_restart(site: Site) -> None:
    assert echoscu(site, "VIEWER_WS").returncode == 0
    refused = echoscu(site, "NEWCOMER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert associate(site, "NEWCOMER", [build_context(Verification)]).is_rejected
    service = security_of(site.server.ctx)
    service.accounts.add_user("newcomer", Role.VIEWER, PASSWORD)
    service.accounts.map_ae_title("NEWCOMER", "newcomer")
    assert echoscu(site, "NEWCOMER").returncode == 0
    service.accounts.set_disabled("newcomer", True)
    assert echoscu(site, "NEWCOMER").returncode != 0  # a disabled account's AE is unknown again
    deadline = time.monotonic() + 10  # recorded by the SCP thread just after the rejection leaves
    while True:
        alerts, _ = service.audit.query(AuditFilter(event_id=SECURITY_ALERT), limit=100)
        rejected = [a for a in alerts if a["ae_title"] == "NEWCOMER" and a["event_type"] == "A-ASSOCIATE"]
        if len(rejected) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rejected) == 3 and all("not known" in a["outcome_detail"] for a in rejected)


def test_roles_decide_the_operations(site: Site, destination: Destination) -> None:
    statuses, found = find_studies(site, "VIEWER_WS")
    assert found == {site.north, site.breast} and statuses[-1] == 0
    status = c_store(site, "VIEWER_WS", instance("CT", "North Hospital", "Radiology"))
    assert int(status.Status) == 0x0124 and "viewer" in status.ErrorComment
    status_code, received = c_get(site, "VIEWER_WS", site.breast)
    assert status_code == 0 and len(received) == 1
    assert c_move(site, "VIEWER_WS", site.breast) == 0
    assert destination.received == [site.breast]
    statuses, found = find_studies(site, "AUDIT_WS")
    assert statuses == [0x0124] and found == set()
    echo = associate(site, "AUDIT_WS", [build_context(Verification)])
    assert echo.is_established and int(echo.send_c_echo().Status) == 0
    echo.release()


def test_study_groups_limit_an_ae(site: Site, destination: Destination) -> None:
    _, found = find_studies(site, "NORTH_PACS")
    assert found == {site.north}
    assert find_studies(site, "NORTH_PACS", StudyInstanceUID=site.breast)[1] == set()
    status, received = c_get(site, "NORTH_PACS", site.breast)
    assert received == []
    status, received = c_get(site, "NORTH_PACS", site.north)
    assert status == 0 and len(received) == 1
    c_move(site, "NORTH_PACS", site.breast)
    assert destination.received == []
    assert c_move(site, "NORTH_PACS", site.north) == 0
    assert destination.received == [site.north]
    assert int(c_store(site, "NORTH_PACS", instance("CT", "North Hospital", "ER")).Status) == 0
    refused = c_store(site, "NORTH_PACS", instance("MG", "South Clinic", "Breast imaging"))
    assert int(refused.Status) == 0x0124 and "study groups" in refused.ErrorComment
    into_other = c_store(site, "NORTH_PACS", instance("CT", "North Hospital", "ER", study=site.breast))
    assert int(into_other.Status) == 0x0124
    # Lifting the limit is effective once the AE's short account cache has expired.
    security_of(site.server.ctx).groups.set_user_groups("north-pacs", [])
    time.sleep(ACCOUNT_CACHE_SECONDS + 0.5)
    assert find_studies(site, "NORTH_PACS")[1] >= {site.north, site.breast}


def test_configured_peers_keep_working(site: Site) -> None:
    """TESSERA_DICOM_PEERS still lets a listed AE associate (full access, as before accounts)."""
    _, found = find_studies(site, "DEST")
    assert found >= {site.north, site.breast}
