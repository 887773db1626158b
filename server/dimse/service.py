"""The DIMSE listener of ``tessera serve``: one pynetdicom AE in its own threads.

pynetdicom runs each association in a thread of its own, so nothing here touches
the tornado event loop; the handlers call the archive directly (it is thread-safe).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from server.config import Settings
from server.context import ServerContext
from server.dimse.access import AccountAwareAE, PduLimit, PeerDirectory, rejection_recorder
from server.dimse.audit import DimseAudit
from server.dimse.contexts import (
    QUERY_RETRIEVE_SOP_CLASSES,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    VERIFICATION,
)
from server.dimse.query import QuerySCP
from server.dimse.retrieve import RetrieveSCP
from server.dimse.storage import StorageSCP
from server.dimse.transport import handle_connection_open
from server.security.service import security_of
from server.security.transport import dicom_ssl_context

log = logging.getLogger(__name__)


def configured_ae(settings: Settings, kind: type[AE] = AE) -> AE:
    """An AE with the deployment's title, limits and timeouts (shared by SCP and SCU roles)."""
    ae = kind(ae_title=settings.ae_title)
    ae.maximum_associations = settings.dicom_max_associations
    ae.maximum_pdu_size = settings.dicom_max_pdu
    ae.acse_timeout = settings.dicom_acse_timeout
    ae.dimse_timeout = settings.dicom_dimse_timeout
    ae.network_timeout = settings.dicom_network_timeout
    ae.connection_timeout = settings.dicom_acse_timeout
    return ae


def add_scp_contexts(ae: AE) -> None:
    """Verification, Q/R (Patient and Study Root) and every storage SOP class with both roles."""
    ae.add_supported_context(VERIFICATION)
    for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
        ae.add_supported_context(sop_class)
    # Both roles: a C-GET SCU asks us to act as storage SCU on its association.
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(STORAGE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True)


@dataclass
class DimseService:
    """A running DIMSE listener; ``shutdown`` stops it and ends its associations."""

    ae: AE
    server: ThreadedAssociationServer

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def shutdown(self) -> None:
        self.server.shutdown()


def start_dimse(ctx: ServerContext) -> DimseService:
    """Listen for associations on ``settings.dicom_port`` (0 picks a free port) without blocking."""
    settings = ctx.settings
    peers = PeerDirectory.from_settings(settings, security_of(ctx))
    ae = configured_ae(settings, AccountAwareAE)
    assert isinstance(ae, AccountAwareAE)
    ae.directory = peers  # unknown calling AE titles: association rejected
    ae.require_called_aet = True
    add_scp_contexts(ae)
    pdu_limit = PduLimit(settings.dicom_max_pdu)
    audit = DimseAudit(ctx)
    storage = StorageSCP(ctx.archive, peers, pdu_limit, audit)
    query = QuerySCP(ctx.archive, peers, settings.ae_title, settings.query_max_limit, audit)
    retrieve = RetrieveSCP(ctx.archive, peers, audit)
    handlers = [
        (evt.EVT_C_STORE, storage.handle_store),
        (evt.EVT_C_FIND, query.handle_find),
        (evt.EVT_C_GET, retrieve.handle_get),
        (evt.EVT_C_MOVE, retrieve.handle_move),
        (evt.EVT_DATA_RECV, pdu_limit.handle_data_received),
        (evt.EVT_CONN_OPEN, handle_connection_open),
        (evt.EVT_REJECTED, rejection_recorder(peers, audit)),
    ]
    server = ae.start_server(
        (settings.host, settings.dicom_port),
        block=False,
        evt_handlers=handlers,
        ssl_context=dicom_ssl_context(settings),  # DICOM TLS when configured
    )
    assert server is not None
    service = DimseService(ae, server)
    log.info(
        "DICOM %s listening on %s:%d%s",
        settings.ae_title,
        settings.host,
        service.port,
        " (DICOM TLS)" if settings.dicom_tls_cert else "",
    )
    return service
