"""Two Tessera processes over one PostgreSQL database and one data folder serve one archive."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from sample_data.mammography import CURRENT, mammogram
from sample_data.radiology import ct_series
from server.archive.archive import Archive
from server.config import load_settings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


class Process:
    """`tessera serve` in its own process, its log kept for inspection."""

    def __init__(self, data_dir: Path, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {
            **os.environ,
            "TESSERA_DATA_DIR": str(data_dir),
            "TESSERA_DATABASE_URL": database_url,
            "TESSERA_PORT": str(self.port),
            "TESSERA_PROCESSES": "1",
            "TESSERA_DICOM_ENABLED": "false",
        }
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/api/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._log.close()


@pytest.fixture
def two_servers(tmp_path: Path, postgres_database: str) -> Iterator[tuple[Process, Process, Path]]:
    data = tmp_path / "shared-data"
    Archive(load_settings({}, data_dir=data, database_url=postgres_database)).close()  # migrate once
    a = Process(data, postgres_database, tmp_path / "a.log")
    b = Process(data, postgres_database, tmp_path / "b.log")
    try:
        yield a, b, data
    finally:
        a.stop()
        b.stop()


def _stow(url: str, payload: bytes) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return requests.post(
        url + "/dicom-web/studies",
        data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )


def test_store_through_one_retrieve_through_the_other_and_build_derived_products_once(
    two_servers: tuple[Process, Process, Path],
) -> None:
    a, b, _ = two_servers
    ds = ct_series(1)[0]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert _stow(a.url, buffer.getvalue()).status_code == 200
    found = requests.get(f"{b.url}/dicom-web/instances?SOPInstanceUID={ds.SOPInstanceUID}", timeout=10).json()
    assert len(found) == 1
    retrieved = requests.get(
        found[0]["00081190"]["Value"][0].replace(a.url, b.url),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=10,
    )
    assert retrieved.status_code == 200 and buffer.getvalue() in retrieved.content

    # A derived product (the mammogram's tile pyramid) asked for through both at once: built once.
    mg = mammogram(CURRENT, "L", "CC", 3, seed=11, shape=(512, 400))
    mg_buffer = io.BytesIO()
    mg.save_as(mg_buffer, enforce_file_format=True)
    archive_view = dcmread(io.BytesIO(mg_buffer.getvalue()), stop_before_pixels=True)
    assert _stow(b.url, mg_buffer.getvalue()).status_code == 200
    sop = archive_view.SOPInstanceUID
    tile = f"/mammography/images/{sop}/frames/0_files/9/0_0.jpeg"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda url: requests.get(url + tile, timeout=60), [a.url, b.url] * 6))
    assert all(r.status_code == 200 for r in answers), [r.text[:200] for r in answers if r.status_code != 200]
    assert len({r.content for r in answers}) == 1
    time.sleep(1)  # background work after ingest may still be logging
    builds = sum(p.log.read_text(errors="replace").count("built pyramid") for p in (a, b))
    assert builds == 1
