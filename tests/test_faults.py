"""Durability under faults: SIGKILL during ingest, a full disk, a PostgreSQL restart under load.

Each test drives a real server through its standard doors (STOW-RS over HTTP, C-STORE with
pynetdicom) and checks what a hospital needs afterwards: nothing acknowledged is lost, nothing
half-written is left, and service resumes by itself when the fault is gone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from sample_data.radiology import Patient, Study, ct_series
from server.archive.archive import Archive
from server.cli import main as cli_main
from server.security.audit import INSTANCES_ACCESSED, INSTANCES_TRANSFERRED, QUERY
from server.serve import BackgroundServer
from tests.conftest import free_port, make_settings

ROOT = Path(__file__).resolve().parents[1]
OUT_OF_RESOURCES = 0xA700
RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# -- instances ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    sop: str
    series: str
    study: str
    data: bytes  # the Part 10 file as sent (C-STORE sends its data set)


class InstanceMaker:
    """New CT instances (new SOP Instance UIDs, one study per maker) from one generated slice."""

    def __init__(self, size: int = 64) -> None:
        self.base = ct_series(
            1,
            patient=Patient(id=f"FAULT-{uuid.uuid4().hex[:8]}"),
            study=Study(accession_number=uuid.uuid4().hex[:12]),
            size=size,
        )[0]
        self.lock = threading.Lock()
        self.count = 0

    def make(self) -> Sent:
        with self.lock:
            self.count += 1
            ds = self.base
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = self.count
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            return Sent(
                str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), buffer.getvalue()
            )


def dataset_part(part10: bytes) -> bytes:
    """The encoded data set after the File Meta Information (which C-STORE rewrites)."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL, explicit VR
    return part10[144 + group_length :]


def stow(url: str, items: list[Sent], timeout: float = 10) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + item.data + b"\r\n"
            for item in items
        )
        + f"--{boundary}--\r\n".encode()
    )
    return requests.post(
        url + "/dicom-web/studies",
        data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=timeout,
    )


def stored_sops(response: requests.Response) -> set[str]:
    referenced = response.json().get("00081199", {}).get("Value", [])
    return {item["00081155"]["Value"][0] for item in referenced}


