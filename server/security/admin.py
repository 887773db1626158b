"""HTTP API for administrators (users, study groups, DIMSE accounts) and for break-glass.

Every change is recorded in the audit trail as a Security Alert (110113) before the answer
leaves; if the record cannot be written the change is still made (it is already committed)
but the caller gets 503, as for every other unrecorded access.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from server.security.accounts import AccountError, Identity
from server.security.audit import (
    EMERGENCY_OVERRIDE_STARTED,
    EMERGENCY_OVERRIDE_STOPPED,
    MINOR_FAILURE,
    SECURITY_ALERT,
    SECURITY_ROLES_CHANGED,
    SUCCESS,
    USER_SECURITY_ATTRIBUTES_CHANGED,
    AuditRecord,
)
from server.security.groups import DEFAULT_EMERGENCY_MINUTES, Emergency, GroupError
from server.security.policy import Permission, Role
from server.security.service import SecurityService, security_of
from server.web.base import BaseHandler, ProblemError

NAME = r"((?:[A-Za-z0-9._@-]|%40){1,64})"  # clients may send "@" percent-encoded; tornado unquotes
MAX_BODY = 256 * 1024


class SecurityHandler(BaseHandler):
    """Shared: JSON bodies, and one audit record per change, written before the answer."""

    audit_events: ClassVar[Mapping[str, tuple[str, str, str]] | None] = {}  # recorded by each handler

    @property
    def service(self) -> SecurityService:
        return security_of(self.ctx)

    def body(self) -> dict[str, Any]:
        if len(self.request.body or b"") > MAX_BODY:
            raise ProblemError(413, f"the request body exceeds {MAX_BODY} bytes")
        try:
            document = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise ProblemError(400, "the body is not JSON") from exc
        if not isinstance(document, dict):
            raise ProblemError(400, "the body is a JSON object")
        if _holds_nul(document):
            raise ProblemError(400, "text in the body may not contain NUL characters")
        return document

    async def record(self, event_type: str, detail: str, outcome: int = SUCCESS) -> None:
        identity = self.identity
        record = AuditRecord(
            SECURITY_ALERT,
            "E",
            event_type=event_type,
            outcome=outcome,
            outcome_detail=detail[:256],
            username=identity.username if identity else "",
            role=identity.role.value if identity else "",
            auth_method=identity.method if identity else "",
            client_address=self.request.remote_ip or "",
            http_method=self.request.method or "",
            resource=self.request.uri or "",
        )
        try:
            await self.run_blocking(self.service.record, record)
        except Exception as exc:
            raise ProblemError(503, "the change could not be recorded in the audit trail") from exc

    async def change(self, event_type: str, detail: str, fn: Any, *args: Any) -> Any:
        """Do a blocking change; record it (or the refusal) in the audit trail either way."""
        try:
            result = await self.run_blocking(fn, *args)
        except (AccountError, GroupError) as exc:
            await self.record(event_type, f"refused: {detail}: {exc}", MINOR_FAILURE)
            status = 404 if str(exc).startswith(("no user", "no study group")) else 409
            raise ProblemError(status, str(exc)) from exc
        await self.record(event_type, detail)
        return result


def _holds_nul(value: Any) -> bool:
    """Whether a JSON document has NUL in any key or string (PostgreSQL stores no NUL in text)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _user_document(info: Any, groups: list[str]) -> dict[str, Any]:
    return {
        "username": info.username,
        "role": info.role.value,
        "full_name": info.full_name,
        "disabled": info.disabled,
        "created_at": info.created_at.isoformat(),
        "active_sessions": info.active_sessions,
        "active_tokens": info.active_tokens,
        "groups": groups,
    }


class UsersHandler(SecurityHandler):
    """GET /api/users: every account; POST: a new one {username, role, password, full_name, groups}."""

    permissions = {"*": Permission.ADMIN}

    async def get(self) -> None:
        users, groups = await self.run_blocking(
            lambda: (self.service.accounts.list_users(), self.service.groups.user_groups())
        )
        self.set_header("Cache-Control", "no-store")
        self.write_json({"users": [_user_document(u, groups.get(u.username, [])) for u in users]})

    async def post(self) -> None:
        body = self.body()
        try:
            username = str(body["username"])
            role = Role(str(body["role"]))
            password = str(body["password"])
        except (KeyError, ValueError) as exc:
            raise ProblemError(
                400, "send username, role (administrator, clinician, viewer, auditor) and password"
            ) from exc
        full_name = str(body.get("full_name", ""))[:128]
        groups = body.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ProblemError(400, "groups is a list of group names")

        def add() -> None:
            known = {g.name for g in self.service.groups.list_groups()}
            for name in groups:
                if name not in known:
                    raise GroupError(f"no study group {name!r}")
            self.service.accounts.add_user(username, role, password, full_name)
            if groups:
                self.service.groups.set_user_groups(username, groups)

        detail = f"user {username} added with role {role.value}" + (
            f", groups {', '.join(groups)}" if groups else ""
        )
        await self.change(SECURITY_ROLES_CHANGED, detail, add)
        self.write_json({"username": username, "role": role.value, "groups": groups}, status=201)


