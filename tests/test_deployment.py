"""The documented deployment, run: nginx (docs/deploy/nginx.conf) in front of two `tessera serve`
processes over one PostgreSQL database and one data folder."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from requests.adapters import HTTPAdapter

from sample_data.radiology import Study, ct_series
from server.archive.archive import Archive
from server.config import load_settings
from server.security.audit import AuditFilter
from server.security.service import SecurityService
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "docs" / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLIENT_ADDRESS = "127.0.0.2"  # the client connects from here; nginx and Tessera talk over 127.0.0.1

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (make setup)")


class Upstream:
    """`tessera serve` with proxy headers on, its output kept for inspection."""

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
            "TESSERA_PROXY_HEADERS": "true",
            "TESSERA_AUDIT_COALESCE_SECONDS": "0",
        }
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until_up(f"http://127.0.0.1:{self.port}/api/health", lambda: log.read_text(errors="replace"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._log.close()


def wait_until_up(url: str, describe: Any, verify: Any = True) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1, verify=verify).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up: {describe()[-2000:]}")


def render_nginx_conf(
    prefix: Path, https_port: int, http_port: int, upstreams: list[int], cert: Path, key: Path
) -> str:
    """docs/deploy/nginx.conf with the addresses, ports, certificate and log paths of this test only."""
    text = NGINX_CONF.read_text()
    replacements = [
        ("pid /run/nginx-tessera.pid;", f"pid {prefix}/nginx.pid;"),
        ("error_log /var/log/nginx/tessera-error.log", f"error_log {prefix}/error.log"),
        ("access_log /var/log/nginx/tessera-access.log", f"access_log {prefix}/access.log"),
        ("server 10.0.0.11:8042", f"server 127.0.0.1:{upstreams[0]}"),
        ("server 10.0.0.12:8042", f"server 127.0.0.1:{upstreams[1]}"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl"),
        ("/etc/ssl/tessera/fullchain.pem", str(cert)),
        ("/etc/ssl/tessera/privkey.pem", str(key)),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, f"{NGINX_CONF} no longer has {old!r} exactly once"
        text = text.replace(old, new)
    return text


@dataclass
class Deployment:
    url: str  # https, through nginx
    http_url: str  # plain http, through nginx
    cert: Path
    prefix: Path
    upstreams: list[Upstream]
    security: SecurityService

    def session(self) -> requests.Session:
        """A client connecting from CLIENT_ADDRESS, trusting the test certificate."""
        session = requests.Session()
        session.mount("https://", _FromAddress())
        session.mount("http://", _FromAddress())
        session.verify = str(self.cert)
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        return session

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text()


class _FromAddress(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (CLIENT_ADDRESS, 0)
        super().init_poolmanager(*args, **kwargs)


@pytest.fixture
def deployment(tmp_path: Path, postgres_database: str) -> Iterator[Deployment]:
    data = tmp_path / "shared-data"
    Archive(load_settings({}, data_dir=data, database_url=postgres_database)).close()  # migrate once
    # nginx's workers run as an unprivileged user when started as root: their prefix must be reachable.
    prefix = Path(tempfile.mkdtemp(prefix="tessera-nginx-"))
    prefix.chmod(0o755)
    cert, key = prefix / "cert.pem", prefix / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=digitalSignature,keyCertSign",
        ],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    upstreams: list[Upstream] = []
    nginx: subprocess.Popen[bytes] | None = None
    security = SecurityService(load_settings({}, data_dir=data, database_url=postgres_database))
    try:
        upstreams = [Upstream(data, postgres_database, tmp_path / f"tessera-{n}.log") for n in (1, 2)]
        https_port, http_port = free_port(), free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            render_nginx_conf(prefix, https_port, http_port, [u.port for u in upstreams], cert, key)
        )
        check = subprocess.run(
            [NGINX, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        url = f"https://127.0.0.1:{https_port}"
        wait_until_up(url + "/api/health", lambda: (prefix / "error.log").read_text(), verify=str(cert))
        yield Deployment(url, f"http://127.0.0.1:{http_port}", cert, prefix, upstreams, security)
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)  # graceful stop of master and workers
            try:
                nginx.wait(20)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait(5)
        for upstream in upstreams:
            upstream.stop()
        security.engine.dispose()
        shutil.rmtree(prefix, ignore_errors=True)


def _ct_study(count: int) -> list[bytes]:
    """``count`` CT slices of 512 x 512 x 16 bit (about 0.5 MB each) in one new study."""
    out = []
    study = Study(accession_number=uuid.uuid4().hex[:16])  # a new study each call
    for ds in ct_series(count, study=study, size=512):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _multipart(payloads: list[bytes], boundary: str) -> list[bytes]:
    parts = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in payloads
    ]
    return [*parts, f"--{boundary}--\r\n".encode()]


def _stow(session: requests.Session, url: str, payloads: list[bytes], chunked: bool) -> requests.Response:
    boundary = uuid.uuid4().hex
    parts = _multipart(payloads, boundary)
    body: Any = iter(parts) if chunked else b"".join(parts)  # an iterator is sent chunked by requests
    return session.post(
        url + "/dicom-web/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=120,
    )


def _dicom_parts(response: requests.Response) -> list[bytes]:
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    return [bytes(part.get_payload(decode=True)) for part in message.iter_parts()]


def test_nginx_in_front_of_two_processes_serves_the_archive(deployment: Deployment) -> None:
    client = deployment.session()
    url = deployment.url
    first, second = _ct_study(3), _ct_study(3)
    assert sum(map(len, first)) > 1_000_000

    # STOW-RS through nginx, streamed chunked and with a Content-Length.
    for payloads, chunked in ((first, True), (second, False)):
        response = _stow(client, url, payloads, chunked)
        assert response.status_code == 200, response.text[:500]
        assert response.request.headers.get("Transfer-Encoding") == ("chunked" if chunked else None)
        assert "00081198" not in response.json()  # no failed instances
        # the URLs Tessera returns name the proxy and its scheme, from X-Forwarded-Proto and Host
        assert response.json()["00081190"]["Value"][0].startswith(url + "/dicom-web/studies/")

    # QIDO-RS, then WADO-RS retrieve of a whole study (multipart): the stored bytes come back.
    study_uid = str(dcmread(io.BytesIO(first[0]), stop_before_pixels=True).StudyInstanceUID)
    found = client.get(f"{url}/dicom-web/studies?StudyInstanceUID={study_uid}", timeout=30)
    assert found.status_code == 200 and len(found.json()) == 1
    assert found.json()[0]["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    retrieved = client.get(
        f"{url}/dicom-web/studies/{study_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=60,
    )
    assert retrieved.status_code == 200, retrieved.text[:300]
    assert sorted(_dicom_parts(retrieved)) == sorted(first)

    # A rendered frame (WADO-RS /rendered), computed by whichever process nginx picks.
    view = dcmread(io.BytesIO(second[1]), stop_before_pixels=True)
    rendered = client.get(
        f"{url}/dicom-web/studies/{view.StudyInstanceUID}/series/{view.SeriesInstanceUID}"
        f"/instances/{view.SOPInstanceUID}/rendered",
        headers={"Accept": "image/jpeg"},
        timeout=60,
    )
    assert rendered.status_code == 200 and rendered.content[:3] == b"\xff\xd8\xff"

    # Requests are spread over both upstreams (least_conn: queries in parallel land on both).
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.get(f"{url}/dicom-web/studies", timeout=30), range(40)))
    assert all(a.status_code == 200 and len(a.json()) >= 2 for a in answers), [
        (a.status_code, a.text[:200]) for a in answers
    ]
    served_by = re.findall(r"upstream=127\.0\.0\.1:(\d+)", deployment.access_log())
    assert {int(p) for p in served_by} == {u.port for u in deployment.upstreams}, served_by

    # Plain HTTP is redirected to HTTPS.
    plain = client.get(deployment.http_url + "/api/health", allow_redirects=False, timeout=10)
    assert plain.status_code == 308 and plain.headers["Location"].startswith("https://")

    # The audit trail names the real client, not the proxy, even when the client claims another
    # address: nginx replaces X-Real-IP with the address it saw.
    marker = uuid.uuid4().hex[:8]
    spoofed = client.get(
        f"{url}/dicom-web/studies?PatientID=SPOOF{marker}",
        headers={"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "203.0.113.9"},
        timeout=30,
    )
    assert spoofed.status_code == 200
    deadline = time.monotonic() + 20
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = [
            r
            for r in deployment.security.audit.iterate(AuditFilter())
            if r["resource"].startswith("/dicom-web")
        ]
        if any(marker in r["resource"] for r in records) and any(r["http_method"] == "POST" for r in records):
            break
        time.sleep(0.3)
    assert records, "nothing was audited"
    assert {r["client_address"] for r in records} == {CLIENT_ADDRESS}, {r["client_address"] for r in records}
    assert any(marker in r["resource"] for r in records)
    assert sum(r["http_method"] == "POST" for r in records) == 2  # both STOWs


def test_proxy_headers_are_ignored_unless_enabled(tessera_server_factory: Any) -> None:
    """Reached directly, a default Tessera records the connecting address whatever headers say."""
    assert load_settings({}).proxy_headers is False
    assert load_settings({"TESSERA_PROXY_HEADERS": "true"}).proxy_headers is True
    server = tessera_server_factory(audit_coalesce_seconds=0)
    response = requests.get(
        f"{server.url}/dicom-web/studies?PatientID=DIRECT",
        headers={"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "203.0.113.9"},
        timeout=10,
    )
    assert response.status_code == 200
    security = SecurityService(server.ctx.settings)
    try:
        deadline = time.monotonic() + 10
        addresses: set[str] = set()
        while time.monotonic() < deadline and not addresses:
            addresses = {
                r["client_address"]
                for r in security.audit.iterate(AuditFilter())
                if "DIRECT" in r["resource"]
            }
            time.sleep(0.2)
        assert addresses == {"127.0.0.1"}
    finally:
        security.engine.dispose()
