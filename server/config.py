"""Settings from ``TESSERA_*`` environment variables and an optional TOML file.

The embedded default (SQLite + a local data folder) needs no configuration at all;
every value here can be overridden per deployment without touching code.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value Tessera cannot use; the message names the setting."""


@dataclass(frozen=True)
class DicomPeer:
    """A known DICOM application entity (a modality, another PACS, a workstation)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomPeer:
        """Parse ``AE@host:port``."""
        try:
            ae, address = text.strip().split("@", 1)
            host, port = address.rsplit(":", 1)
            peer = cls(ae.strip(), host.strip(), int(port))
        except ValueError as exc:
            raise ConfigError(f"DICOM peer {text!r} is not AE@host:port") from exc
        if not peer.ae_title or len(peer.ae_title) > 16 or not 0 < peer.port < 65536:
            raise ConfigError(f"DICOM peer {text!r} has a bad AE title or port")
        return peer


@dataclass(frozen=True)
class Settings:
    """Everything a Tessera process needs to know about its deployment."""

    data_dir: Path = Path("./tessera-data")
    database_url: str = ""  # empty: SQLite inside data_dir
    host: str = "127.0.0.1"
    port: int = 8042
    processes: int = 0  # HTTP server processes sharing the port; 0 = one per core
    dicom_enabled: bool = True
    dicom_port: int = 11112
    ae_title: str = "TESSERA"
    dicom_peers: tuple[DicomPeer, ...] = ()
    dicom_allow_unknown: bool = False
    dicom_max_associations: int = 10  # concurrent DICOM associations accepted
    dicom_max_pdu: int = 1_048_576  # bytes; maximum P-DATA PDU we receive (0 = unlimited)
    dicom_acse_timeout: int = 30  # seconds to wait for association messages
    dicom_dimse_timeout: int = 60  # seconds to wait for a DIMSE message
    dicom_network_timeout: int = 120  # seconds without any traffic before an association is aborted
    duplicate_policy: str = "reject"  # or "replace" / "keep": what a different instance with a known UID does
    max_upload_bytes: int = 8 * 1024**3
    max_pixel_bytes: int = 16 * 1024**3  # rows x columns x frames x samples x bits/8 per instance
    max_frames: int = 1_000_000
    query_default_limit: int = 100
    query_max_limit: int = 10_000
    worker_threads: int = 8
    # Optional object store for blobs and derived products (s3://bucket/prefix?endpoint=…&region=…,
    # gs://, az://, file:///...; docs/deployment.md, "Object storage"); "": the data folder only.
    blob_store_url: str = ""
    # Derived-job queue (docs/architecture.md, "Derived work after ingest").
    job_threads: int = 2  # derived jobs run at once per process
    job_lease_seconds: int = 300  # a claimed job returns to the queue if its process stops renewing this
    job_max_attempts: int = 5  # tries before a job is marked failed
    job_retry_seconds: int = 10  # first retry delay; doubled on each further attempt
    # HTTP connection limits (docs/security.md, "Hostile input"): a slow or stalled client is cut off.
    http_idle_timeout: int = 60  # seconds a connection may sit idle, or take to send its request headers
    http_body_timeout: int = 600  # seconds a client may take to send one request body
    http_max_header_bytes: int = 65536  # request line + headers
    # Behind a reverse proxy (docs/deployment.md): take the client address and scheme from
    # X-Real-IP / X-Forwarded-For / X-Forwarded-Proto. Only when nothing but the proxy reaches the port.
    proxy_headers: bool = False
    # Security (docs/security.md). None: on unless the server only listens on a loopback address.
    auth_enabled: bool | None = None
    session_idle_timeout: int = 1800  # seconds without a request before a login session ends
    session_lifetime: int = 12 * 3600  # seconds after login when a session ends whatever its use
    # A process reuses a session/token lookup this long (a warm tile must not cost a database
    # query); logout in the same process is immediate, revocation elsewhere takes up to this long.
    credential_cache_seconds: float = 5.0
    audit_coalesce_seconds: int = 300  # repeated reads of one object by one user: recorded once per window
    audit_fsync: bool = True  # SQLite: fsync each audit commit (synchronous=FULL), not only at checkpoints
    tls_cert: str = ""  # PEM certificate (chain); with tls_key, HTTP is served as HTTPS only
    tls_key: str = ""
    # DICOM TLS (PS3.15 B.1) on the DIMSE port: certificate and key; with dicom_tls_ca, peers must
    # present a certificate signed by that CA (mutual authentication).
    dicom_tls_cert: str = ""
    dicom_tls_key: str = ""
    dicom_tls_ca: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def derived_dir(self) -> Path:
        """Products computed from stored instances (pyramids, cine videos), safe to rebuild."""
        return self.data_dir / "derived"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @functools.cached_property
    def loopback_only(self) -> bool:
        """True when the HTTP port is reachable from this machine only."""
        return is_loopback(self.host)

    @property
    def authentication_required(self) -> bool:
        """``auth_enabled`` as set, else on for any address other machines can reach."""
        return self.auth_enabled if self.auth_enabled is not None else not self.loopback_only

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the port off the network (unknown names count as reachable)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


_ENV_PREFIX = "TESSERA_"
_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    try:
        if kind == "bool | None" and str(raw).strip().lower() in ("", "auto", "none"):
            return None
        if kind in (bool, "bool", "bool | None"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _BOOL_TRUE:
                return True
            if text in _BOOL_FALSE:
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (Path, "Path"):
            return Path(str(raw)).expanduser()
        if kind in ("tuple[DicomPeer, ...]",):
            items = raw if isinstance(raw, list) else [p for p in str(raw).split(",") if p.strip()]
            return tuple(DicomPeer.parse(p) for p in items)
        return str(raw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot use value {raw!r}") from exc


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, then ``TESSERA_CONFIG`` (TOML), then the environment."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    known = {f.name: f for f in fields(Settings) if f.name != "extra"}
    config_path = env.get(_ENV_PREFIX + "CONFIG")
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                document = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_path}: {exc}") from exc
        section = document.get("tessera", document)
        for key, raw in section.items():
            if key not in known:
                raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
            values[key] = _coerce(key, known[key].type, raw)
    for name, spec in known.items():
        raw_env = env.get(_ENV_PREFIX + name.upper())
        if raw_env is not None and raw_env != "":
            values[name] = _coerce(name, spec.type, raw_env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    if settings.duplicate_policy not in ("reject", "replace", "keep"):
        raise ConfigError("setting duplicate_policy must be reject, replace or keep")
    if not 0 < settings.query_default_limit <= settings.query_max_limit:
        raise ConfigError("setting query_default_limit must be between 1 and query_max_limit")
    if settings.session_idle_timeout <= 0 or settings.session_lifetime <= 0:
        raise ConfigError("settings session_idle_timeout and session_lifetime must be positive (seconds)")
    if min(settings.http_idle_timeout, settings.http_body_timeout, settings.http_max_header_bytes) <= 0:
        raise ConfigError(
            "settings http_idle_timeout, http_body_timeout and http_max_header_bytes must be positive"
        )
    if min(settings.job_threads, settings.job_lease_seconds, settings.job_max_attempts) <= 0:
        raise ConfigError("settings job_threads, job_lease_seconds and job_max_attempts must be positive")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("settings tls_cert and tls_key must be given together")
    if bool(settings.dicom_tls_cert) != bool(settings.dicom_tls_key):
        raise ConfigError("settings dicom_tls_cert and dicom_tls_key must be given together")
    if settings.dicom_tls_ca and not settings.dicom_tls_cert:
        raise ConfigError("setting dicom_tls_ca needs dicom_tls_cert and dicom_tls_key")
    if len(settings.ae_title) > 16 or not settings.ae_title.strip():
        raise ConfigError("setting ae_title must be 1-16 characters")
    return settings
