"""One object per process giving handlers, the CLI and (later) DIMSE the accounts and the audit trail.

It has its own engine on the index database so that, on SQLite, audit commits are
fsync'd (``synchronous=FULL``) while the archive's bulk ingest keeps its faster setting.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import Engine, event

from server.archive.database import make_engine, migrate
from server.config import Settings
from server.security.accounts import Accounts
from server.security.audit import AuditRecord, AuditTrail

_lock = threading.Lock()
EXTRAS_KEY = "security"


def _sqlite_full_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=FULL")  # an audit record that was acknowledged survives power loss
    cursor.close()


class SecurityService:
    def __init__(self, settings: Settings, *, run_migrations: bool = False) -> None:
        self.settings = settings
        if not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(settings.effective_database_url)
        if self.engine.dialect.name == "sqlite" and settings.audit_fsync:
            event.listen(self.engine, "connect", _sqlite_full_sync)
        if run_migrations:
            migrate(self.engine)
        self.accounts = Accounts(self.engine)
        self.audit = AuditTrail(self.engine)
        self._recent: dict[tuple[Any, ...], float] = {}
        self._recent_lock = threading.Lock()

    def record(self, record: AuditRecord) -> int:
        return self.audit.append(record)

    def recently_recorded(self, key: tuple[Any, ...]) -> bool:
        """Whether the same read by the same user was recorded within the coalescing window."""
        window = self.settings.audit_coalesce_seconds
        if window <= 0:
            return False
        with self._recent_lock:
            seen = self._recent.get(key)
            return seen is not None and time.monotonic() - seen < window

    def remember(self, key: tuple[Any, ...]) -> None:
        if self.settings.audit_coalesce_seconds <= 0:
            return
        now = time.monotonic()
        with self._recent_lock:
            if len(self._recent) > 50_000:
                cutoff = now - self.settings.audit_coalesce_seconds
                self._recent = {k: t for k, t in self._recent.items() if t > cutoff}
            self._recent[key] = now

    def close(self) -> None:
        self.engine.dispose()


def security_of(ctx: Any) -> SecurityService:
    """The process's service for a ServerContext, created on first use (the schema is migrated by then)."""
    service = ctx.extras.get(EXTRAS_KEY)
    if service is None:
        with _lock:
            service = ctx.extras.get(EXTRAS_KEY)
            if service is None:
                service = SecurityService(ctx.settings)
                ctx.extras[EXTRAS_KEY] = service
    return service


def close_security(ctx: Any) -> None:
    service = ctx.extras.pop(EXTRAS_KEY, None)
    if service is not None:
        service.close()
