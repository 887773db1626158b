"""The base handler every route uses: problem+json errors, security headers, executor access,
the authorization check (server/security/guard.py) and the audit record of each request."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from tornado.httputil import HTTPHeaders, format_timestamp
from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler

from server.context import ServerContext
from server.security import guard
from server.security.accounts import Identity
from server.security.policy import SAFE_METHODS, Permission

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class ProblemError(HTTPError):
    """An error a client caused or must know about, answered as application/problem+json."""

    def __init__(self, status: int, detail: str, title: str | None = None, **extra: Any) -> None:
        super().__init__(status, log_message=None)
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.extra = extra


HSTS = "max-age=31536000; includeSubDomains"
_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header for this second (formatting it per request costs more than a warm tile)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_timestamp(now))
    return _date_cache[1]


RETRY_AFTER_SECONDS = "5"  # on every 503: the database or disk is expected back shortly


def database_unavailable(exc: BaseException | None) -> bool:
    """The index database cannot be reached (restart, lost connection, pool exhausted): answer 503."""
    if isinstance(exc, OperationalError | InterfaceError | SQLAlchemyTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _authorized_first(prepare: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    """Wrap a subclass's own ``prepare`` so the authorization check always runs before it."""

    @functools.wraps(prepare)
    async def wrapper(self: BaseHandler) -> None:
        await self._guarded_prepare(prepare)

    wrapper._authorized_first = True  # type: ignore[attr-defined]
    return wrapper


