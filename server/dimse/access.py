"""Who may do what over DIMSE: calling AE titles act as user accounts, with the HTTP roles.

A hospital network is not a trusted network. An AE title mapped to an account in the
database (``tessera users ae-title``) acts as that user: a viewer's AE may query and
retrieve but not store, a clinician's may also store, an auditor's may do nothing but
echo, and the user's study groups filter what it finds, retrieves and stores. Associations
from AE titles the archive does not know are rejected. Peers listed only in
``TESSERA_DICOM_PEERS`` (the configuration before accounts existed) keep full access.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.events import Event

from server.config import DicomPeer, Settings
from server.security.accounts import Identity
from server.security.groups import Scope
from server.security.policy import Permission, allows

if TYPE_CHECKING:
    from server.security.service import SecurityService

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x0124  # PS3.7 Annex C: Refused: Not Authorized
MOVE_DESTINATION_UNKNOWN = 0xA801
ACCOUNT_CACHE_SECONDS = 5.0  # a C-STORE burst does not ask the database once per instance


class DimseOperation(Enum):
    ECHO = "C-ECHO"
    STORE = "C-STORE"
    FIND = "C-FIND"
    GET = "C-GET"
    MOVE = "C-MOVE"


NEEDS = {
    DimseOperation.ECHO: Permission.SIGNED_IN,
    DimseOperation.STORE: Permission.WRITE,
    DimseOperation.FIND: Permission.READ,
    DimseOperation.GET: Permission.READ,
    DimseOperation.MOVE: Permission.READ,
}


@dataclass(frozen=True)
class PeerDirectory:
    """The AE titles this archive knows: configured peers (with addresses: C-MOVE destinations,
    SCU targets) and, through ``security``, AE titles acting as user accounts."""

    peers: dict[str, DicomPeer]
    allow_unknown: bool = False
    security: SecurityService | None = None
    _cache: dict[str, tuple[float, Identity | None]] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, security: SecurityService | None = None) -> PeerDirectory:
        return cls(
            {peer.ae_title: peer for peer in settings.dicom_peers}, settings.dicom_allow_unknown, security
        )

    def peer(self, ae_title: str) -> DicomPeer | None:
        return self.peers.get(ae_title.strip())

    def account(self, calling_ae: str) -> Identity | None:
        """The user account the AE title acts as (cached briefly), or None."""
        if self.security is None:
            return None
        title = calling_ae.strip()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(title)
        if cached is not None and now - cached[0] < ACCOUNT_CACHE_SECONDS:
            return cached[1]
        identity = self.security.accounts.resolve_ae_title(title)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[title] = (now, identity)
        return identity

    def known_titles(self) -> list[str]:
        """Every calling AE title allowed to associate (asked again for each association)."""
        titles = set(self.peers)
        if self.security is not None:
            titles.update(self.security.accounts.ae_titles(enabled_only=True))
        return sorted(titles)

    def permits(self, calling_ae: str, operation: DimseOperation) -> bool:
        identity = self.account(calling_ae)
        if identity is not None:
            return allows(identity.role, NEEDS[operation])
        if operation is DimseOperation.ECHO or self.allow_unknown:
            return True
        return calling_ae.strip() in self.peers

    def scope(self, calling_ae: str) -> Scope | None:
        """The study groups limiting this AE (its account's), or None."""
        identity = self.account(calling_ae)
        return identity.scope if identity is not None else None

    def refusal(self, calling_ae: str, operation: DimseOperation) -> str:
        identity = self.account(calling_ae)
        if identity is not None:
            return f"{operation.value} refused: AE {calling_ae.strip()!r} acts as a {identity.role.value}"
        return f"{operation.value} refused: calling AE {calling_ae.strip()!r} is not a known peer"


class AccountAwareAE(AE):
    """An AE whose list of accepted calling AE titles is read from the directory at each association
    request, so accounts added or removed take effect without a restart (pynetdicom then rejects
    the association: permanent, service user, calling AE title not recognised)."""

    directory: PeerDirectory | None = None

    @property
    def require_calling_aet(self) -> list[str]:
        directory = self.directory
        if directory is None or directory.allow_unknown:
            return []
        try:
            titles = directory.known_titles()
        except Exception:
            log.exception("cannot read the DICOM accounts; refusing the association")
            return ["\x00"]  # matches no AE title: fail closed
        return titles or ["\x00"]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: Any) -> None:
        raise AttributeError("calling AE titles come from the peer directory")


def rejection_recorder(directory: PeerDirectory, audit: Any) -> Callable[[Event], None]:
    """EVT_REJECTED handler: every rejected association is a Security Alert in the audit trail."""

    def record(event: Event) -> None:
        title = remote_ae_title(event.assoc)
        try:
            known = directory.allow_unknown or title in directory.known_titles()
        except Exception:
            known = False
        why = "wrong called AE title or too many associations" if known else "calling AE title not known"
        try:
            audit.refused(event, "A-ASSOCIATE", f"association from {title!r} rejected: {why}")
        except Exception:
            log.exception("rejected association from %r not recorded", title)

    return record


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
