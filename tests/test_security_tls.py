"""HTTPS with a self-signed certificate made here: TLS 1.2 at least, HSTS, Secure cookies."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from server.config import ConfigError
from server.security.guard import SESSION_COOKIE, XSRF_COOKIE
from server.security.transport import server_ssl_context
from server.serve import BackgroundServer
from tests.conftest import make_settings
from tests.test_security_access import PASSWORD, quick_argon2, start_secure

__all__ = ["quick_argon2"]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=digitalSignature,keyCertSign",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_https_hsts_secure_cookies_and_tls12_minimum(
    tessera_server_factory: Callable[..., BackgroundServer], certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    secure = start_secure(tessera_server_factory, tls_cert=cert, tls_key=key)
    url = secure.url
    assert url.startswith("https://")

    health = requests.get(f"{url}/api/health", verify=cert, timeout=10)
    assert health.ok and health.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    page = requests.get(f"{url}/static/login.html", verify=cert, timeout=10)
    assert page.ok and "Strict-Transport-Security" in page.headers

    http = (
        requests.Session()
    )  # verify= on each call: a CA bundle in the environment would win over Session.verify
    login = {"username": "viewer", "password": PASSWORD}
    assert http.post(f"{url}/api/session", json=login, verify=cert, timeout=10).ok
    cookies = {c.name: c for c in http.cookies}
    assert cookies[SESSION_COOKIE].secure and cookies[XSRF_COOKIE].secure
    assert http.get(f"{url}/dicom-web/studies", verify=cert, timeout=10).status_code in (200, 204)
    assert requests.get(f"{url}/dicom-web/studies", verify=cert, timeout=10).status_code == 401

    # What the server negotiates, and that it will not go below TLS 1.2.
    context = ssl.create_default_context(cafile=cert)
    with (
        socket.create_connection(("127.0.0.1", secure.server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.create_default_context(cafile=cert)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", secure.server.port), timeout=10) as raw,
        old.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass
    server_context = server_ssl_context(secure.server.settings)
    assert server_context is not None and server_context.minimum_version == ssl.TLSVersion.TLSv1_2

    # Plain HTTP on the HTTPS port gets nothing.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url.replace("https://", "http://") + "/api/health", timeout=10)


def test_bad_certificate_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert"):
        server_ssl_context(make_settings(tmp_path / "d", tls_cert=str(tmp_path / "no.pem"), tls_key="x"))
