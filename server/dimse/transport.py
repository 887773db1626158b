"""Socket tuning for DIMSE connections.

A DIMSE message goes out as a command PDU followed by data set PDUs in separate writes;
with Nagle's algorithm the later write waits for the peer's delayed ACK of the first,
about 40 ms per message on Linux, which caps C-STORE at some 20 instances/s.
"""

from __future__ import annotations

import logging
import socket

from pynetdicom.association import Association
from pynetdicom.events import Event

log = logging.getLogger(__name__)


def disable_nagle(assoc: Association) -> None:
    """Send each PDU as soon as it is written."""
    transport = getattr(assoc.dul, "socket", None)
    raw = getattr(transport, "socket", None)
    if raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not a TCP socket, or already closed
        log.debug("cannot set TCP_NODELAY: %s", exc)


# Association PDUs (A-ASSOCIATE-RQ with many presentation contexts) may exceed a small
# maximum P-DATA length; anything beyond this floor or the negotiated maximum is refused.
MIN_PDU_ALLOWANCE = 256 * 1024


class PduTooLarge(OSError):
    """A peer declared a PDU longer than this AE accepts; the connection is dropped unread."""


def bound_pdu_reads(assoc: Association) -> None:
    """Refuse a PDU by its declared length before reading (and allocating) its body.

    pynetdicom reads whatever length a PDU header declares into memory, so a peer could make
    us buffer up to 4 GiB. Its reader asks the socket for the 6-byte header, then for exactly
    the declared length: a request over the bound raises, which pynetdicom treats as a closed
    transport (Evt17) and the association ends. ``PduLimit`` still enforces the exact maximum.
    """
    transport = getattr(assoc.dul, "socket", None)
    maximum = int(getattr(assoc.ae, "maximum_pdu_size", 0) or 0)
    if transport is None or not maximum:
        return
    limit = max(maximum, MIN_PDU_ALLOWANCE)
    read = transport.recv

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            log.warning(
                "dropping DICOM connection from %s: PDU of %d bytes declared, at most %d accepted",
                assoc.remote.get("address", "?"),
                nr_bytes,
                limit,
            )
            raise PduTooLarge(f"PDU of {nr_bytes} bytes declared, at most {limit} accepted")
        return read(nr_bytes)

    transport.recv = recv


def handle_connection_open(event: Event) -> None:
    """EVT_CONN_OPEN handler: tune every connection, accepted or requested, and bound its PDUs."""
    disable_nagle(event.assoc)
    bound_pdu_reads(event.assoc)
