"""The one authorization check every HTTP handler runs, and what each request puts in the audit trail.

``BaseHandler.prepare`` calls :func:`authorize` before any handler code (subclasses that
override ``prepare`` are wrapped so they cannot skip it). The audit record is written by
``BaseHandler`` at the moment the response would first leave the server (first
``flush``/``finish``): the outcome is known then, and the client never receives data
whose access is not yet on disk. See docs/security.md.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import select
from tornado.httputil import HTTPServerRequest
from tornado.web import HTTPError

from server.archive.models import Instance, Patient, Series, Study
from server.security.accounts import LOCAL_IDENTITY, Identity, same_secret
from server.security.audit import (
    EXPORT,
    INSTANCES_ACCESSED,
    INSTANCES_TRANSFERRED,
    QUERY,
    AuditRecord,
    outcome_of_status,
)
from server.security.groups import Scope
from server.security.policy import SAFE_METHODS, Permission, allows, default_permission
from server.security.service import SecurityService, security_of

if TYPE_CHECKING:
    from tornado.web import RequestHandler

SESSION_COOKIE = "tessera_session"
XSRF_COOKIE = "tessera_xsrf"  # readable by the page's scripts, echoed in XSRF_HEADER
XSRF_HEADER = "X-XSRF-Token"
DOTTED_UID = re.compile(r"[0-9]+(?:\.[0-9]+)+")
MAX_NAMED_UIDS = 10
MAX_SCOPED_UIDS = 200  # objects one request of a user limited to study groups may name
# Core routes that carry no patient data (paths are fixed by server/web/app.py).
CORE_PERMISSIONS: tuple[tuple[re.Pattern[str], Permission], ...] = (
    (re.compile(r"/api/health/?"), Permission.PUBLIC),
    (re.compile(r"/api/modules/?"), Permission.SIGNED_IN),
)
ACTIONS = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}

AuditSpec = tuple[str, str, str]  # event id, action, event type


class AccessDenied(HTTPError):
    """401 (who are you?) or 403 (not allowed), answered as problem+json."""

    def __init__(self, status: int, detail: str, challenge: str | None = None) -> None:
        super().__init__(status)
        self.detail = detail
        self.challenge = challenge


def required_permission(handler: RequestHandler) -> Permission:
    method = handler.request.method or "GET"
    declared: Mapping[str, Permission] | None = getattr(type(handler), "permissions", None)
    if declared:
        if method in declared:
            return declared[method]
        if "*" in declared:
            return declared["*"]
    path = handler.request.path
    if path.startswith("/api/"):  # the only paths CORE_PERMISSIONS names: tiles skip the regexes
        for pattern, permission in CORE_PERMISSIONS:
            if pattern.fullmatch(path):
                return permission
    return default_permission(method)


def cross_site(request: HTTPServerRequest) -> bool:
    """A browser says this request comes from another site (CSRF even without a session)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    return (
        origin == "null" or parts.netloc.lower() != request.host.lower() or parts.scheme != request.protocol
    )


async def authorize(handler: Any) -> Identity | None:
    """Establish who the request acts as and refuse it unless that role may use this route."""
    request: HTTPServerRequest = handler.request
    method = request.method or "GET"
    permission = required_permission(handler)
    if method not in SAFE_METHODS and cross_site(request):
        raise AccessDenied(403, "cross-site requests may not change anything here")
    settings = handler.ctx.settings
    if not settings.authentication_required:
        return LOCAL_IDENTITY
    identity = await _credentials(handler, strict=permission is not Permission.PUBLIC)
    handler.identity = identity  # known even when refused below, for the audit record
    if permission is Permission.PUBLIC:
        return identity
    if identity is None:
        raise AccessDenied(401, "log in or send an API token to use this resource", 'Bearer realm="tessera"')
    if identity.method == "session" and method not in SAFE_METHODS:
        sent = request.headers.get(XSRF_HEADER, "")
        if not sent or identity.xsrf_token is None or not same_secret(sent, identity.xsrf_token):
            raise AccessDenied(403, f"missing or wrong {XSRF_HEADER} header for this session")
    if not allows(identity.role, permission):
        raise AccessDenied(403, f"the {identity.role.value} role may not do this")
    if identity.scope is not None and permission in (Permission.READ, Permission.WRITE):
        await _check_scope(handler, identity.scope)
    return identity


