"""Access control over HTTP: the route x identity matrix, sessions, XSRF, tokens, safe start-up.

Every rule of the real application is walked (core and module routes), with every
identity and the read and state-changing methods, against a server with authentication on.
"""

from __future__ import annotations

import io
import re
import re._constants as sre_c
import re._parser as sre
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from argon2 import PasswordHasher
from tornado.web import RedirectHandler, StaticFileHandler

from server.cli import main as tessera_main
from server.config import ConfigError, load_settings
from server.security import accounts as accounts_module
from server.security.guard import SESSION_COOKIE, XSRF_COOKIE, XSRF_HEADER
from server.security.policy import Permission, Role, StartupRefused, check_startup
from server.security.service import security_of
from server.serve import BackgroundServer, serve
from server.web.app import handler_rules, make_app
from tests.conftest import make_settings
from tests.dicom_cases import ct_bytes

PASSWORD = "correct horse battery staple"
ROLES = ("viewer", "clinician", "auditor", "administrator")
METHODS = ("GET", "POST", "PUT", "DELETE")


@dataclass
class SecureServer:
    server: BackgroundServer
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def login(self, role: str, session: requests.Session | None = None) -> requests.Session:
        http = session or requests.Session()
        response = http.post(
            f"{self.url}/api/session", json={"username": role, "password": PASSWORD}, timeout=10
        )
        assert response.status_code == 200, response.text
        return http


def start_secure(factory: Callable[..., BackgroundServer], **overrides: Any) -> SecureServer:
    """A server with authentication on and one user (named after the role) and token per role."""
    overrides.setdefault("auth_enabled", True)
    overrides.setdefault("audit_coalesce_seconds", 0)
    server = factory(**overrides)
    accounts = security_of(server.ctx).accounts
    tokens = {}
    for role in ROLES:
        accounts.add_user(role, Role(role), PASSWORD)
        tokens[role] = accounts.create_token(role, "tests")[1]
    return SecureServer(server, tokens)


@pytest.fixture(autouse=True)
def quick_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheaper argon2 parameters in tests only (production uses argon2-cffi's defaults)."""
    monkeypatch.setattr(
        accounts_module, "_hasher", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    )


@pytest.fixture
def secure(tessera_server_factory: Callable[..., BackgroundServer]) -> SecureServer:
    return start_secure(tessera_server_factory)


# -- the matrix ---------------------------------------------------------------------------------


def example_path(pattern: str) -> str:
    """A concrete path the route's regular expression matches (shortest choices)."""

    def generate(items: Any) -> str:
        out = []
        for op, av in items:
            if op is sre_c.LITERAL:
                out.append(chr(av))
            elif op is sre_c.SUBPATTERN:
                out.append(generate(av[-1]))
            elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
                low, _high, sub = av
                out.append(generate(sub) * low)
            elif op is sre_c.IN:
                out.append(_member(av))
            elif op is sre_c.BRANCH:
                out.append(generate(av[1][0]))
            elif op is sre_c.ANY:
                out.append("x")
            elif op is sre_c.NOT_LITERAL:
                out.append("x" if av != ord("x") else "y")
            elif op is sre_c.AT:
                continue
            else:
                raise AssertionError(f"route pattern {pattern!r}: cannot make an example for {op}")
        return "".join(out)

    path = generate(sre.parse(pattern))
    assert re.match(pattern, path), (pattern, path)
    return path


def _member(items: list[tuple[Any, Any]]) -> str:
    if items and items[0][0] is sre_c.NEGATE:
        return "x"
    op, av = items[0]
    if op is sre_c.LITERAL:
        return chr(av)
    if op is sre_c.RANGE:
        return chr(av[0])
    if op is sre_c.CATEGORY:
        return "1" if av is sre_c.CATEGORY_DIGIT else "x"
    raise AssertionError(f"character set {items}")


def expected_access(path: str, handler: type, method: str) -> set[str] | None:
    """Who may call: None = public (no login); else the roles allowed. Written from the brief, not the code."""
    if issubclass(handler, StaticFileHandler | RedirectHandler):
        return None  # pages and scripts; the data behind them is protected
    if re.fullmatch(r"/api/health/?", path):
        return None
    if re.fullmatch(r"/api/session/?", path):
        return None if method in ("GET", "POST") else set(ROLES)
    if re.fullmatch(r"/api/modules/?", path):
        return set(ROLES)
    if path.startswith("/api/audit"):
        return {"auditor", "administrator"}
    # A module may declare what a method needs (e.g. an export made by POST is a read).
    declared = getattr(handler, "permissions", None) or {}
    permission = declared.get(method) or declared.get("*")
    if permission is not None:
        return {
            Permission.PUBLIC: None,
            Permission.SIGNED_IN: set(ROLES),
            Permission.READ: {"viewer", "clinician", "administrator"},
            Permission.WRITE: {"clinician", "administrator"},
            Permission.AUDIT: {"auditor", "administrator"},
            Permission.ADMIN: {"administrator"},
        }[permission]
    if method == "GET":
        return {"viewer", "clinician", "administrator"}
    return {"clinician", "administrator"}


def test_route_identity_matrix(tessera_server_factory: Callable[..., BackgroundServer]) -> None:
    # Thousands of audited requests: skip the per-record fsync here (test_security_audit keeps it on).
    secure = start_secure(tessera_server_factory, audit_fsync=False)
    app = make_app(secure.server.ctx)
    rules = handler_rules(app)
    assert len(rules) > 30
    identities: dict[str, dict[str, str]] = {
        "anonymous": {},
        "bad token": {"Authorization": "Bearer tsk_not-a-real-token"},
        **{role: secure.bearer(role) for role in ROLES},
    }

    def call(method: str, path: str, headers: dict[str, str]) -> requests.Response:
        # A new connection each time: tornado closes one after refusing a streamed upload early,
        # and a pooled connection could be reused just as it closes.
        body = b"" if method in ("POST", "PUT") else None
        return requests.request(method, secure.url + path, headers=headers, data=body, timeout=30)

    cases = []
    for rule in rules:
        path = example_path(rule.matcher.regex.pattern)
        for method in METHODS:
            for who, headers in identities.items():
                cases.append((rule, path, method, who, headers))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda case: call(case[2], case[1], case[4]), cases))
    failures: list[str] = []
    checked = 0
    seen_module_route = False
    for (rule, path, method, who, _headers), response in zip(cases, responses, strict=True):
        seen_module_route |= path.startswith(
            ("/pathology/", "/cardiology/", "/mammography/", "/orthopedics/")
        )
        allowed = expected_access(path, rule.target, method)
        status = response.status_code
        checked += 1
        if issubclass(rule.target, StaticFileHandler):
            ok = status != 401  # 403 here is a folder listing refused, the same for everyone
        elif re.fullmatch(r"/api/session/?", path) and method == "GET":
            ok = status == (401 if who in ("anonymous", "bad token") else 200)  # "not logged in"
        elif allowed is None or who in allowed:
            ok = status not in (401, 403)
        elif who in ("anonymous", "bad token"):
            ok = status == 401 and "Bearer" in response.headers.get("WWW-Authenticate", "")
        else:
            ok = status == 403
        if not ok:
            failures.append(f"{method} {path} as {who}: {status} (allowed: {allowed or 'everyone'})")
    assert not failures, "\n".join(failures[:40])
    assert seen_module_route, "the specialty modules' routes were not in the application"
    assert checked > 500


