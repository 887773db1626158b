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


def handle_connection_open(event: Event) -> None:
    """EVT_CONN_OPEN handler: tune every connection, accepted or requested."""
    disable_nagle(event.assoc)