async def _check_scope(handler: Any, scope: Scope) -> None:
    """A limited user naming an object of a study outside their groups gets 404, as if it did not
    exist (a 403 would confirm that it does). Lists are filtered in their queries instead."""
    uids = [
        part
        for v in [*(handler.path_args or ()), *(handler.path_kwargs or {}).values()]
        if isinstance(v, str)
        for part in v.split("/")  # an argument may carry a UID inside it: cardiology's group/{series}/{n}
        if DOTTED_UID.fullmatch(part)
    ]
    if not getattr(type(handler), "scope_filters_query", False):
        for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "study", "series", "sop"):
            for raw in handler.request.query_arguments.get(name, []):
                text = raw.decode("utf-8", "replace")
                uids.extend(v for v in re.split(r"[,\\]", text) if DOTTED_UID.fullmatch(v))
    if not uids:
        return
    if len(uids) > MAX_SCOPED_UIDS:  # every named object is checked, so their number is bounded
        raise AccessDenied(400, f"a request may name at most {MAX_SCOPED_UIDS} objects")
    service = security_of(handler.ctx)
    hidden = await handler.ctx.run_blocking(service.hidden_uids, scope, uids)
    if hidden:
        raise AccessDenied(404, "no such object in the archive")


class CredentialCache:
    """Identities recently established in this process, by the secret that established them.

    Only successes are kept, for ``credential_cache_seconds``: a request stream (tiles, frames)
    then costs one database lookup per interval instead of one per request. Logout here forgets
    the secret at once; a revocation made through another process applies within the interval.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[float, Identity]] = {}

    def get(self, kind: str, secret: str) -> Identity | None:
        entry = self._entries.get((kind, secret))
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._entries.pop((kind, secret), None)
            return None
        return entry[1]

    def put(self, kind: str, secret: str, identity: Identity, seconds: float) -> None:
        """Keep ``identity`` for ``seconds``, never past the session's, token's or break-glass end."""
        now = dt.datetime.now(dt.UTC)
        for end in (identity.expires_at, identity.emergency.expires_at if identity.emergency else None):
            if end is not None:
                seconds = min(seconds, (end - now).total_seconds())
        if seconds <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[(kind, secret)] = (time.monotonic() + seconds, identity)

    def forget(self, kind: str, secret: str) -> None:
        self._entries.pop((kind, secret), None)

    def clear(self) -> None:
        """After an administrator's change (disable, revoke, groups): this process re-checks everyone."""
        self._entries.clear()


credential_cache = CredentialCache()


async def _credentials(handler: Any, *, strict: bool) -> Identity | None:
    service = security_of(handler.ctx)
    seconds = handler.ctx.settings.credential_cache_seconds
    header = handler.request.headers.get("Authorization")
    if header:
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        identity = None
        if scheme.lower() == "bearer" and secret and len(secret) < 256:
            identity = credential_cache.get("token", secret)
            if identity is None:
                identity = await handler.ctx.run_blocking(service.accounts.resolve_token, secret)
                if identity is not None:
                    credential_cache.put("token", secret, identity, seconds)
        if identity is None and strict:
            raise AccessDenied(
                401,
                "the API token is unknown, revoked or expired",
                'Bearer realm="tessera", error="invalid_token"',
            )
        return identity
    cookie = handler.get_cookie(SESSION_COOKIE)
    if cookie and len(cookie) < 256:
        identity = credential_cache.get("session", cookie)
        if identity is None:
            idle = handler.ctx.settings.session_idle_timeout
            identity = await handler.ctx.run_blocking(service.accounts.resolve_session, cookie, idle)
            if identity is not None:  # the idle clock is checked at least twice per idle period
                credential_cache.put("session", cookie, identity, min(seconds, idle / 2))
        return identity
    return None


# -- audit -------------------------------------------------------------------------------------


def audit_spec(handler: RequestHandler) -> AuditSpec | None:
    """The audit event a request is, or None for routes that touch no patient data."""
    method = handler.request.method or "GET"
    declared: Mapping[str, AuditSpec] | None = getattr(type(handler), "audit_events", None)
    if declared is not None:
        return declared.get(method)
    if required_permission(handler) not in (Permission.READ, Permission.WRITE):
        return None
    path = handler.request.path.rstrip("/")
    if path.startswith("/dicom-web/"):
        if method == "POST":
            return (INSTANCES_TRANSFERRED, "C", "")
        if path.rsplit("/", 1)[-1] in ("studies", "series", "instances"):
            return (QUERY, "E", "")
        return (INSTANCES_ACCESSED, "R", "")
    if any(part.startswith("export") for part in path.split("/")):
        return (EXPORT, "R", "")  # whatever the method: a copy leaves the archive
    return (INSTANCES_ACCESSED, ACTIONS.get(method, "E"), "")


def request_record(handler: Any, spec: AuditSpec, identity: Identity | None) -> AuditRecord:
    request: HTTPServerRequest = handler.request
    status = handler.get_status()
    reason = getattr(handler, "_reason", "") or ""
    return AuditRecord(
        event_id=spec[0],
        action=spec[1],
        event_type=spec[2],
        outcome=outcome_of_status(status),
        outcome_detail=f"{status} {reason}".strip(),
        username=identity.username if identity else "",
        role=identity.role.value if identity else "",
        auth_method=identity.method if identity else "anonymous",
        client_address=request.remote_ip or "",
        http_method=request.method or "",
        resource=request.uri or "",
    )


