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
from server.security.audit import (
    EMERGENCY_OVERRIDE_STOPPED,
    SECURITY_ALERT,
    AuditRecord,
    AuditTrail,
)
from server.security.groups import (
    Scope,
    StudyGroups,
    StudyLocator,
    hidden_uids,
    may_store,
    read_store_attributes,
)

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
        self.groups = StudyGroups(self.accounts.sessions)
        self.locator = StudyLocator()
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

    def close_expired_emergencies(self) -> int:
        """Blocking: lapsed break-glass periods are ended and each recorded once as stopped."""
        ended = self.groups.close_expired()
        for emergency in ended:
            self.record(
                AuditRecord(
                    SECURITY_ALERT,
                    "E",
                    event_type=EMERGENCY_OVERRIDE_STOPPED,
                    outcome_detail=(
                        f"emergency access of {emergency.username} expired at "
                        f"{emergency.expires_at:%Y-%m-%dT%H:%M:%SZ}"
                    ),
                    username=emergency.username,
                    auth_method="expiry",
                )
            )
        return len(ended)

    def hidden_uids(self, scope: Scope, uids: list[str]) -> list[str]:
        """Blocking: the named UIDs whose studies lie outside the scope."""
        with self.accounts.sessions() as session:
            return hidden_uids(session, self.locator, scope, uids)

    def may_store_files(self, scope: Scope, paths: list[Any]) -> list[tuple[bool, str, str]]:
        """Blocking: per file about to be stored, whether the scope lets this user store it (with
        its SOP class and instance UIDs, for the refusal)."""
        datasets = [read_store_attributes(p) for p in paths]
        with self.accounts.sessions() as session:
            allowed = may_store(session, scope, datasets)
        return [
            (
                ok,
                str(ds.get("SOPClassUID", "")) if ds else "",
                str(ds.get("SOPInstanceUID", "")) if ds else "",
            )
            for ok, ds in zip(allowed, datasets, strict=True)
        ]

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
