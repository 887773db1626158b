"""The OpenAPI document: valid OpenAPI 3.1, and in step with the routes the core app serves.

A route of the core (its handler in a ``server.`` package, not under a module's ``/{id}/``
prefix) that the document lacks fails here, and so does a documented core path no route
serves, so the document cannot silently fall behind the code. Module routes are documented
by their modules.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from tornado.web import RequestHandler

from server.archive.query import ATTRIBUTES
from server.config import Settings
from server.serve import build_context
from server.web.app import OPENAPI, handler_rules, make_app
from tests.conftest import make_settings

DOCUMENT: dict[str, Any] = json.loads(OPENAPI.read_text(encoding="utf-8"))
PATHS: dict[str, dict[str, Any]] = DOCUMENT["paths"]
METHODS = ("get", "post", "put", "patch", "delete")  # HEAD and OPTIONS are not compared
CORE_SEGMENTS = {"api", "dicom-web", "static", "vendor", "viewer"}  # first path segments the core owns

_LITERAL = re.compile(r"(?:[^\\.^$*+?{}\[\]|()]|\\[^A-Za-z0-9])*")


def implemented(handler: type[RequestHandler]) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(RequestHandler, m)}


def _group_end(pattern: str, start: int) -> int:
    """Index of the parenthesis closing the group opened at ``start``."""
    depth, i = 0, start
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 1
        elif ch == "[":
            i += 1
            while pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise AssertionError(f"unbalanced group in {pattern!r}")


def path_templates(pattern: str, handler: type[RequestHandler]) -> list[str]:
    """A tornado route regex as OpenAPI path templates.

    Named groups become ``{name}``; unnamed groups take the name of the handler method's
    positional parameter they are passed as; a group of literal text (or of literal
    alternatives, like ``rendered|thumbnail``) becomes that text (one template each).
    An optional trailing slash is dropped.
    """
    body = pattern.removesuffix("$").removesuffix("/?")
    templates, unnamed, i = [""], 0, 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            pieces, i = [body[i + 1]], i + 2
        elif ch == "(":
            end = _group_end(body, i)
            content = body[i + 1 : end]
            named = re.match(r"\?P<(\w+)>", content)
            if named:
                name, content = named.group(1), content[named.end() :]
            else:
                method = getattr(handler, sorted(implemented(handler))[0])
                name = list(inspect.signature(method).parameters)[1 + unnamed]
                unnamed += 1
            options = content.split("|")
            if all(_LITERAL.fullmatch(o) for o in options):
                pieces = [re.sub(r"\\(.)", r"\1", o) for o in options]
            else:
                pieces = ["{" + name + "}"]
            i = end + 1
        else:
            assert ch not in ".^$*+?{}[]|)", f"cannot translate {pattern!r} to a path template"
            pieces, i = [ch], i + 1
        templates = [t + p for t in templates for p in pieces]
    return templates


def test_path_templates_translation() -> None:
    class Handler(RequestHandler):
        def get(self, study: str) -> None: ...

    assert path_templates(r"/x/(?P<study>[0-9]+(?:\.[0-9]+)*)/(?P<kind>rendered|thumbnail)/?$", Handler) == [
        "/x/{study}/rendered",
        "/x/{study}/thumbnail",
    ]
    assert path_templates(r"/api/studies/([0-9]+(?:\.[0-9]+)*)/?$", Handler) == ["/api/studies/{study}"]
    assert path_templates(r"/api/(openapi\.json)$", Handler) == ["/api/openapi.json"]
    assert path_templates(r"/()$", Handler) == ["/"]


@pytest.fixture(scope="module")
def app_routes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[str, type[RequestHandler], bool]]]:
    """(template, handler, is_core) for every route of the app on a fresh SQLite archive."""
    ctx = build_context(make_settings(Path(tmp_path_factory.mktemp("openapi")) / "data"))
    try:
        app = make_app(ctx)
        module_prefixes = tuple(f"/{m.id}/" for m in (ctx.registry.modules if ctx.registry else []))
        routes = []
        for rule in handler_rules(app):
            pattern, handler = rule.matcher.regex.pattern, rule.target
            if pattern.startswith(module_prefixes):
                continue  # the module's business
            core = handler.__module__.startswith("server.")
            routes.extend((t, handler, core) for t in path_templates(pattern, handler))
        yield routes
    finally:
        ctx.executor.shutdown(wait=True)
        ctx.archive.close()


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate(DOCUMENT)


def test_paths_are_in_alphabetical_order() -> None:
    assert list(PATHS) == sorted(PATHS)


def test_every_core_route_is_documented(app_routes: list[tuple[str, type[RequestHandler], bool]]) -> None:
    missing = []
    for template, handler, core in app_routes:
        if not core:
            continue
        documented = set(PATHS.get(template, {})) & set(METHODS)
        for method in sorted(implemented(handler) - documented):
            missing.append(f"{method.upper()} {template} ({handler.__module__}.{handler.__qualname__})")
    assert not missing, "routes missing from server/web/openapi.json:\n" + "\n".join(missing)


def test_every_documented_core_path_is_served(
    app_routes: list[tuple[str, type[RequestHandler], bool]],
) -> None:
    served: dict[str, set[str]] = {}
    for template, handler, _core in app_routes:
        served.setdefault(template, set()).update(implemented(handler))
    stale = []
    for path, item in PATHS.items():
        if path != "/" and path.split("/")[1] not in CORE_SEGMENTS:
            continue  # a module's path
        for method in sorted(set(item) & set(METHODS)):
            if method not in served.get(path, set()):
                stale.append(f"{method.upper()} {path}")
    assert not stale, "documented in server/web/openapi.json but not served:\n" + "\n".join(stale)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_path_parameters_are_declared() -> None:
    undeclared = []
    for path, item in PATHS.items():
        names = set(re.findall(r"\{(\w+)\}", path))
        shared = {p["name"] for p in map(_resolve, item.get("parameters", [])) if p["in"] == "path"}
        for method in set(item) & set(METHODS):
            own = {p["name"] for p in map(_resolve, item[method].get("parameters", [])) if p["in"] == "path"}
            if names != shared | own:
                undeclared.append(f"{method.upper()} {path}: {sorted(names ^ (shared | own))}")
    assert not undeclared


def test_qido_parameters_match_the_matcher_and_settings() -> None:
    parameters = DOCUMENT["components"]["parameters"]
    matching = parameters["matchingKeys"]["description"]
    not_listed = [k for k, a in ATTRIBUTES.items() if a.match is not None and k not in matching]
    assert not not_listed, f"matchable attributes not listed in matchingKeys: {not_listed}"
    limit = parameters["limit"]["schema"]
    defaults = Settings()
    assert (limit["default"], limit["maximum"]) == (defaults.query_default_limit, defaults.query_max_limit)