class UserActionHandler(SecurityHandler):
    """POST /api/users/{name}/(disable|enable|password|logout|groups)."""

    permissions = {"*": Permission.ADMIN}

    async def post(self, username: str, action: str) -> None:
        accounts, groups = self.service.accounts, self.service.groups
        if action in ("disable", "enable"):
            if action == "disable" and self.identity is not None and self.identity.username == username:
                raise ProblemError(409, "an administrator cannot disable their own account here")
            await self.change(
                USER_SECURITY_ATTRIBUTES_CHANGED,
                f"user {username} {action}d",
                accounts.set_disabled,
                username,
                action == "disable",
            )
            self.write_json({"username": username, "disabled": action == "disable"})
        elif action == "password":
            password = str(self.body().get("password", ""))
            await self.change(
                USER_SECURITY_ATTRIBUTES_CHANGED,
                f"password of {username} reset",
                accounts.set_password,
                username,
                password,
            )
            self.write_json({"username": username, "password_reset": True})
        elif action == "logout":
            ended = await self.change(
                USER_SECURITY_ATTRIBUTES_CHANGED,
                f"sessions of {username} revoked",
                accounts.revoke_sessions,
                username,
            )
            self.write_json({"username": username, "sessions_revoked": ended})
        elif action == "groups":
            names = self.body().get("groups")
            if not isinstance(names, list) or not all(isinstance(g, str) for g in names):
                raise ProblemError(400, 'send {"groups": [names]} (an empty list lifts the limit)')
            given = await self.change(
                SECURITY_ROLES_CHANGED,
                f"study groups of {username} set to [{', '.join(names)}]",
                groups.set_user_groups,
                username,
                names,
            )
            self.write_json({"username": username, "groups": given})
        else:
            raise ProblemError(404, f"no action {action!r} on users")


class GroupsHandler(SecurityHandler):
    """GET /api/groups: study groups with their rules and members."""

    permissions = {"*": Permission.ADMIN}

    async def get(self) -> None:
        groups = await self.run_blocking(self.service.groups.list_groups)
        self.set_header("Cache-Control", "no-store")
        self.write_json(
            {
                "groups": [
                    {"name": g.name, "description": g.description, "rules": g.rules, "members": g.members}
                    for g in groups
                ]
            }
        )


class GroupHandler(SecurityHandler):
    """PUT /api/groups/{name} {rules, description}: create or replace; DELETE: remove."""

    permissions = {"*": Permission.ADMIN}

    async def put(self, name: str) -> None:
        body = self.body()
        rules = body.get("rules")
        if not isinstance(rules, dict):
            raise ProblemError(400, 'send {"rules": {"modalities": ["SM"], ...}, "description": "..."}')
        description = str(body.get("description", ""))
        info = await self.change(
            SECURITY_ROLES_CHANGED,
            f"study group {name} set to {json.dumps(rules, sort_keys=True)}",
            self.service.groups.save_group,
            name,
            rules,
            description,
        )
        self.write_json({"name": info.name, "description": info.description, "rules": info.rules})

    async def delete(self, name: str) -> None:
        await self.change(
            SECURITY_ROLES_CHANGED, f"study group {name} removed", self.service.groups.delete_group, name
        )
        self.set_status(204)


def emergency_document(identity: Identity | None) -> dict[str, Any]:
    """What the page shows: whether the account is limited and any break-glass period."""
    if identity is None:
        return {"limited": False, "groups": [], "emergency": None}
    emergency = identity.emergency
    return {
        "limited": identity.scope is not None or emergency is not None,
        "groups": identity.scope.names if identity.scope is not None else [],
        "emergency": _emergency_json(emergency) if emergency else None,
    }


def _emergency_json(emergency: Emergency) -> dict[str, Any]:
    return {
        "reason": emergency.reason,
        "started_at": emergency.started_at.isoformat(),
        "expires_at": emergency.expires_at.isoformat(),
    }


class EmergencyHandler(SecurityHandler):
    """Break-glass. GET: state; POST {reason, minutes}: lift the group limits for a while;
    DELETE: end it now. Start and stop are Security Alerts 110127 / 110138."""

    permissions = {"*": Permission.SIGNED_IN}

    async def get(self) -> None:
        await self.run_blocking(self.service.close_expired_emergencies)
        self.set_header("Cache-Control", "no-store")
        self.write_json(emergency_document(self.identity))

    async def post(self) -> None:
        identity = self.identity
        if identity is None or identity.user_id is None:
            raise ProblemError(409, "authentication is off: no account is limited to study groups")
        body = self.body()
        reason = str(body.get("reason", ""))
        try:
            minutes = int(body.get("minutes", DEFAULT_EMERGENCY_MINUTES))
        except (TypeError, ValueError) as exc:
            raise ProblemError(400, "minutes is a whole number") from exc
        await self.run_blocking(self.service.close_expired_emergencies)
        try:
            emergency = await self.run_blocking(
                self.service.groups.start_emergency, identity.user_id, reason, minutes
            )
        except GroupError as exc:
            await self.record(EMERGENCY_OVERRIDE_STARTED, f"refused: {exc}", MINOR_FAILURE)
            raise ProblemError(
                400 if "reason" in str(exc) or "minutes" in str(exc) else 409, str(exc)
            ) from exc
        try:
            await self.record(
                EMERGENCY_OVERRIDE_STARTED,
                f"until {emergency.expires_at:%Y-%m-%dT%H:%M:%SZ}; reason: {emergency.reason}",
            )
        except ProblemError:
            await self.run_blocking(self.service.groups.stop_emergency, identity.user_id)  # fail closed
            raise
        self.write_json({"limited": True, "emergency": _emergency_json(emergency)}, status=201)

    async def delete(self) -> None:
        identity = self.identity
        if identity is None or identity.user_id is None:
            raise ProblemError(409, "authentication is off: there is no emergency to end")
        emergency = await self.run_blocking(self.service.groups.stop_emergency, identity.user_id)
        if emergency is None:
            raise ProblemError(409, "no emergency access is active for this account")
        await self.record(EMERGENCY_OVERRIDE_STOPPED, f"ended by the user; reason was: {emergency.reason}")
        self.set_status(204)
