"""HTTP API for logging in and out and for reading the audit trail (auditors)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from server.security import guard
from server.security.admin import emergency_document
from server.security.audit import (
    AUDIT_LOG_USED,
    LOGIN,
    LOGOUT,
    MINOR_FAILURE,
    SUCCESS,
    USER_AUTHENTICATION,
    AuditFilter,
    AuditRecord,
    csv_header,
    to_csv_row,
    to_json_line,
)
from server.security.policy import Permission
from server.security.service import security_of
from server.web.base import BaseHandler, ProblemError

MAX_PAGE = 1000


class SessionHandler(BaseHandler):
    """/api/session: GET who am I, POST log in (JSON name + password), DELETE log out."""

    permissions = {"GET": Permission.PUBLIC, "POST": Permission.PUBLIC, "*": Permission.SIGNED_IN}
    audit_events: ClassVar[Mapping[str, tuple[str, str, str]] | None] = {}  # login/logout: recorded below

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if not self.ctx.settings.authentication_required:
            self.write_json({"auth_enabled": False, "username": None, "role": "administrator"})
            return
        if self.identity is None:
            raise ProblemError(401, "not logged in")
        if self.identity.scope is not None:  # a limited user's lapsed emergency is recorded as stopped
            await self.run_blocking(security_of(self.ctx).close_expired_emergencies)
        self.write_json(
            {
                "auth_enabled": True,
                "username": self.identity.username,
                "role": self.identity.role.value,
                "method": self.identity.method,
                # limited, groups, emergency: only for accounts limited to study groups
                **(
                    emergency_document(self.identity)
                    if self.identity.user_id is not None
                    and (self.identity.scope is not None or self.identity.emergency is not None)
                    else {}
                ),
            }
        )

    async def post(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if not self.ctx.settings.authentication_required:
            raise ProblemError(409, "authentication is off on this server; there is nothing to log in to")
        try:
            body = json.loads(self.request.body or b"{}")
            username, password = str(body["username"]), str(body["password"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProblemError(400, 'send JSON {"username": ..., "password": ...}') from exc
        if not username or len(username) > 64 or not password or len(password) > 1024:
            raise ProblemError(400, "user name and password are required")
        if "\x00" in username:  # no account has one, and PostgreSQL cannot even look it up
            raise ProblemError(400, "a user name may not contain NUL characters")
        service = security_of(self.ctx)
        result = await self.run_blocking(
            lambda: service.accounts.login(
                username,
                password,
                lifetime=self.ctx.settings.session_lifetime,
                client_address=self.request.remote_ip or "",
                user_agent=self.request.headers.get("User-Agent", ""),
            )
        )
        identity = result.identity
        record = AuditRecord(
            USER_AUTHENTICATION,
            "E",
            event_type=LOGIN,
            outcome=SUCCESS if identity else MINOR_FAILURE,
            outcome_detail="logged in" if identity else result.reason,
            username=result.username,
            role=identity.role.value if identity else "",
            auth_method="password",
            client_address=self.request.remote_ip or "",
            http_method="POST",
            resource=self.request.uri or "",
        )
        await self.run_blocking(service.record, record)
        if identity is None:
            raise ProblemError(401, "wrong user name or password, or the account is locked or disabled")
        secure = self.request.protocol == "https"
        self.set_cookie(
            guard.SESSION_COOKIE,
            result.session_secret,
            httponly=True,
            samesite="Strict",
            secure=secure,
            path="/",
        )
        self.set_cookie(
            guard.XSRF_COOKIE,
            identity.xsrf_token or "",
            httponly=False,
            samesite="Strict",
            secure=secure,
            path="/",
        )
        self.write_json({"auth_enabled": True, "username": identity.username, "role": identity.role.value})

    async def delete(self) -> None:
        identity = self.identity
        if identity is None or identity.session_id is None:
            raise ProblemError(400, "this request is not made with a login session")
        service = security_of(self.ctx)
        await self.run_blocking(service.accounts.logout, identity.session_id)
        guard.credential_cache.forget("session", self.get_cookie(guard.SESSION_COOKIE) or "")
        await self.run_blocking(
            service.record,
            AuditRecord(
                USER_AUTHENTICATION,
                "E",
                event_type=LOGOUT,
                username=identity.username,
                role=identity.role.value,
                auth_method=identity.method,
                client_address=self.request.remote_ip or "",
                http_method="DELETE",
                resource=self.request.uri or "",
                outcome_detail="logged out",
            ),
        )
        self.clear_cookie(guard.SESSION_COOKIE, path="/")
        self.clear_cookie(guard.XSRF_COOKIE, path="/")
        self.set_status(204)


def _time(text: str, *, end: bool) -> dt.datetime:
    """ISO date or date-time; a bare date as an end bound means the end of that day."""
    try:
        if len(text) == 10:
            day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
            return day + dt.timedelta(days=1) if end else day
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProblemError(400, f"{text!r} is not an ISO 8601 date or date-time") from exc
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


class AuditBase(BaseHandler):
    permissions = {"*": Permission.AUDIT}
    audit_events = {"GET": (AUDIT_LOG_USED, "R", "")}

    def audit_filter(self) -> AuditFilter:
        def arg(name: str) -> str | None:
            value = self.get_query_argument(name, None)
            if value and "\x00" in value:  # PostgreSQL refuses NUL in text
                raise ProblemError(400, f"{name} may not contain NUL characters")
            return value.strip() if value and value.strip() else None

        outcome = arg("outcome")
        since, until = arg("from"), arg("to")
        if outcome is not None and outcome not in ("0", "4", "8", "12"):
            raise ProblemError(400, "outcome is 0, 4, 8 or 12 (PS3.15 EventOutcomeIndicator)")
        return AuditFilter(
            username=arg("user"),
            event_id=arg("event"),
            study_uid=arg("study"),
            patient_id=arg("patient"),
            since=_time(since, end=False) if since else None,
            until=_time(until, end=True) if until else None,
            outcome=int(outcome) if outcome is not None else None,
        )


class AuditHandler(AuditBase):
    """GET /api/audit?user=&event=&study=&patient=&from=&to=&outcome=&offset=&limit= (newest first)."""

    async def get(self) -> None:
        flt = self.audit_filter()
        try:
            offset = max(0, int(self.get_query_argument("offset", "0")))
            limit = min(MAX_PAGE, max(1, int(self.get_query_argument("limit", "100"))))
        except ValueError as exc:
            raise ProblemError(400, "offset and limit are whole numbers") from exc
        if offset >= 2**31:  # beyond any SQL integer: the database would fail, not answer
            raise ProblemError(400, "offset must be below 2147483648")
        service = security_of(self.ctx)
        await self.run_blocking(service.close_expired_emergencies)  # lapsed break-glass shows as stopped
        records, total = await self.run_blocking(lambda: service.audit.query(flt, offset=offset, limit=limit))
        self.set_header("Cache-Control", "no-store")
        self.write_json({"total": total, "offset": offset, "limit": limit, "records": records})


class AuditExportHandler(AuditBase):
    """GET /api/audit/export?format=jsonl|csv&(filters): every matching record, oldest first."""

    async def get(self) -> None:
        flt = self.audit_filter()
        kind = self.get_query_argument("format", "jsonl")
        if kind not in ("jsonl", "csv"):
            raise ProblemError(400, "format is jsonl or csv")
        service = security_of(self.ctx)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.set_header("Cache-Control", "no-store")
        if kind == "csv":
            self.set_header("Content-Type", "text/csv; charset=utf-8")
        else:
            self.set_header("Content-Type", "application/jsonl; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="tessera-audit-{stamp}.{kind}"')
        batch: list[dict[str, Any]] = []
        iterator = service.audit.iterate(flt)
        if kind == "csv":
            self.write(csv_header())

        def next_batch() -> list[dict[str, Any]]:
            out = []
            for document in iterator:
                out.append(document)
                if len(out) >= 500:
                    break
            return out

        while True:
            batch = await self.run_blocking(next_batch)
            if not batch:
                break
            self.write("".join(to_csv_row(d) if kind == "csv" else to_json_line(d) for d in batch))
            await self.flush()
        self.finish()
