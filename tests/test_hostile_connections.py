"""Slow, oversized and lying clients: HTTP header/body deadlines and DICOM PDU bounds.

Each test opens a raw socket and misbehaves the way a slow-loris or a hostile peer would; the
server must drop that connection within its configured bound and keep serving everyone else.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest
import requests
from pynetdicom import AE

from server.serve import BackgroundServer


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Trickle ``trickle`` one byte every 0.2 s until the peer closes; seconds taken, or None."""
    start = time.monotonic()
    sock.settimeout(0.2)
    position = 0
    while time.monotonic() - start < seconds:
        try:
            if position < len(trickle):
                sock.send(trickle[position : position + 1])
                position += 1
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None


def test_slow_headers_are_cut_off_at_the_idle_timeout(
    tessera_server_factory: Callable[..., BackgroundServer],
) -> None:
    server = tessera_server_factory(http_idle_timeout=2)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /api/system HTTP/1.1\r\nHost: x\r\n")
        taken = _closed_within(sock, 10, b"X-Slow: " + b"a" * 200)
    assert taken is not None, "a client trickling headers kept its connection for 10 s"
    assert taken < 5
    assert requests.get(server.url + "/api/health", timeout=10).status_code == 200


def test_slow_body_is_cut_off_at_the_body_timeout(
    tessera_server_factory: Callable[..., BackgroundServer],
) -> None:
    server = tessera_server_factory(http_body_timeout=2)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        taken = _closed_within(sock, 10, b"\0" * 200)
    assert taken is not None, "a client trickling its body kept its connection for 10 s"
    assert taken < 5


def test_oversized_headers_are_refused(tessera_server_factory: Callable[..., BackgroundServer]) -> None:
    server = tessera_server_factory(http_max_header_bytes=8192)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 16384 + b"\r\n\r\n")
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply:
                    break
        except ConnectionResetError:
            pass
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:80]
    assert requests.get(server.url + "/api/health", timeout=10).status_code == 200


def _echo(port: int) -> int:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="TESSERA")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


@pytest.mark.parametrize("declared", [0xFFFFFFF0, 64 * 1024 * 1024])
def test_pdu_declaring_more_than_the_maximum_is_dropped_unread(
    tessera_server_factory: Callable[..., BackgroundServer], declared: int
) -> None:
    """A P-DATA header declaring gigabytes: the connection ends at once, nothing is buffered."""
    server = tessera_server_factory(
        dicom_enabled=True, dicom_port=0, dicom_max_pdu=16384, dicom_allow_unknown=True
    )
    with socket.create_connection(("127.0.0.1", server.dicom_port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x04, 0, declared) + b"\0" * 4096)
        taken = _closed_within(sock, 8, b"\0" * 100)
    assert taken is not None, f"a PDU declaring {declared} bytes was still being read after 8 s"
    assert taken < 3
    assert _echo(server.dicom_port) == 0x0000
