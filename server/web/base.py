"""The base handler every route uses: problem+json errors, security headers, executor access."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from tornado.web import HTTPError, RequestHandler

from server.context import ServerContext

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


class BaseHandler(RequestHandler):
    ctx: ServerContext

    def initialize(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)

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
        elif isinstance(exc, HTTPError):
            body["title"] = (
                HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ else "Error"
            )
            if exc.log_message and status_code < 500:
                body["detail"] = exc.log_message % exc.args if exc.args else exc.log_message
        else:
            body["title"] = "Internal Server Error"
            body["detail"] = "the server failed on this request; it is logged and the server keeps serving"
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/problem+json")
        self.finish(json.dumps(body))


class NotFoundHandler(BaseHandler):
    """Every unknown path answers 404 as problem+json, never a stack trace or an HTML page."""

    def prepare(self) -> None:
        raise ProblemError(404, f"no resource at {self.request.path}")
