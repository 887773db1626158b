"""Tessera as an SCU (``tessera send`` / ``tessera retrieve``) against a second Tessera and pynetdicom,
and a study's round trip through both doors: C-STORE in, QIDO-RS and C-FIND, WADO-RS and C-GET out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_context, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from server.cli import main
from server.config import DicomPeer
from server.dimse.contexts import STORAGE_TRANSFER_SYNTAXES, retrieve_storage_contexts
from server.serve import BackgroundServer
from tests.conftest import free_port
from tests.test_dimse_scp import dataset_bytes

Factory = Callable[..., BackgroundServer]


def _study(files: list[Path], folder: str) -> tuple[str, list[Path]]:
    chosen = [p for p in files if f"/{folder}/" in str(p)]
    return str(pydicom.dcmread(chosen[0], stop_before_pixels=True).StudyInstanceUID), chosen


def _peers(**ports: int) -> str:
    return ",".join(f"{ae}@127.0.0.1:{port}" for ae, port in ports.items())


def _cli(monkeypatch: pytest.MonkeyPatch, data_dir: Path, ae: str, port: int, peers: str, *args: str) -> int:
    """Run ``tessera`` as an operator would: deployment in the environment, command on the line."""
    monkeypatch.setenv("TESSERA_AE_TITLE", ae)
    monkeypatch.setenv("TESSERA_DICOM_PORT", str(port))
    monkeypatch.setenv("TESSERA_DICOM_PEERS", peers)
    return main([*args, "--data-dir", str(data_dir)])


@pytest.fixture
def pair(tessera_server_factory: Factory) -> tuple[BackgroundServer, BackgroundServer, int]:
    """Two Tessera servers that know each other, and a port for a third, not running, archive."""
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    a = tessera_server_factory(
        dicom_enabled=True, ae_title="ARCHIVE_A", dicom_port=port_a,
        dicom_peers=(DicomPeer("ARCHIVE_B", "127.0.0.1", port_b),),
    )  # fmt: skip
    b = tessera_server_factory(
        dicom_enabled=True, ae_title="ARCHIVE_B", dicom_port=port_b,
        dicom_peers=(
            DicomPeer("ARCHIVE_A", "127.0.0.1", port_a),
            DicomPeer("ARCHIVE_C", "127.0.0.1", port_c),
        ),
    )  # fmt: skip
    return a, b, port_c


def test_send_a_study_to_another_tessera(
    pair: tuple[BackgroundServer, BackgroundServer, int],
    varied_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b, _ = pair
    study_uid, files = _study(varied_files, "ACC-1001")
    for path in files:
        assert a.ctx.archive.ingest_path(path).ok
    peers = _peers(ARCHIVE_B=b.dicom_port)
    code = _cli(
        monkeypatch,
        a.settings.data_dir,
        "ARCHIVE_A",
        a.dicom_port,
        peers,
        "send",
        "--peer",
        "ARCHIVE_B",
        "--study",
        study_uid,
    )
    assert code == 0
    assert "16 completed" in capsys.readouterr().out
    sent = {i.sop_instance_uid: dataset_bytes(i.path) for i in a.ctx.archive.stored_instances(study_uid)}
    received = {i.sop_instance_uid: dataset_bytes(i.path) for i in b.ctx.archive.stored_instances(study_uid)}
    assert received == sent  # every transfer syntax (explicit, JPEG 2000, RLE) arrives unchanged


def test_send_one_series_and_refuse_unknown_peer(
    pair: tuple[BackgroundServer, BackgroundServer, int],
    varied_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, _ = pair
    study_uid, files = _study(varied_files, "ACC-1002")
    for path in files:
        a.ctx.archive.ingest_path(path)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    peers = _peers(ARCHIVE_B=b.dicom_port)
    args = ("send", "--peer", "ARCHIVE_B", "--series", series_uid)
    assert _cli(monkeypatch, a.settings.data_dir, "ARCHIVE_A", a.dicom_port, peers, *args) == 0
    assert [i.series_instance_uid for i in b.ctx.archive.stored_instances(study_uid)] == [series_uid] * 3
    args = ("send", "--peer", "NOBODY", "--study", study_uid)
    assert _cli(monkeypatch, a.settings.data_dir, "ARCHIVE_A", a.dicom_port, peers, *args) == 2


@pytest.mark.parametrize("method", ["get", "move"])
def test_retrieve_a_study_from_another_tessera(
    pair: tuple[BackgroundServer, BackgroundServer, int],
    varied_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    """C-FIND at the peer, then C-GET, or C-MOVE to the running archive's listener."""
    a, b, _ = pair
    study_uid, files = _study(varied_files, "ACC-1001")
    for path in files:
        assert b.ctx.archive.ingest_path(path).ok
    peers = _peers(ARCHIVE_B=b.dicom_port)
    args = ("retrieve", "--peer", "ARCHIVE_B", "--study", study_uid, "--method", method)
    assert _cli(monkeypatch, a.settings.data_dir, "ARCHIVE_A", a.dicom_port, peers, *args) == 0
    held = {i.sop_instance_uid: dataset_bytes(i.path) for i in b.ctx.archive.stored_instances(study_uid)}
    retrieved = a.ctx.archive.stored_instances(study_uid)
    assert {i.sop_instance_uid: dataset_bytes(i.path) for i in retrieved} == held
    senders = {
        pydicom.dcmread(i.path, stop_before_pixels=True).file_meta.SourceApplicationEntityTitle
        for i in retrieved
    }
    assert senders == {"ARCHIVE_B"}


