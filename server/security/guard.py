"""The one authorization check every HTTP handler runs, and what each request puts in the audit trail.

``BaseHandler.prepare`` calls :func:`authorize` before any handler code (subclasses that
override ``prepare`` are wrapped so they cannot skip it). The audit record is written by
``BaseHandler`` at the moment the response would first leave the server (first
``flush``/``finish``): the outcome is known then, and the client never receives data
whose access is not yet on disk. See docs/security.md.
"""

from __future__ import annotations

import re
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
from server.security.policy import SAFE_METHODS, Permission, allows, default_permission
from server.security.service import SecurityService, security_of

if TYPE_CHECKING:
    from tornado.web import RequestHandler

SESSION_COOKIE = "tessera_session"
XSRF_COOKIE = "tessera_xsrf"  # readable by the page's scripts, echoed in XSRF_HEADER
XSRF_HEADER = "X-XSRF-Token"
DOTTED_UID = re.compile(r"[0-9]+(?:\.[0-9]+)+")
MAX_NAMED_UIDS = 10
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
    return identity


async def _credentials(handler: Any, *, strict: bool) -> Identity | None:
    service = security_of(handler.ctx)
    header = handler.request.headers.get("Authorization")
    if header:
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        identity = None
        if scheme.lower() == "bearer" and secret and len(secret) < 256:
            identity = await handler.ctx.run_blocking(service.accounts.resolve_token, secret)
        if identity is None and strict:
            raise AccessDenied(
                401,
                "the API token is unknown, revoked or expired",
                'Bearer realm="tessera", error="invalid_token"',
            )
        return identity
    cookie = handler.get_cookie(SESSION_COOKIE)
    if cookie and len(cookie) < 256:
        return await handler.ctx.run_blocking(
            service.accounts.resolve_session, cookie, handler.ctx.settings.session_idle_timeout
        )
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
        if isinstance(value, str) and DOTTED_UID.fullmatch(value):
            others.append(value)
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
    record: AuditRecord, studies: list[str], others: list[str], handler: Any
) -> tuple[Any, ...] | None:
    """Reads of one object by one user (tiles, frames) are recorded once per window; nothing else is."""
    if record.event_id != INSTANCES_ACCESSED or record.action != "R":
        return None
    who = record.username or record.client_address
    return (who, record.auth_method, type(handler).__name__, tuple(studies), tuple(others), record.outcome)


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