def test_pages_and_scripts_need_no_login(secure: SecureServer) -> None:
    for path in (
        "/",
        "/viewer/",
        "/static/login.html",
        "/static/audit.html",
        "/static/js/session.js",
        "/login",
    ):
        response = requests.get(secure.url + path, timeout=10)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_path_variants_reach_the_same_check(secure: SecureServer) -> None:
    for path in (
        "/dicom-web/studies/",
        "/dicom-web//studies",
        "/dicom-web/studies/1.2.3/../1.2.3/metadata",
        "/dicom-web/studies?PatientID=x",
        "/DICOM-WEB/studies",
        "/api/studies/1.2.3/",
        "/api/audit/",
        "/api/audit/export?format=csv",
    ):
        response = requests.get(secure.url + path, timeout=10, allow_redirects=False)
        assert response.status_code in (401, 404), (path, response.status_code)
        assert response.status_code != 200


# -- sessions, XSRF, tokens ------------------------------------------------------------------------


def test_login_cookie_flags_logout_and_xsrf(secure: SecureServer) -> None:
    http = requests.Session()
    bad = http.post(
        f"{secure.url}/api/session", json={"username": "clinician", "password": "wrong password!"}
    )
    assert bad.status_code == 401 and SESSION_COOKIE not in http.cookies
    http = secure.login("clinician")
    raw = next(c for c in http.cookies if c.name == SESSION_COOKIE)
    assert raw.has_nonstandard_attr("HttpOnly") and raw.get_nonstandard_attr("SameSite") == "Strict"
    assert not raw.secure  # plain HTTP in this test; tests/test_security_tls.py checks Secure under HTTPS
    me = http.get(f"{secure.url}/api/session").json()
    assert me == {"auth_enabled": True, "username": "clinician", "role": "clinician", "method": "session"}
    assert http.get(f"{secure.url}/dicom-web/studies").status_code in (200, 204)

    dicom = ct_bytes()
    headers = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
    refused = http.post(f"{secure.url}/dicom-web/studies", data=dicom, headers=headers)
    assert refused.status_code == 403 and XSRF_HEADER in refused.json()["detail"]
    wrong = http.post(f"{secure.url}/dicom-web/studies", data=dicom, headers={**headers, XSRF_HEADER: "nope"})
    assert wrong.status_code == 403
    token = http.cookies[XSRF_COOKIE]
    stored = http.post(f"{secure.url}/dicom-web/studies", data=dicom, headers={**headers, XSRF_HEADER: token})
    assert stored.status_code == 200, stored.text

    # Logout needs the XSRF token too, then the cookie is dead even if replayed.
    cookie = http.cookies[SESSION_COOKIE]
    assert http.delete(f"{secure.url}/api/session").status_code == 403
    assert http.delete(f"{secure.url}/api/session", headers={XSRF_HEADER: token}).status_code == 204
    replay = requests.get(f"{secure.url}/dicom-web/studies", cookies={SESSION_COOKIE: cookie})
    assert replay.status_code == 401


