"""Tessera as a DIMSE SCP, exercised by real peers: DCMTK's tools and pynetdicom as SCUs."""

from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import create_engine, func, select, text

from sample_data import radiology
from server.archive.archive import Archive
from server.archive.models import Instance
from server.archive.query import QueryLevel, QuerySpec, run_query
from server.config import DicomPeer, Settings
from server.context import ServerContext
from server.dimse.contexts import retrieve_storage_contexts
from server.dimse.service import DimseService, start_dimse

SCU = "MODALITY1"  # a known peer
MOVE_DESTINATION = "STORESCP"  # a known peer: DCMTK storescp
STRANGER = "STRANGER"  # not configured: its associations are rejected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Scp:
    settings: Settings
    archive: Archive
    service: DimseService
    storescp_port: int

    @property
    def port(self) -> int:
        return self.service.port

    def count(self) -> int:
        with self.archive.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def scp_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The index for this module's server: SQLite, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    admin_url = str(request.getfixturevalue("postgres_server"))
    name = f"tessera_dimse_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory, scp_database: str) -> Iterator[Scp]:
    data = tmp_path_factory.mktemp("dimse-scp")
    storescp_port = _free_port()
    settings = Settings(
        data_dir=data,
        database_url=scp_database,
        dicom_port=0,
        ae_title="TESSERA",
        dicom_peers=(
            DicomPeer(SCU, "127.0.0.1", _free_port()),
            DicomPeer(MOVE_DESTINATION, "127.0.0.1", storescp_port),
        ),
        dicom_dimse_timeout=20,
        dicom_network_timeout=20,
    )
    archive = Archive(settings)
    executor = ThreadPoolExecutor(2)
    service = start_dimse(ServerContext(settings, archive, executor))
    yield Scp(settings, archive, service, storescp_port)
    service.shutdown()
    executor.shutdown()
    archive.close()


@pytest.fixture(scope="module")
def stored(scp: Scp, varied_files: list[Path]) -> list[Path]:
    """The varied set, sent once by DCMTK's dcmsend as the known modality."""
    result = _dcmtk("dcmsend", "-dn", "-aet", SCU, "-aec", "TESSERA", "127.0.0.1", scp.port, *varied_files)
    assert result.returncode == 0, result.stderr
    assert scp.count() == len(varied_files)
    return varied_files


