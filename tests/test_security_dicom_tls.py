"""DICOM TLS on the DIMSE port, with certificates made by openssl for the test.

Real peers: a pynetdicom SCU with an ``ssl`` client context and DCMTK's ``echoscu
+tls``. The server requires TLS 1.2 or later and, with ``dicom_tls_ca``, a client
certificate signed by that CA; the calling AE title still has to be known.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from server.config import ConfigError, Settings
from server.security.policy import Role
from server.security.service import security_of
from server.security.transport import dicom_ssl_context
from server.serve import BackgroundServer
from tests.conftest import free_port
from tests.test_security_dimse import PASSWORD, quick_argon2

__all__ = ["quick_argon2"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
        "-days", "1", "-subj", "/CN=Tessera test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
            "-out", str(d / f"{name}.csr"), "-subj", f"/CN=tessera-{name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-out", str(d / f"{name}.crt"), "-days", "1", "-extfile", str(d / f"{name}.ext"),
        )  # fmt: skip
    return {p.stem + p.suffix: str(p) for p in d.iterdir()}


@pytest.fixture
def tls_server(
    tessera_server_factory: Callable[..., BackgroundServer], pki: dict[str, str]
) -> BackgroundServer:
    server = tessera_server_factory(
        dicom_enabled=True,
        dicom_port=free_port(),
        auth_enabled=True,
        dicom_tls_cert=pki["server.crt"],
        dicom_tls_key=pki["server.key"],
        dicom_tls_ca=pki["ca.crt"],
    )
    service = security_of(server.ctx)
    service.accounts.add_user("tls-workstation", Role.VIEWER, PASSWORD)
    service.accounts.map_ae_title("TLS_SCU", "tls-workstation")
    return server


def client_context(pki: dict[str, str], *, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca.crt"])
    if with_certificate:
        context.load_cert_chain(pki["client.crt"], pki["client.key"])
    return context


def echo(server: BackgroundServer, calling: str, context: ssl.SSLContext | None) -> tuple[bool, str]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    kwargs = {"tls_args": (context, "127.0.0.1")} if context is not None else {}
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="TESSERA", **kwargs)
    if not assoc.is_established:
        return False, ""
    try:
        version = assoc.dul.socket.socket.version() if context is not None else ""
        return int(assoc.send_c_echo().Status) == 0, str(version)
    finally:
        assoc.release()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_pynetdicom_over_tls(tls_server: BackgroundServer, pki: dict[str, str]) -> None:
    ok, version = echo(tls_server, "TLS_SCU", client_context(pki))
    assert ok and version in ("TLSv1.2", "TLSv1.3")
    assert echo(tls_server, "TLS_SCU", None) == (False, "")  # plain TCP on the TLS port
    assert echo(tls_server, "TLS_SCU", client_context(pki, with_certificate=False)) == (False, "")
    assert echo(tls_server, "STRANGER", client_context(pki)) == (False, "")  # TLS does not replace AE checks
    old = client_context(pki)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", tls_server.dicom_port), timeout=10) as raw,
        old.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass
    context = dicom_ssl_context(tls_server.ctx.settings)
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_dcmtk_echoscu_over_tls(tls_server: BackgroundServer, pki: dict[str, str]) -> None:
    help_text = subprocess.run(["echoscu", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--enable-tls" in help_text, "Debian's dcmtk is built with OpenSSL"

    def echoscu(*tls: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["echoscu", "-aet", "TLS_SCU", "-aec", "TESSERA", *tls, "127.0.0.1", str(tls_server.dicom_port)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    secure = echoscu("+tls", pki["client.key"], pki["client.crt"], "+cf", pki["ca.crt"])
    assert secure.returncode == 0, secure.stderr
    assert echoscu().returncode != 0  # without TLS
    untrusted = echoscu("+tls", pki["client.key"], pki["client.crt"])  # does not trust the server's CA
    assert untrusted.returncode != 0


def test_bad_dicom_tls_settings_are_named(pki: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dicom_tls_cert/dicom_tls_key"):
        dicom_ssl_context(
            Settings(data_dir=tmp_path, dicom_tls_cert=pki["ca.key"], dicom_tls_key=pki["ca.key"])
        )
    with pytest.raises(ConfigError, match="dicom_tls_ca"):
        dicom_ssl_context(
            Settings(
                data_dir=tmp_path,
                dicom_tls_cert=pki["server.crt"],
                dicom_tls_key=pki["server.key"],
                dicom_tls_ca=str(tmp_path / "missing.pem"),
            )
        )
    assert dicom_ssl_context(Settings(data_dir=tmp_path)) is None