class BaseHandler(RequestHandler):
    ctx: ServerContext
    # Method ("GET", "*", ...) -> what the caller needs; unset: reading patient data needs READ,
    # changing anything needs WRITE (server/security/policy.py).
    permissions: ClassVar[Mapping[str, Permission]] = {}
    # Method -> (event id, action, event type) for the audit trail; None: derived from the route.
    audit_events: ClassVar[Mapping[str, tuple[str, str, str]] | None] = None
    identity: Identity | None = None
    audit_notes: dict[str, list[str]] | None = None
    _authorized = False
    _audit_state: str = "open"  # open -> writing -> done
    _audit_task: asyncio.Future[None] | None = None
    _finishing: asyncio.Future[None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("prepare")
        if own is not None and not getattr(own, "_authorized_first", False):
            cls.prepare = _authorized_first(own)  # type: ignore[method-assign,assignment]

    def initialize(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def clear(self) -> None:
        """Tornado's reset of the response, minus two per-request costs a tile server feels: the
        Date header is formatted once a second, and no Server header advertises the software."""
        headers = HTTPHeaders()
        headers["Content-Type"] = "text/html; charset=UTF-8"
        headers["Date"] = http_date()
        self._headers = headers
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def set_default_headers(self) -> None:
        headers = self._headers  # constants: no need for set_header's per-value validation
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        if self.request.protocol == "https":
            headers["Strict-Transport-Security"] = HSTS

    async def prepare(self) -> None:
        await self._guarded_prepare(None)

    async def _guarded_prepare(self, own: Callable[..., Any] | None) -> None:
        try:
            await self.authorize()
            result = own(self) if own is not None else None
            if inspect.isawaitable(result):
                await result
        except guard.AccessDenied as exc:
            await self._record_refusal(exc)
            if getattr(type(self), "_stream_request_body", False):
                self._refuse_after_body(exc)
                return
            raise
        except Exception as exc:
            await self._record_refusal(exc)
            raise

    async def _record_refusal(self, exc: Exception) -> None:
        """A request refused in ``prepare`` is recorded now: tornado answers it (and, for a streamed
        upload, decides not to read the body) as soon as ``prepare`` fails, with no time to wait."""
        self.set_status(exc.status_code if isinstance(exc, HTTPError) else 500)
        if self._audit_pending():
            await self._after_audit()

    def _refuse_after_body(self, exc: Exception) -> None:
        """An upload refused for its credentials is read and dropped, then answered: answering first
        would close the connection under a client still sending, which sees a reset, not the 401."""

        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise exc

        self.data_received = lambda _chunk: None  # type: ignore[method-assign,assignment]
        setattr(self, (self.request.method or "GET").lower(), refuse)

    async def authorize(self) -> None:
        """The one access check (idempotent): who is asking, and may that role use this route?"""
        if self._authorized:
            return
        self._authorized = True
        self.identity = await guard.authorize(self)
        self.current_user = self.identity

    def note_audit(self, *, studies: Sequence[str] = (), patients: Sequence[str] = ()) -> None:
        """Identifiers the request touched that its URL does not name (e.g. the studies a STOW stored)."""
        notes = self.audit_notes if self.audit_notes is not None else {"studies": [], "patients": []}
        notes["studies"].extend(studies)
        notes["patients"].extend(patients)
        self.audit_notes = notes

    # -- the audit record goes to disk before the first byte of the response leaves -----------

    def _audit_pending(self) -> bool:
        """Decide (once) whether this response needs a record, and start writing it."""
        if self._audit_state != "open":
            return self._audit_state == "writing"
        spec = guard.audit_spec(self)
        if spec is None:
            self._audit_state = "done"
            return False
        studies, patients, others = guard.named_uids(self)
        key = guard.coalesce_key(self, spec, self.identity, studies, others)
        service = guard.security_of(self.ctx)
        if key is not None and service.recently_recorded(key):  # decided before building a record
            self._audit_state = "done"
            return False
        # A viewer asks for a slide's first screen of tiles at once: they all wait for the one record
        # being written for them, not each for its own committed (fsync'd) record, one after another.
        in_flight: dict[Any, asyncio.Future[None]] = self.ctx.extras.setdefault("web.audit_in_flight", {})
        if key is not None and key in in_flight:
            self._audit_state = "writing"
            self._audit_task = in_flight[key]
            return True
        record = guard.request_record(self, spec, self.identity)
        self._audit_state = "writing"
        self._audit_task = asyncio.ensure_future(
            self.run_blocking(guard.write_request_record, self.ctx, record, studies, patients, others, key)
        )
        if key is not None:
            in_flight[key] = self._audit_task
            self._audit_task.add_done_callback(lambda _done: in_flight.pop(key, None))
        return True

    async def _after_audit(self) -> bool:
        """Wait for the record; False (and a 503 sent) if it could not be written: fail closed."""
        assert self._audit_task is not None
        try:
            await self._audit_task
        except Exception:
            log.exception("audit record not written for %s %s", self.request.method, self.request.uri)
            self._audit_state = "done"
            if not self._headers_written:
                self.clear()
                self.set_status(503)
                self.set_header("Content-Type", "application/problem+json")
                self.set_header("Retry-After", RETRY_AFTER_SECONDS)
                body = {
                    "type": "about:blank",
                    "status": 503,
                    "title": "Service Unavailable",
                    "detail": "the access could not be recorded in the audit trail, so it is refused",
                }
                RequestHandler.finish(self, json.dumps(body))
            return False
        self._audit_state = "done"
        return True

    def flush(self, include_footers: bool = False) -> asyncio.Future[None]:
        if self._audit_pending():

            async def flush_later() -> None:
                if await self._after_audit():
                    await RequestHandler.flush(self, include_footers)  # StreamClosedError reaches the caller

            return asyncio.ensure_future(flush_later())
        return super().flush(include_footers)

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> asyncio.Future[None]:
        if self._finishing is not None:
            return self._finishing
        if self._finished and self._audit_state == "done":  # a 503 already went out instead
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._audit_pending():

            async def finish_later() -> None:
                if await self._after_audit() and not self._finished:
                    with contextlib.suppress(StreamClosedError):  # the client left; the record stands
                        await RequestHandler.finish(self, chunk)

            self._finishing = asyncio.ensure_future(finish_later())
            return self._finishing
        return super().finish(chunk)

    def on_finish(self) -> None:
        if (
            self.request.method not in SAFE_METHODS
            and self._status_code < 400
            and self.request.path.startswith("/api/")
        ):
            guard.credential_cache.clear()  # users, tokens, groups or a break-glass may have changed

    @property
    def username(self) -> str | None:
        """Who made this request, for the documents it writes (None before authorization)."""
        return (self.identity.username or None) if self.identity is not None else None

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.ctx.run_blocking(fn, *args)

    def write_json(self, document: Any, content_type: str = "application/json", status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(json.dumps(document, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body: dict[str, Any] = {"type": "about:blank", "status": status_code}
        if isinstance(exc, ProblemError):
            body.update(title=exc.title, detail=exc.detail, **exc.extra)
        elif isinstance(exc, guard.AccessDenied):
            body.update(title=HTTPStatus(status_code).phrase, detail=exc.detail)
            if exc.challenge:
                self.set_header("WWW-Authenticate", exc.challenge)
        elif isinstance(exc, HTTPError):
            body["title"] = (
                HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ else "Error"
            )
            if exc.log_message and status_code < 500:
                body["detail"] = exc.log_message % exc.args if exc.args else exc.log_message
        elif database_unavailable(exc):  # PostgreSQL restarting, connection lost: a short outage
            status_code = 503
            self.set_status(status_code)
            body.update(status=503, title="Service Unavailable", detail="the index database is unavailable")
        else:
            body["title"] = "Internal Server Error"
            body["detail"] = "the server failed on this request; it is logged and the server keeps serving"
        if status_code == 503:
            self.set_header("Retry-After", RETRY_AFTER_SECONDS)
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/problem+json")
        self.finish(json.dumps(body))


class NotFoundHandler(BaseHandler):
    """Every unknown path answers 404 as problem+json, never a stack trace or an HTML page."""

    permissions = {"*": Permission.PUBLIC}

    async def prepare(self) -> None:
        raise ProblemError(404, f"no resource at {self.request.path}")
