"""Who may do what over DIMSE: the known peers from the settings, and the rule for strangers.

A hospital network is not a trusted network: a scanner whose AE title we do not know
may check that we answer (C-ECHO), but storing, querying or retrieving needs a
configured peer unless the deployment explicitly allows unknown AEs.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from enum import Enum

from pynetdicom.association import Association
from pynetdicom.events import Event

from server.config import DicomPeer, Settings

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x0124  # PS3.7 Annex C: Refused: Not Authorized
MOVE_DESTINATION_UNKNOWN = 0xA801


class DimseOperation(Enum):
    ECHO = "C-ECHO"
    STORE = "C-STORE"
    FIND = "C-FIND"
    GET = "C-GET"
    MOVE = "C-MOVE"


@dataclass(frozen=True)
class PeerDirectory:
    """The AE titles this archive knows, with their addresses (C-MOVE destinations, SCU targets)."""

    peers: dict[str, DicomPeer]
    allow_unknown: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> PeerDirectory:
        return cls({peer.ae_title: peer for peer in settings.dicom_peers}, settings.dicom_allow_unknown)

    def peer(self, ae_title: str) -> DicomPeer | None:
        return self.peers.get(ae_title.strip())

    def permits(self, calling_ae: str, operation: DimseOperation) -> bool:
        """Echo is open to anyone (it reveals nothing); everything else needs a known peer."""
        if operation is DimseOperation.ECHO or self.allow_unknown:
            return True
        return calling_ae.strip() in self.peers

    def refusal(self, calling_ae: str, operation: DimseOperation) -> str:
        return f"{operation.value} refused: calling AE {calling_ae.strip()!r} is not a known peer"


def remote_ae_title(assoc: Association) -> str:
    """The peer's AE title, whichever side opened the association (C-GET as SCU opens it)."""
    return str(assoc.remote.get("ae_title", "") or "").strip()


_P_DATA_TF = 0x04
_PDU_HEADER = 6


class PduLimit:
    """Aborts an association whose peer sends P-DATA PDUs larger than we said we accept.

    pynetdicom reads any PDU length it is given; the abort is queued while the offending PDU
    is still delivered, so the services also ask ``breached`` and store nothing from it.
    """

    def __init__(self, maximum_pdu: int) -> None:
        self.maximum_pdu = maximum_pdu
        self._breached: weakref.WeakSet[Association] = weakref.WeakSet()

    def handle_data_received(self, event: Event) -> None:
        data = event.data
        if not self.maximum_pdu or data[:1] != bytes([_P_DATA_TF]):
            return
        if len(data) - _PDU_HEADER > self.maximum_pdu:
            log.warning(
                "aborting association with %r: %d-byte PDU over the negotiated maximum of %d",
                remote_ae_title(event.assoc),
                len(data) - _PDU_HEADER,
                self.maximum_pdu,
            )
            self._breached.add(event.assoc)
            event.assoc.abort(block=False)

    def breached(self, assoc: Association) -> bool:
        return assoc in self._breached