def retrieve(url: str, item: Sent) -> bytes | None:
    """The stored file through WADO-RS, or None when the archive does not have it."""
    response = requests.get(
        f"{url}/dicom-web/studies/{item.study}/series/{item.series}/instances/{item.sop}",
        headers={"Accept": RETRIEVE_ACCEPT},
        timeout=30,
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    boundary = response.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
    parts = response.content.split(b"--" + boundary)
    assert len(parts) == 3, "one instance expected"
    return parts[1].split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


def c_store_ae() -> AE:
    ae = AE(ae_title="FAULTS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


# -- a real `tessera serve` --------------------------------------------------------------------


class ServeProcess:
    """`tessera serve` (one process, HTTP and DICOM) that the test may kill -9."""

    def __init__(self, data_dir: Path, database_url: str, log: Path) -> None:
        self.data_dir, self.database_url, self.log_path = data_dir, database_url, log
        self.env = {
            **os.environ,
            "TESSERA_DATA_DIR": str(data_dir),
            "TESSERA_DATABASE_URL": database_url,
            "TESSERA_PROCESSES": "1",
            "TESSERA_DICOM_ENABLED": "true",
            "TESSERA_DICOM_ALLOW_UNKNOWN": "true",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port, self.dicom_port = free_port(), free_port()
        self.env.update(TESSERA_PORT=str(self.port), TESSERA_DICOM_PORT=str(self.dicom_port))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve"], cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if requests.get(self.url + "/api/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def reconcile(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        """`tessera reconcile` beside the live server (run in this process: a CLI start costs seconds)."""
        capsys.readouterr()
        status = cli_main(
            ["reconcile", "--data-dir", str(self.data_dir), "--database-url", self.database_url]
        )
        return status, capsys.readouterr().out


@dataclass
class Load:
    """What the clients sent and what the server acknowledged, across rounds."""

    attempted: dict[str, Sent] = field(default_factory=dict)
    acknowledged: dict[str, Sent] = field(default_factory=dict)
    door: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tried(self, items: list[Sent], door: str) -> None:
        with self.lock:
            for item in items:
                self.attempted[item.sop] = item
                self.door[item.sop] = door

    def acked(self, items: list[Sent]) -> None:
        with self.lock:
            for item in items:
                self.acknowledged[item.sop] = item


def stow_loop(server: ServeProcess, maker: InstanceMaker, load: Load, stop: threading.Event) -> None:
    while not stop.is_set():
        items = [maker.make() for _ in range(random.randint(1, 4))]
        load.tried(items, "stow")
        try:
            response = stow(server.url, items)
        except requests.RequestException:
            return  # the server is gone
        assert response.status_code == 200, response.text
        ok = stored_sops(response)
        load.acked([i for i in items if i.sop in ok])


def c_store_loop(server: ServeProcess, maker: InstanceMaker, load: Load, stop: threading.Event) -> None:
    ae = c_store_ae()
    while not stop.is_set():
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="TESSERA")
        if not assoc.is_established:
            return
        try:
            while not stop.is_set() and assoc.is_established:
                item = maker.make()
                load.tried([item], "c-store")
                status = assoc.send_c_store(dcmread(io.BytesIO(item.data)))
                if status and status.Status == 0x0000:
                    load.acked([item])
                elif not status:
                    return  # association aborted: the server is gone
                else:
                    raise AssertionError(f"C-STORE refused: 0x{status.Status:04X}")
        finally:
            if assoc.is_established:
                assoc.release()


def check_stored_as_sent(url: str, item: Sent, door: str) -> bool:
    """True when the instance is there with the bytes that were sent; False when absent."""
    got = retrieve(url, item)
    if got is None:
        return False
    if door == "stow":
        assert got == item.data, f"{item.sop} stored with other bytes"
    else:  # C-STORE: the data set as sent, under the File Meta Information the SCP writes
        assert dataset_part(got) == dataset_part(item.data), f"{item.sop} stored with other bytes"
    return True


def check_store_clean(data_dir: Path) -> None:
    """No temp file left; every blob is whole (its name is the SHA-256 of its bytes)."""
    assert not list((data_dir / "tmp").glob("*")), "temp files left behind"
    for blob in (data_dir / "blobs").glob("??/*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, f"half-written blob {blob}"


# -- 1. SIGKILL during ingest ----------------------------------------------------------------------


def test_sigkill_during_ingest_loses_nothing_acknowledged(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rounds = int(os.environ.get("TESSERA_FAULT_ROUNDS", "4"))
    seed = int(os.environ.get("TESSERA_FAULT_SEED", time.time_ns() % 1_000_000))
    with capsys.disabled():
        print(f"TESSERA_FAULT_SEED={seed}")
    random.seed(seed)
    server = ServeProcess(tmp_path / "data", db_url, tmp_path / "serve.log")
    maker = InstanceMaker()
    load = Load()
    checked_unacknowledged: dict[str, bool] = {}
    try:
        server.start()
        for round_number in range(rounds):
            stop = threading.Event()
            with ThreadPoolExecutor(3) as pool:
                futures = [
                    pool.submit(stow_loop, server, maker, load, stop),
                    pool.submit(stow_loop, server, maker, load, stop),
                    pool.submit(c_store_loop, server, maker, load, stop),
                ]
                time.sleep(random.uniform(0.3, 2.5))
                server.kill9()  # at a random moment of the ingest
                stop.set()
                for future in futures:
                    future.result(timeout=60)
            server.start()  # reconciles at start-up: temp files gone, complete blobs indexed
            for sop, item in list(load.acknowledged.items()):
                assert check_stored_as_sent(server.url, item, load.door[sop]), f"acknowledged {sop} lost"
            for sop, item in load.attempted.items():
                if sop not in load.acknowledged and sop not in checked_unacknowledged:
                    checked_unacknowledged[sop] = check_stored_as_sent(server.url, item, load.door[sop])
            check_store_clean(server.data_dir)
            status, report = server.reconcile(capsys)
            assert status == 0 and "0 missing files, 0 unindexed files" in report, report
            with capsys.disabled():
                print(
                    f"round {round_number + 1}: {len(load.acknowledged)} acknowledged, "
                    f"{len(checked_unacknowledged)} unacknowledged "
                    f"({sum(checked_unacknowledged.values())} of them fully stored)"
                )
        assert len(load.acknowledged) > rounds  # the load really ran
        assert {load.door[s] for s in load.acknowledged} == {"stow", "c-store"}
        # Nothing indexed that nobody sent, and every instance present is one the clients sent whole.
        archive = Archive(make_settings(server.data_dir, db_url))
        try:
            present = {i.sop_instance_uid for i in archive.stored_instances(maker.base.StudyInstanceUID)}
        finally:
            archive.close()
        expected = set(load.acknowledged) | {s for s, there in checked_unacknowledged.items() if there}
        assert present == expected
    finally:
        server.stop()


# -- 2. disk full ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: the data folder on a disk that fills up."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk up to ``leave`` bytes free."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        chunk = b"\xff" * 65536
        try:
            while shutil.disk_usage(disk).free > leave + len(chunk):
                fh.write(chunk)
                fh.flush()
            while shutil.disk_usage(disk).free > leave + 4096:
                fh.write(chunk[:4096])
                fh.flush()
        except OSError:
            pass
    return filler


def count_blobs(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "blobs").glob("??/*"))


@pytest.mark.parametrize("leave", [0, 12 * 1024], ids=["full", "room-for-part-of-an-instance"])
def test_disk_full_answers_out_of_resources_and_recovers(
    small_disk: Path, tmp_path: Path, tessera_server_factory: Callable[..., BackgroundServer], leave: int
) -> None:
    data_dir = small_disk / "data"
    server = tessera_server_factory(
        data_dir=data_dir,
        database_url=f"sqlite:///{tmp_path / 'index.sqlite3'}",  # the index elsewhere: the blob disk fills
        dicom_enabled=True,
        dicom_allow_unknown=True,
    )
    maker = InstanceMaker(size=128)  # 32 KiB of pixels: does not fit in what is left
    first = maker.make()
    assert stow(server.url, [first]).status_code == 200
    blobs_before = count_blobs(data_dir)
    filler = fill(small_disk, leave)

    refused = [maker.make(), maker.make()]
    response = stow(server.url, refused)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    # The parts are written to disk as they arrive, so a full disk stops the upload itself: no
    # instance was identified, the answer is a problem document (PS3.18 8.5: 503, retry later).
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 503 and "No space left" in response.json()["detail"]
    ae = c_store_ae()
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.settings.ae_title)
    assert assoc.is_established
    dimse_refused = maker.make()
    status = assoc.send_c_store(dcmread(io.BytesIO(dimse_refused.data)))
    assert status.Status == OUT_OF_RESOURCES, f"0x{status.Status:04X}"
    # Nothing half-written, nothing indexed, the server still answers.
    assert not list((data_dir / "tmp").iterdir())
    assert count_blobs(data_dir) == blobs_before
    for item in [*refused, dimse_refused]:
        assert retrieve(server.url, item) is None
    assert requests.get(server.url + "/api/health", timeout=5).status_code == 200

    filler.unlink()  # space returns: ingest resumes, no restart
    stored = maker.make()
    assert stow(server.url, [stored]).status_code == 200
    assert retrieve(server.url, stored) == stored.data
    again = maker.make()
    status = assoc.send_c_store(dcmread(io.BytesIO(again.data)))
    assert status.Status == 0x0000
    assoc.release()
    got = retrieve(server.url, again)
    assert got is not None and dataset_part(got) == dataset_part(again.data)
    assert count_blobs(data_dir) == blobs_before + 2


# -- 3. PostgreSQL restart under load ------------------------------------------------------------


def postgres_cluster() -> tuple[str, str]:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        pytest.skip("no local PostgreSQL cluster managed by pg_ctlcluster")
    return versions[-1], "main"


def pg_ctl(action: str, version: str, cluster: str) -> None:
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            cluster,
            action,
            *(["-m", "fast"] if action == "stop" else []),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def restart_database(postgres_server: str) -> Iterator[str]:
    """A throwaway database whose teardown survives the restart (a fresh admin connection each time)."""
    name = f"tessera_faults_{uuid.uuid4().hex[:12]}"

    def admin(statement: str) -> None:
        engine = create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with engine.connect() as connection:
            connection.execute(text(statement))
        engine.dispose()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        for _attempt in range(30):  # the cluster may still be starting
            try:
                admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except OperationalError:
                time.sleep(1)


@dataclass
class Answer:
    at: float
    status: int
    seconds: float
    content_type: str
    retry_after: str | None


@pytest.mark.postgres
@pytest.mark.pg_restart
def test_postgresql_restart_gives_503s_then_recovers(
    restart_database: str, tessera_server_factory: Callable[..., BackgroundServer]
) -> None:
    version, cluster = postgres_cluster()
    server = tessera_server_factory(database_url=restart_database)
    maker = InstanceMaker()
    items = [maker.make() for _ in range(3)]
    assert stow(server.url, items).status_code == 200
    study = items[0].study
    paths = [
        f"/dicom-web/studies?StudyInstanceUID={study}",
        f"/dicom-web/studies/{study}/series",
        f"/dicom-web/studies/{study}/metadata",
        f"/dicom-web/studies/{study}/series/{items[0].series}/instances/{items[0].sop}/metadata",
    ]
    answers: list[Answer] = []
    stop = threading.Event()

    def client(path: str) -> None:
        http = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = http.get(server.url + path, timeout=30)
            except requests.RequestException as exc:
                raise AssertionError(f"{path}: no answer: {exc}") from exc
            answers.append(
                Answer(
                    started,
                    response.status_code,
                    time.monotonic() - started,
                    response.headers.get("Content-Type", ""),
                    response.headers.get("Retry-After"),
                )
            )
            time.sleep(0.02)

    outage_start = outage_end = 0.0
    with ThreadPoolExecutor(len(paths)) as pool:
        futures = [pool.submit(client, path) for path in paths]
        try:
            time.sleep(1.0)
            outage_start = time.monotonic()
            pg_ctl("stop", version, cluster)  # a restart with an outage long enough to be seen
            time.sleep(2.0)
        finally:
            pg_ctl("start", version, cluster)
            outage_end = time.monotonic()
        time.sleep(6.0)
        stop.set()
        for future in futures:
            future.result(timeout=60)

    during = [a for a in answers if outage_start <= a.at <= outage_end]
    failures = [a for a in answers if a.status != 200]
    assert failures, "the outage was not seen by any request"
    for answer in failures:
        assert answer.status == 503, answer
        assert answer.content_type == "application/problem+json" and answer.retry_after, answer
    assert max(a.seconds for a in answers) < 10, "a request hung during the outage"
    # Service returns by itself within a few seconds of the database, and stays.
    recovered = min(a.at for a in answers if a.status == 200 and a.at > outage_end)
    assert recovered - outage_end < 5
    assert all(a.status == 200 for a in answers if a.at > recovered)
    print(
        f"{len(answers)} requests, {len(during)} during the outage, {len(failures)} answered 503, "
        f"first success {recovered - outage_end:.2f} s after the database was back"
    )


# -- the audit trail is on disk before the answer leaves -------------------------------------------


def audit_records(server: ServeProcess, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """`tessera audit verify` (the chain is whole) and every record, through the CLI."""
    options = ["--data-dir", str(server.data_dir), "--database-url", server.database_url]
    capsys.readouterr()
    assert cli_main([*options, "audit", "verify"]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli_main([*options, "audit", "export", "--format", "jsonl"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_audit_records_survive_a_sigkill_right_after_each_response(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each access is committed to the audit trail before its response is sent: killing the
    server the instant an answer arrives loses no record, and the hash chain stays whole."""
    server = ServeProcess(tmp_path / "data", db_url, tmp_path / "serve.log")
    item = InstanceMaker().make()
    instance = f"/dicom-web/studies/{item.study}/series/{item.series}/instances/{item.sop}"
    operations: list[tuple[str, str, Callable[[], requests.Response]]] = [
        (INSTANCES_TRANSFERRED, "C", lambda: stow(server.url, [item])),
        (
            QUERY,
            "E",
            lambda: requests.get(
                f"{server.url}/dicom-web/studies", params={"StudyInstanceUID": item.study}, timeout=10
            ),
        ),
        (
            INSTANCES_ACCESSED,
            "R",
            lambda: requests.get(server.url + instance, headers={"Accept": RETRIEVE_ACCEPT}, timeout=30),
        ),
    ]
    try:
        for event_id, action, call in operations:
            server.start()
            before = len([r for r in audit_records(server, capsys) if r["event_id"] == event_id])
            response = call()
            server.kill9()  # the moment the answer is in: nothing after it may be needed
            assert response.status_code == 200, response.text
            records = [r for r in audit_records(server, capsys) if r["event_id"] == event_id]
            assert len(records) == before + 1, f"no {event_id} record survived the kill"
            record = records[-1]
            assert record["action"] == action
            assert record["outcome"] == 0
            assert item.study in record["study_uids"]
    finally:
        server.stop()