def test_retrieve_by_move_without_a_running_server(
    pair: tuple[BackgroundServer, BackgroundServer, int],
    varied_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``tessera retrieve`` on an archive that is not serving listens for the move itself."""
    _, b, port_c = pair
    study_uid, files = _study(varied_files, "ACC-1004")
    for path in files:
        b.ctx.archive.ingest_path(path)
    peers = _peers(ARCHIVE_B=b.dicom_port)
    data_c = tmp_path / "archive-c"
    args = ("retrieve", "--peer", "ARCHIVE_B", "--study", study_uid)
    assert _cli(monkeypatch, data_c, "ARCHIVE_C", port_c, peers, *args) == 0
    assert "2 completed" in capsys.readouterr().out
    # Unknown at the peer: a clear failure, nothing stored.
    args = ("retrieve", "--peer", "ARCHIVE_B", "--study", "1.2.3.4.5")
    assert _cli(monkeypatch, data_c, "ARCHIVE_C", port_c, peers, *args) == 1
    assert "has no study" in capsys.readouterr().err


@pytest.fixture
def pynetdicom_scp() -> Iterator[tuple[int, dict[str, bytes]]]:
    """A plain pynetdicom storage SCP recording what it receives."""
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.encoded_dataset(include_meta=False)
        return 0x0000

    ae = AE(ae_title="WORKSTATION")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(STORAGE_TRANSFER_SYNTAXES))
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield port, received
    server.shutdown()


def test_send_to_a_pynetdicom_scp(
    tessera_server_factory: Factory,
    pynetdicom_scp: tuple[int, dict[str, bytes]],
    varied_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, received = pynetdicom_scp
    a = tessera_server_factory()
    study_uid, files = _study(varied_files, "ACC-1004")
    for path in files:
        a.ctx.archive.ingest_path(path)
    peers = _peers(WORKSTATION=port)
    args = ("send", "--peer", "WORKSTATION", "--study", study_uid)
    assert _cli(monkeypatch, a.settings.data_dir, "TESSERA", free_port(), peers, *args) == 0
    assert received == {
        i.sop_instance_uid: dataset_bytes(i.path) for i in a.ctx.archive.stored_instances(study_uid)
    }


def test_round_trip_through_dimse_and_dicomweb(
    tessera_server_factory: Factory, db_url: str, varied_files: list[Path]
) -> None:
    """C-STORE in; found by QIDO-RS and C-FIND alike; WADO-RS and C-GET return the same bytes."""
    server = tessera_server_factory(
        dicom_enabled=True, dicom_peers=(DicomPeer("MODALITY1", "127.0.0.1", 104),)
    )
    study_uid, files = _study(varied_files, "ACC-1001")
    ae = AE(ae_title="MODALITY1")
    contexts = [
        build_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in map(pydicom.dcmread, files)
    ]
    assoc = ae.associate("127.0.0.1", server.dicom_port, contexts=contexts, ae_title=server.settings.ae_title)
    assert assoc.is_established
    try:
        assert all(int(assoc.send_c_store(path).Status) == 0 for path in files)
    finally:
        assoc.release()

    client = DICOMwebClient(server.url + "/dicom-web")
    qido = client.search_for_series(study_uid, search_filters={"Modality": "CT"})
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.Modality = "CT"
    identifier.SeriesInstanceUID = ""
    contexts = [
        build_context(StudyRootQueryRetrieveInformationModelFind),
        build_context(StudyRootQueryRetrieveInformationModelGet),
        *retrieve_storage_contexts(
            {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in files}
        ),
    ]
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.encoded_dataset(include_meta=False)
        return 0x0000

    roles = [build_role(cx.abstract_syntax, scp_role=True) for cx in contexts[2:]]
    assoc = ae.associate(
        "127.0.0.1", server.dicom_port, contexts=contexts, ae_title=server.settings.ae_title,
        ext_neg=list({r.sop_class_uid: r for r in roles}.values()), evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    try:
        found = [
            ds
            for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
            if ds
        ]
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        final = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))[-1][0]
    finally:
        assoc.release()
    assert sorted(ds.SeriesInstanceUID for ds in found) == sorted(s["0020000E"]["Value"][0] for s in qido)
    assert len(found) == 3
    assert int(final.Status) == 0 and len(received) == len(files)
    for stored in server.ctx.archive.stored_instances(study_uid):
        response = requests.get(
            f"{server.url}/dicom-web/studies/{study_uid}/series/{stored.series_instance_uid}"
            f"/instances/{stored.sop_instance_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=10,
        )
        assert response.status_code == 200
        blob = stored.path.read_bytes()
        assert blob in response.content  # WADO-RS: the stored file, byte for byte
        assert received[stored.sop_instance_uid] == dataset_bytes(stored.path)  # C-GET: the same data set
    originals = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p) for p in files
    }
    assert received == originals  # and both are what the modality sent