def test_bearer_tokens_are_exempt_from_xsrf_but_not_from_roles(secure: SecureServer) -> None:
    headers = {"Content-Type": "application/dicom"}
    as_clinician = requests.post(
        f"{secure.url}/dicom-web/studies", data=ct_bytes(), headers={**headers, **secure.bearer("clinician")}
    )
    assert as_clinician.status_code == 200
    as_viewer = requests.post(
        f"{secure.url}/dicom-web/studies", data=ct_bytes(), headers={**headers, **secure.bearer("viewer")}
    )
    assert as_viewer.status_code == 403


def test_cross_site_state_changes_are_refused(
    secure: SecureServer, tessera_server_factory: Callable[..., BackgroundServer]
) -> None:
    headers = {"Content-Type": "application/dicom", **secure.bearer("administrator")}
    for evil in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        response = requests.post(
            f"{secure.url}/dicom-web/studies", data=ct_bytes(), headers={**headers, **evil}
        )
        assert response.status_code == 403, evil
    same = {"Origin": secure.url, "Sec-Fetch-Site": "same-origin"}
    assert requests.post(f"{secure.url}/dicom-web/studies", data=ct_bytes(), headers={**headers, **same}).ok
    # Also with authentication off (a loopback server is still reachable from the user's browser).
    local = tessera_server_factory()
    refused = requests.post(
        f"{local.url}/dicom-web/studies",
        data=ct_bytes(),
        headers={"Content-Type": "application/dicom", "Origin": "http://evil.example"},
    )
    assert refused.status_code == 403


def test_idle_timeout_lifetime_and_revocation(
    tessera_server_factory: Callable[..., BackgroundServer],
) -> None:
    secure = start_secure(tessera_server_factory, session_idle_timeout=1, session_lifetime=3)
    http = secure.login("viewer")
    assert http.get(f"{secure.url}/dicom-web/studies").status_code in (200, 204)
    time.sleep(1.3)
    assert http.get(f"{secure.url}/dicom-web/studies").status_code == 401  # idle

    secure2 = start_secure(
        tessera_server_factory, session_idle_timeout=60, session_lifetime=2, credential_cache_seconds=1
    )
    http = secure2.login("viewer")
    for _ in range(3):  # in use all along, still ends at its absolute lifetime
        assert http.get(f"{secure2.url}/dicom-web/studies").status_code in (200, 204)
        time.sleep(0.5)
    time.sleep(0.7)
    assert http.get(f"{secure2.url}/dicom-web/studies").status_code == 401

    accounts = security_of(secure2.server.ctx).accounts
    http = secure2.login("clinician")
    accounts.revoke_sessions("clinician")
    assert http.get(f"{secure2.url}/dicom-web/studies").status_code == 401
    token_id = next(t.id for t in accounts.list_tokens("viewer"))
    assert requests.get(f"{secure2.url}/dicom-web/studies", headers=secure2.bearer("viewer")).ok
    accounts.revoke_token(token_id)  # by another process (the CLI): this one notices within 1 s
    time.sleep(1.1)
    assert (
        requests.get(f"{secure2.url}/dicom-web/studies", headers=secure2.bearer("viewer")).status_code == 401
    )
    http = secure2.login("auditor")
    accounts.set_disabled("auditor", True)
    time.sleep(1.1)
    assert http.get(f"{secure2.url}/api/audit").status_code == 401
    assert requests.get(f"{secure2.url}/api/audit", headers=secure2.bearer("auditor")).status_code == 401