def named_uids(handler: Any) -> tuple[list[str], list[str], list[str]]:
    """Study UIDs, patient IDs and other UIDs the request names (path, query, handler notes)."""
    studies: list[str] = []
    patients: list[str] = []
    others: list[str] = []
    kwargs: dict[str, str] = dict(handler.path_kwargs or {})
    if kwargs.get("study"):
        studies.append(kwargs.pop("study"))
    for value in [*(handler.path_args or ()), *kwargs.values()]:
        if isinstance(value, str):
            if DOTTED_UID.fullmatch(value):
                others.append(value)
            elif "/" in value:  # a UID inside an argument, as in cardiology's group/{series}/{n}
                others.extend(part for part in value.split("/") if DOTTED_UID.fullmatch(part))
    arguments = handler.request.query_arguments
    for name, bucket in (("StudyInstanceUID", studies), ("PatientID", patients)):
        for raw in arguments.get(name, []):
            bucket.extend(
                v for v in raw.decode("utf-8", "replace").split(",") if v and "*" not in v and "?" not in v
            )
    for name in ("SeriesInstanceUID", "SOPInstanceUID"):
        for raw in arguments.get(name, []):
            others.extend(v for v in raw.decode("utf-8", "replace").split(",") if DOTTED_UID.fullmatch(v))
    notes = getattr(handler, "audit_notes", None) or {}
    studies.extend(notes.get("studies", ()))
    patients.extend(notes.get("patients", ()))
    return studies[:MAX_NAMED_UIDS], patients[:MAX_NAMED_UIDS], others[:MAX_NAMED_UIDS]


def coalesce_key(
    handler: Any, spec: AuditSpec, identity: Identity | None, studies: list[str], others: list[str]
) -> tuple[Any, ...] | None:
    """Reads of one object by one user (tiles, frames) are recorded once per window; nothing else is.
    Built from the request alone, before any record: a warm tile that is already on record costs
    only this tuple."""
    if spec[0] != INSTANCES_ACCESSED or spec[1] != "R":
        return None
    who = identity.username if identity else ""
    return (
        who or handler.request.remote_ip or "",
        identity.method if identity else "anonymous",
        type(handler).__name__,
        tuple(studies),
        tuple(others),
        outcome_of_status(handler.get_status()),
    )


def write_request_record(
    ctx: Any,
    record: AuditRecord,
    studies: list[str],
    patients: list[str],
    others: list[str],
    key: tuple[Any, ...] | None,
) -> None:
    """Blocking: resolve what the request named to studies and patients, then append the record."""
    service: SecurityService = security_of(ctx)
    study_set = list(dict.fromkeys(studies))
    patient_set = list(dict.fromkeys(patients))
    objects: dict[str, list[str]] = {}
    with ctx.archive.sessions() as session:
        for uid in study_set:
            pid = session.scalar(
                select(Patient.patient_id)
                .join(Study, Study.patient_pk == Patient.id)
                .where(Study.study_instance_uid == uid)
            )
            if pid:
                patient_set.append(pid)
        for uid in dict.fromkeys(others):
            if uid in study_set:
                continue
            row = session.execute(
                select(Study.study_instance_uid, Patient.patient_id)
                .join(Patient, Study.patient_pk == Patient.id)
                .where(Study.study_instance_uid == uid)
            ).first()
            kind = "studies"
            if row is None:
                row = session.execute(
                    select(Study.study_instance_uid, Patient.patient_id)
                    .join(Series, Series.study_pk == Study.id)
                    .join(Patient, Study.patient_pk == Patient.id)
                    .where(Series.series_instance_uid == uid)
                ).first()
                kind = "series"
            if row is None:
                row = session.execute(
                    select(Study.study_instance_uid, Patient.patient_id)
                    .join(Series, Series.study_pk == Study.id)
                    .join(Instance, Instance.series_pk == Series.id)
                    .join(Patient, Study.patient_pk == Patient.id)
                    .where(Instance.sop_instance_uid == uid)
                ).first()
                kind = "instances"
            if row is None:
                objects.setdefault("uids", []).append(uid)
                continue
            study_set.append(row[0])
            if row[1]:
                patient_set.append(row[1])
            if kind != "studies":
                objects.setdefault(kind, []).append(uid)
    record.study_uids = list(dict.fromkeys(study_set))
    record.patient_ids = list(dict.fromkeys(patient_set))
    record.objects = objects
    service.record(record)
    if key is not None:
        service.remember(key)
