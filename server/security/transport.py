"""Server-side TLS contexts (TLS 1.2 at least): HTTPS from tls_cert / tls_key, DICOM TLS on the
DIMSE port from dicom_tls_cert / dicom_tls_key (and dicom_tls_ca for client certificates)."""

from __future__ import annotations

import ssl

from server.config import ConfigError, Settings


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """None when no certificate is configured (plain HTTP, for loopback or behind a TLS proxy)."""
    if not settings.tls_enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"settings tls_cert/tls_key: cannot load the certificate and key: {exc}") from exc
    return context


def dicom_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """None when DICOM TLS is not configured (plain DIMSE)."""
    if not settings.dicom_tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"settings dicom_tls_cert/dicom_tls_key: cannot load the certificate and key: {exc}"
        ) from exc
    if settings.dicom_tls_ca:
        try:
            context.load_verify_locations(cafile=settings.dicom_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"setting dicom_tls_ca: cannot load the CA certificates: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context
