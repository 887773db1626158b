"""HTTPS: a server-side TLS context (TLS 1.2 at least) from the tls_cert / tls_key settings."""

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