def _dcmtk(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _association(scp: Scp, calling: str, contexts: list, **kwargs: object):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.dimse_timeout = 20
    assoc = ae.associate("127.0.0.1", scp.port, contexts=contexts, ae_title="TESSERA", **kwargs)  # type: ignore[arg-type]
    assert assoc.is_established
    return assoc


def _echo_ok(scp: Scp) -> bool:
    assoc = _association(scp, SCU, [build_context(Verification)])
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, after its File Meta Information."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    (meta_length,) = struct.unpack("<I", data[140:144])
    return data[144 + meta_length :]


def _find(
    scp: Scp, identifier: Dataset, model: str = StudyRootQueryRetrieveInformationModelFind, calling: str = SCU
):
    assoc = _association(scp, calling, [build_context(model)])
    try:
        answers = list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()
    statuses = [int(status.Status) for status, _ in answers]
    return statuses, [found for status, found in answers if int(status.Status) == 0xFF00]


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# -- C-ECHO and C-STORE ------------------------------------------------------------------------


def _rejected(scp: Scp, calling: str, contexts: list) -> bool:  # type: ignore[type-arg]
    ae = AE(ae_title=calling)
    assoc = ae.associate("127.0.0.1", scp.port, contexts=contexts, ae_title="TESSERA")
    if assoc.is_established:
        assoc.release()
        return False
    return bool(assoc.is_rejected)


def test_unknown_calling_ae_is_rejected_at_association(scp: Scp) -> None:
    result = _dcmtk("echoscu", "-aet", STRANGER, "-aec", "TESSERA", "127.0.0.1", scp.port)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout, result.stderr
    assert _rejected(scp, STRANGER, [build_context(Verification)])
    assert _echo_ok(scp)  # known peers still associate


def test_association_to_another_called_ae_is_rejected(scp: Scp) -> None:
    result = _dcmtk("echoscu", "-aet", SCU, "-aec", "NOT-TESSERA", "127.0.0.1", scp.port)
    assert result.returncode != 0
    assert _echo_ok(scp)


def test_dcmsend_stores_every_instance_through_the_archive(scp: Scp, stored: list[Path]) -> None:
    for path in stored:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        found = scp.archive.stored_instances(source.StudyInstanceUID, sop_uid=source.SOPInstanceUID)
        assert len(found) == 1
        sent_as = source.file_meta.TransferSyntaxUID
        if found[0].transfer_syntax_uid == sent_as:
            # The data set is kept exactly as it came over the wire: no decode and re-encode.
            assert dataset_bytes(found[0].path) == dataset_bytes(path)
        else:  # dcmsend re-encodes implicit VR files as explicit VR when both are accepted
            assert {sent_as, found[0].transfer_syntax_uid} <= {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
        meta = pydicom.dcmread(found[0].path, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == SCU


def test_storescu_with_compressed_context(scp: Scp, stored: list[Path], tmp_path: Path) -> None:
    """storescu proposing exactly the file's JPEG 2000 syntax; a resend is an idempotent success."""
    jpeg2000 = next(p for p in stored if "02-CT" in str(p))
    result = _dcmtk("storescu", "-aet", SCU, "-aec", "TESSERA", "-xv", "127.0.0.1", scp.port, jpeg2000)
    assert result.returncode == 0, result.stderr
    assert scp.count() == len(stored)


def _stray_ct(accession: str) -> Dataset:
    """A CT of a patient outside the varied set, so rejection tests leave the queries alone."""
    patient = radiology.Patient("Stray^Test", "TES-9000")
    return radiology.ct_series(
        1, patient=patient, study=radiology.Study("20240101", accession_number=accession)
    )[0]


def _store(scp: Scp, ds: Dataset, calling: str = SCU) -> Dataset:
    assoc = _association(scp, calling, [build_context(ds.SOPClassUID, [ExplicitVRLittleEndian])])
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def test_unknown_calling_ae_may_not_store(scp: Scp, tmp_path: Path) -> None:
    before = scp.count()
    ds = _stray_ct("ACC-9001")
    assert _rejected(scp, STRANGER, [build_context(ds.SOPClassUID, [ExplicitVRLittleEndian])])
    result = _dcmtk(
        "storescu", "-aet", STRANGER, "-aec", "TESSERA", "127.0.0.1", scp.port, radiology.write(ds, tmp_path)
    )
    assert result.returncode != 0
    assert scp.count() == before
    assert _echo_ok(scp)


def test_duplicate_sop_instance_follows_the_archive_policy(scp: Scp) -> None:
    ds = _stray_ct("ACC-9002")
    assert int(_store(scp, ds).Status) == 0x0000
    count = scp.count()
    assert int(_store(scp, ds).Status) == 0x0000  # byte-identical: already present
    ds.PatientName = "Changed^Name"
    status = _store(scp, ds)
    assert int(status.Status) == 0x0111  # policy "reject", as STOW-RS answers
    assert status.ErrorComment
    assert scp.count() == count


def test_instance_stored_by_another_door_is_already_present(scp: Scp) -> None:
    """Same data set, different file meta (import/STOW vs C-STORE): a duplicate, not a conflict."""
    import io

    ds = _stray_ct("ACC-9003")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert scp.archive.ingest_bytes(buffer.getvalue()).ok
    count = scp.count()
    assert int(_store(scp, ds).Status) == 0x0000
    assert scp.count() == count


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_malformed_data_set_is_refused(scp: Scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw bytes that are not a data set: cannot understand, nothing stored, still serving."""
    before = scp.count()
    ds = _stray_ct("ACC-9003")
    path = radiology.write(ds, tmp_path)
    data = path.read_bytes()
    meta_end = len(data) - len(dataset_bytes(path))
    path.write_bytes(data[:meta_end] + b"\x08\x00\x16\x00UI\xff\x7fgarbage")  # length beyond the end
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    assoc = _association(scp, SCU, [build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert 0xC000 <= int(status.Status) <= 0xCFFF
    assert status.ErrorComment
    assert scp.count() == before
    assert _echo_ok(scp)


def test_data_set_not_matching_the_context_sop_class(
    scp: Scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CT data set sent on an MR Image Storage context: 0xA900."""
    before = scp.count()
    ds = _stray_ct("ACC-9004")
    path = radiology.write(ds, tmp_path)
    data = path.read_bytes()
    meta_end = len(data) - len(dataset_bytes(path))
    # The same length, so the meta stays valid; pynetdicom picks the context by this UID.
    head = data[:meta_end].replace(CTImageStorage.encode(), MRImageStorage.encode())
    path.write_bytes(head + data[meta_end:])
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = _association(scp, SCU, [build_context(MRImageStorage, [ExplicitVRLittleEndian])])
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert int(status.Status) == 0xA900
    assert CTImageStorage in status.ErrorComment
    assert scp.count() == before
    assert _echo_ok(scp)


def test_incomplete_instance_is_refused_by_the_archive(scp: Scp) -> None:
    ds = _stray_ct("ACC-9005")
    del ds.StudyInstanceUID
    status = _store(scp, ds)
    assert 0xC000 <= int(status.Status) <= 0xCFFF
    assert "StudyInstanceUID" in status.ErrorComment


# -- C-FIND --------------------------------------------------------------------------------


def test_findscu_finds_the_stored_study_like_qido(scp: Scp, stored: list[Path], tmp_path: Path) -> None:
    result = _dcmtk(
        "findscu", "-S", "-aet", SCU, "-aec", "TESSERA", "-X", "-od", tmp_path,
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=DOE*", "-k", "StudyDate=20250101-20251231",
        "-k", "StudyInstanceUID", "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances",
        "127.0.0.1", scp.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answers = [pydicom.dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    spec = QuerySpec(
        level=QueryLevel.STUDY, matches={"PatientName": "DOE*", "StudyDate": "20250101-20251231"}
    )
    with scp.archive.sessions() as session:
        qido = run_query(session, spec)  # the path QIDO-RS takes
    assert sorted(a.StudyInstanceUID for a in answers) == sorted(r.study_instance_uid for r in qido)
    assert len(answers) == 1
    (answer,) = answers
    assert answer.QueryRetrieveLevel == "STUDY"
    assert answer.ModalitiesInStudy == ["CT", "OT"]
    assert int(answer.NumberOfStudyRelatedInstances) == 16
    # Only the requested keys come back (plus what the response itself needs).
    assert {e.keyword for e in answer} <= {
        "QueryRetrieveLevel", "PatientName", "StudyDate", "StudyInstanceUID", "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances", "SpecificCharacterSet",
    }  # fmt: skip


def test_find_at_every_level_with_pynetdicom(scp: Scp, stored: list[Path]) -> None:
    ct = pydicom.dcmread(next(p for p in stored if "01-CT" in str(p)), stop_before_pixels=True)

    statuses, patients = _find(
        scp,
        _identifier("PATIENT", PatientID="TES-000?", PatientName=""),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert statuses[-1] == 0
    assert sorted(p.PatientID for p in patients) == ["TES-0001", "TES-0002", "TES-0003", "TES-0004"]
    assert "Müller^Anna" in {str(p.PatientName) for p in patients}

    _, series = _find(
        scp, _identifier("SERIES", StudyInstanceUID=ct.StudyInstanceUID, Modality="CT", SeriesNumber="")
    )
    assert sorted(int(s.SeriesNumber) for s in series) == [1, 2, 3]
    assert all(s.SeriesInstanceUID for s in series)

    _, images = _find(
        scp,
        _identifier(
            "IMAGE", SeriesInstanceUID=ct.SeriesInstanceUID, SOPInstanceUID="", InstanceNumber="2\\4"
        ),
    )
    assert sorted(int(i.InstanceNumber) for i in images) == [2, 4]

    statuses, _ = _find(scp, _identifier("PATIENT", PatientID=""))  # no PATIENT level in Study Root
    assert statuses == [0xA900]


def test_unknown_calling_ae_may_not_find(scp: Scp, stored: list[Path]) -> None:
    assert _rejected(scp, STRANGER, [build_context(StudyRootQueryRetrieveInformationModelFind)])
    assert _echo_ok(scp)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_bad_matching_value_is_refused(scp: Scp) -> None:
    statuses, _ = _find(scp, _identifier("STUDY", StudyDate="2025-13"))
    assert len(statuses) == 1 and 0xC000 <= statuses[0] <= 0xCFFF


# -- C-GET ---------------------------------------------------------------------------------


def test_c_get_returns_identical_bytes(scp: Scp, stored: list[Path]) -> None:
    study_uid = pydicom.dcmread(stored[0], stop_before_pixels=True).StudyInstanceUID
    expected = {i.sop_instance_uid: dataset_bytes(i.path) for i in scp.archive.stored_instances(study_uid)}
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.encoded_dataset(include_meta=False)
        return 0x0000

    sop_classes = sorted({i.sop_class_uid for i in scp.archive.stored_instances(study_uid)})
    contexts = [
        build_context(StudyRootQueryRetrieveInformationModelGet),
        *retrieve_storage_contexts(sop_classes),
    ]
    assoc = _association(
        scp, SCU, contexts,
        ext_neg=[build_role(uid, scp_role=True) for uid in sop_classes],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    try:
        responses = list(
            assoc.send_c_get(
                _identifier("STUDY", StudyInstanceUID=study_uid), StudyRootQueryRetrieveInformationModelGet
            )
        )
    finally:
        assoc.release()
    final = responses[-1][0]
    assert int(final.Status) == 0
    assert int(final.NumberOfCompletedSuboperations) == len(expected) == 16
    assert received.keys() == expected.keys()
    for uid, data in expected.items():
        assert hashlib.sha256(received[uid]).digest() == hashlib.sha256(data).digest(), uid


def test_getscu_retrieves_a_series(scp: Scp, stored: list[Path], tmp_path: Path) -> None:
    mr = pydicom.dcmread(next(p for p in stored if "01-MR" in str(p)), stop_before_pixels=True)
    result = _dcmtk(
        "getscu", "-S", "-aet", SCU, "-aec", "TESSERA", "-od", tmp_path,
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={mr.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={mr.SeriesInstanceUID}", "127.0.0.1", scp.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = sorted(pydicom.dcmread(p).SOPInstanceUID for p in tmp_path.iterdir())
    assert len(got) == 3
    assert got == sorted(
        i.sop_instance_uid for i in scp.archive.stored_instances(mr.StudyInstanceUID, mr.SeriesInstanceUID)
    )


def test_unknown_calling_ae_may_not_get(scp: Scp, stored: list[Path]) -> None:
    assert _rejected(
        scp,
        STRANGER,
        [build_context(StudyRootQueryRetrieveInformationModelGet), build_context(CTImageStorage)],
    )


# -- C-MOVE --------------------------------------------------------------------------------


@pytest.fixture
def storescp(scp: Scp, tmp_path: Path) -> Iterator[Path]:
    """DCMTK's storescp listening as the configured move destination."""
    out = tmp_path / "received"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "-aet", MOVE_DESTINATION, "+xa", "-od", str(out), str(scp.storescp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", scp.storescp_port)) == 0:
                break
        time.sleep(0.05)
    yield out
    process.terminate()
    process.wait(timeout=10)


def test_movescu_moves_a_study_to_storescp(scp: Scp, stored: list[Path], storescp: Path) -> None:
    mr = pydicom.dcmread(next(p for p in stored if "01-MR" in str(p)), stop_before_pixels=True)
    result = _dcmtk(
        "movescu", "-S", "-aet", SCU, "-aec", "TESSERA", "-aem", MOVE_DESTINATION,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={mr.StudyInstanceUID}",
        "127.0.0.1", scp.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = scp.archive.stored_instances(mr.StudyInstanceUID)
    received = {pydicom.dcmread(p).SOPInstanceUID for p in storescp.iterdir()}
    assert received == {i.sop_instance_uid for i in expected}
    assert len(received) == 6


def _move(scp: Scp, identifier: Dataset, destination: str, calling: str = SCU) -> list[Dataset]:
    assoc = _association(scp, calling, [build_context(StudyRootQueryRetrieveInformationModelMove)])
    try:
        return [
            status
            for status, _ in assoc.send_c_move(
                identifier, destination, StudyRootQueryRetrieveInformationModelMove
            )
        ]
    finally:
        assoc.release()


def test_move_to_unknown_destination_is_refused(scp: Scp, stored: list[Path]) -> None:
    study_uid = pydicom.dcmread(stored[0], stop_before_pixels=True).StudyInstanceUID
    statuses = _move(scp, _identifier("STUDY", StudyInstanceUID=study_uid), "NOWHERE")
    assert [int(s.Status) for s in statuses] == [0xA801]
    assert _echo_ok(scp)


def test_unknown_calling_ae_may_not_move(scp: Scp, stored: list[Path], storescp: Path) -> None:
    study_uid = pydicom.dcmread(stored[0], stop_before_pixels=True).StudyInstanceUID
    assert study_uid
    assert _rejected(scp, STRANGER, [build_context(StudyRootQueryRetrieveInformationModelMove)])
    assert list(storescp.iterdir()) == []
    assert _echo_ok(scp)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_move_without_unique_key_is_refused(scp: Scp, stored: list[Path], storescp: Path) -> None:
    statuses = _move(scp, _identifier("SERIES", StudyInstanceUID="", SeriesInstanceUID="*"), MOVE_DESTINATION)
    assert int(statuses[-1].Status) == 0xA900
    assert list(storescp.iterdir()) == []


def test_native_instances_are_converted_to_what_the_destination_accepts(
    scp: Scp, stored: list[Path], tmp_path: Path
) -> None:
    """An explicit VR instance retrieved by a peer that only accepts implicit VR."""
    ct = pydicom.dcmread(next(p for p in stored if "01-CT" in str(p)), stop_before_pixels=True)
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.context.transfer_syntax)
        return 0x0000

    assoc = _association(
        scp, SCU,
        [build_context(StudyRootQueryRetrieveInformationModelGet), build_context(CTImageStorage, [ImplicitVRLittleEndian])],
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    try:
        identifier = _identifier(
            "IMAGE", StudyInstanceUID=ct.StudyInstanceUID, SOPInstanceUID=ct.SOPInstanceUID
        )
        responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert int(responses[-1][0].Status) == 0
    assert received == [ImplicitVRLittleEndian]


def test_pdu_over_the_negotiated_maximum_aborts_the_association(
    scp: Scp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer ignoring our Maximum Length is cut off; nothing it sent is stored."""
    settings = scp.settings.with_overrides(dicom_max_pdu=16384, dicom_port=0)
    with ThreadPoolExecutor(1) as executor:
        service = start_dimse(ServerContext(settings, scp.archive, executor))
        try:
            before = scp.count()
            ds = _stray_ct("ACC-9100")  # 32 KiB of pixels: needs more than one 16 KiB PDU
            ae = AE(ae_title=SCU)
            assoc = ae.associate(
                "127.0.0.1", service.port, contexts=[build_context(CTImageStorage, [ExplicitVRLittleEndian])],
                ae_title="TESSERA",
            )  # fmt: skip
            assert assoc.is_established and assoc.acceptor.maximum_length == 16384
            # Misbehave: ignore the acceptor's Maximum Length and send the data set in one PDU.
            monkeypatch.setattr(type(assoc.acceptor), "maximum_length", property(lambda user: 0))
            status = assoc.send_c_store(ds)
            assert not status or "Status" not in status
            deadline = time.monotonic() + 5
            while assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not assoc.is_established
            assert scp.count() == before
        finally:
            service.shutdown()