def test_credentials_are_looked_up_once_per_interval_and_logout_is_immediate(
    tessera_server_factory: Callable[..., BackgroundServer],
) -> None:
    secure = start_secure(tessera_server_factory, credential_cache_seconds=30)
    accounts = security_of(secure.server.ctx).accounts
    token_id = next(t.id for t in accounts.list_tokens("viewer"))
    assert requests.get(f"{secure.url}/dicom-web/studies", headers=secure.bearer("viewer")).ok
    accounts.revoke_token(token_id)  # behind this process's back: the cached lookup stands
    assert requests.get(f"{secure.url}/dicom-web/studies", headers=secure.bearer("viewer")).ok
    admin = secure.login("administrator")  # any change through the API makes this process re-check
    assert admin.get(f"{secure.url}/dicom-web/studies").status_code in (200, 204)
    assert requests.get(f"{secure.url}/dicom-web/studies", headers=secure.bearer("viewer")).status_code == 401
    xsrf = {XSRF_HEADER: admin.cookies[XSRF_COOKIE]}
    assert admin.delete(f"{secure.url}/api/session", headers=xsrf).status_code == 204
    assert admin.get(f"{secure.url}/dicom-web/studies").status_code == 401  # logout: at once


def test_repeated_wrong_passwords_lock_the_account(secure: SecureServer) -> None:
    for _ in range(5):
        response = requests.post(
            f"{secure.url}/api/session", json={"username": "viewer", "password": "x" * 12}
        )
        assert response.status_code == 401
    locked = requests.post(f"{secure.url}/api/session", json={"username": "viewer", "password": PASSWORD})
    assert locked.status_code == 401  # right password, but locked for a while
    assert requests.post(f"{secure.url}/api/session", json={"username": "clinician", "password": PASSWORD}).ok


def test_auth_off_on_loopback_keeps_the_open_behaviour(tessera_server: BackgroundServer) -> None:
    assert not tessera_server.settings.authentication_required
    assert requests.get(f"{tessera_server.url}/dicom-web/studies").status_code in (200, 204)
    assert requests.get(f"{tessera_server.url}/api/session").json()["auth_enabled"] is False


# -- safe start-up -------------------------------------------------------------------------------------


def test_auth_default_depends_on_the_address() -> None:
    assert not load_settings({}).authentication_required
    assert not load_settings({"TESSERA_HOST": "::1"}).authentication_required
    assert load_settings({"TESSERA_HOST": "0.0.0.0"}).authentication_required
    assert load_settings({"TESSERA_HOST": "pacs.example.org"}).authentication_required
    assert load_settings({"TESSERA_HOST": "127.0.0.1", "TESSERA_AUTH_ENABLED": "yes"}).authentication_required
    with pytest.raises(ConfigError):
        load_settings({"TESSERA_TLS_CERT": "/x.pem"})


def test_refuses_to_start_on_a_network_address_without_auth_or_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    open_settings = make_settings(tmp_path / "a", host="0.0.0.0", auth_enabled=False)
    with pytest.raises(StartupRefused, match="authentication off"):
        serve(open_settings)
    nobody = make_settings(tmp_path / "b", host="0.0.0.0")
    with pytest.raises(StartupRefused, match="tessera users add"):
        serve(nobody)
    check_startup(make_settings(tmp_path / "c", host="0.0.0.0"), active_users=1)  # would serve
    check_startup(make_settings(tmp_path / "d", auth_enabled=False), active_users=0)  # loopback: fine

    # The command line says so plainly and exits non-zero.
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "e"))
    monkeypatch.setenv("TESSERA_HOST", "0.0.0.0")
    monkeypatch.setenv("TESSERA_AUTH_ENABLED", "false")
    assert tessera_main(["serve", "--no-dicom"]) == 2
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err


def test_users_cli_add_list_token_disable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "cli"))

    def tessera(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = tessera_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = tessera(
        "users", "add", "alice", "--role", "administrator", "--password-stdin", stdin="short\n"
    )
    assert code == 1 and "at least 12" in err
    code, _, err = tessera(
        "users", "add", "alice", "--role", "administrator", "--password-stdin", stdin=PASSWORD
    )
    assert code == 0, err
    assert tessera("users", "add", "alice", "--role", "viewer", "--password-stdin", stdin=PASSWORD)[0] == 1
    code, out, _ = tessera("users", "token", "alice", "--label", "backup script")
    assert code == 0 and out.strip().startswith("tsk_")
    listed = tessera("users", "list")[1]
    assert re.search(r"alice\s+administrator\s+active\s+0\s+1", listed), listed
    assert tessera("users", "disable", "alice")[0] == 0
    assert "disabled" in tessera("users", "list")[1]
    assert "backup script" in tessera("users", "token", "--list")[1]
    assert tessera("users", "token", "--revoke", "1")[0] == 0
    assert "revoked" in tessera("users", "token", "--list")[1]
    code, out, err = tessera("audit", "verify")
    assert code == 0 and "intact: 4 records" in out, out + err
