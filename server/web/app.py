"""Assembles the tornado application: DICOMweb, the JSON API, modules, the frontend."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tornado.log import access_log
from tornado.routing import PathMatches, Rule, RuleRouter
from tornado.web import Application, HTTPError, RedirectHandler, RequestHandler, StaticFileHandler

from server.context import ServerContext
from server.dicomweb.routes import dicomweb_routes
from server.security.admin import (
    NAME,
    EmergencyHandler,
    GroupHandler,
    GroupsHandler,
    UserActionHandler,
    UsersHandler,
)
from server.security.handlers import AuditExportHandler, AuditHandler, SessionHandler
from server.web.api import DeidentifiedExportHandler, HealthHandler, JobsHandler, ModulesHandler, StudyHandler
from server.web.base import CONTENT_SECURITY_POLICY, HSTS, NotFoundHandler

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATIC_DIR = PROJECT_ROOT / "static"
OPENSEADRAGON_DIR = PROJECT_ROOT / "node_modules" / "openseadragon" / "build" / "openseadragon"
OPENAPI = Path(__file__).with_name("openapi.json")
UID = r"[0-9]+(?:\.[0-9]+)*"


class FrontendFile(StaticFileHandler):
    """Static files with the same security headers as every other response."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if self.request.protocol == "https":
            self.set_header("Strict-Transport-Security", HSTS)

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        if "\x00" in path:  # os.path would raise ValueError: a 500 instead of a refusal
            raise HTTPError(400, "a file path with a NUL byte")
        return str(super().get_absolute_path(root, path))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/problem+json")
        self.finish(json.dumps({"type": "about:blank", "status": status_code, "title": self._reason}))


def log_request(handler: RequestHandler) -> None:
    """Access log: failures always, successes at DEBUG (a tile server answers thousands a second)."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        request = handler.request
        access_log.log(
            level,
            "%d %s %s (%s) %.2fms",
            status,
            request.method,
            request.uri,
            request.remote_ip,
            1000 * request.request_time(),
        )


def make_app(ctx: ServerContext) -> Application:
    k = {"ctx": ctx}
    # Each module's routes sit behind one prefix rule, checked first: a tile request is matched
    # after a handful of regexes, not after every core route.
    routes: list[Any] = []
    registry = ctx.registry
    for module in registry.modules if registry is not None else []:
        module_routes: list[Any] = []
        for spec in module.routes(ctx):
            pattern = f"/{module.id}/{spec.pattern.lstrip('/')}"
            module_routes.append((pattern, spec.handler, {"ctx": ctx, **spec.kwargs}))
        if module.static_dir is not None:
            module_routes.append(
                (rf"/{module.id}/static/(.*)$", FrontendFile, {"path": str(module.static_dir)})
            )
        routes.append(Rule(PathMatches(rf"/{module.id}/.*"), module_routes))
    routes += [
        *dicomweb_routes(ctx),
        (rf"/api/studies/({UID})/?$", StudyHandler, k),
        (rf"/api/studies/({UID})/deidentified-export/?$", DeidentifiedExportHandler, k),
        (r"/api/modules/?$", ModulesHandler, k),
        (r"/api/health/?$", HealthHandler, k),
        (r"/api/jobs/?$", JobsHandler, k),
        (r"/api/session/?$", SessionHandler, k),
        (r"/api/audit/?$", AuditHandler, k),
        (r"/api/audit/export/?$", AuditExportHandler, k),
        (r"/api/emergency/?$", EmergencyHandler, k),
        (r"/api/users/?$", UsersHandler, k),
        (rf"/api/users/{NAME}/(disable|enable|password|logout|groups)/?$", UserActionHandler, k),
        (r"/api/groups/?$", GroupsHandler, k),
        (rf"/api/groups/{NAME}/?$", GroupHandler, k),
        (r"/admin$", RedirectHandler, {"url": "/static/admin.html"}),
        (r"/login$", RedirectHandler, {"url": "/static/login.html"}),
        (r"/audit$", RedirectHandler, {"url": "/static/audit.html"}),
        (r"/api/(openapi\.json)$", FrontendFile, {"path": str(OPENAPI.parent)}),
        (r"/()$", FrontendFile, {"path": str(STATIC_DIR), "default_filename": "index.html"}),
        (r"/viewer$", RedirectHandler, {"url": "/viewer/"}),
        (
            r"/viewer/()$",
            FrontendFile,
            {"path": str(STATIC_DIR / "viewer"), "default_filename": "index.html"},
        ),
        (r"/static/(.*)$", FrontendFile, {"path": str(STATIC_DIR)}),
        (r"/vendor/openseadragon/(.*)$", FrontendFile, {"path": str(OPENSEADRAGON_DIR)}),
    ]
    return Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=k,
        compress_response=True,
        xsrf_cookies=False,
        serve_traceback=False,
        log_function=log_request,
    )


def handler_rules(app: Application) -> list[Rule]:
    """Every rule that leads to a handler, module rules included (the prefix rules unfolded)."""
    rules: list[Rule] = []
    pending = list(app.wildcard_router.rules)
    while pending:
        rule = pending.pop(0)
        if isinstance(rule.target, RuleRouter):
            pending[:0] = rule.target.rules
        else:
            rules.append(rule)
    return rules
