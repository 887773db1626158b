"""CSRF: a state-changing request that another site makes a signed-in browser send is refused.

Three ways in: headers a browser sets on a cross-site request (``Origin``, ``Sec-Fetch-Site``)
sent by hand with a valid session cookie and even a valid XSRF token; and a real cross-origin
HTML form POST from a page served on another port, submitted by headless Chromium that holds
the session cookie. The same writes from the Tessera page itself still work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from server.archive.models import Instance
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import free_port
from tests.test_security_access import PASSWORD, SecureServer, quick_argon2, start_secure

__all__ = ["quick_argon2"]

# Every write the core offers a browser; each would answer something other than 403 if let through.
WRITES = [
    ("POST", "/dicom-web/studies"),
    ("DELETE", "/api/session"),
    ("POST", "/api/session"),
]


@pytest.fixture
def secure(tessera_server_factory: Callable[..., BackgroundServer]) -> Iterator[SecureServer]:
    yield start_secure(tessera_server_factory, audit_fsync=False)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    ],
    ids=["origin", "null-origin", "fetch-cross-site", "fetch-same-site", "both"],
)
@pytest.mark.parametrize("method,path", WRITES, ids=[f"{m} {p}" for m, p in WRITES])
def test_cross_site_writes_are_refused_with_a_session(
    secure: SecureServer, headers: dict[str, str], method: str, path: str
) -> None:
    http = secure.login("clinician")
    xsrf = http.cookies.get("tessera_xsrf")
    assert xsrf and http.cookies.get("tessera_session")
    response = http.request(
        method,
        f"{secure.url}{path}",
        headers={**headers, "X-XSRF-Token": xsrf, "Content-Type": "application/dicom"},
        data=b"",
        timeout=10,
    )
    assert response.status_code == 403, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "cross-site" in response.json()["detail"]
    # The session still works for its own origin: the refusal changed nothing.
    assert http.get(f"{secure.url}/api/session", timeout=10).json()["username"] == "clinician"


def test_same_origin_write_with_token_is_accepted(secure: SecureServer) -> None:
    http = secure.login("clinician")
    url = secure.url
    response = http.post(
        f"{url}/dicom-web/studies",
        headers={
            "Origin": url,
            "Sec-Fetch-Site": "same-origin",
            "X-XSRF-Token": http.cookies.get("tessera_xsrf") or "",
        },
        data=b"",
        timeout=10,
    )
    assert response.status_code == 415  # past the CSRF and XSRF checks: the empty body is what is refused


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_real_cross_origin_form_post_is_refused(secure: SecureServer) -> None:
    """An attacker page on another port auto-submits forms at Tessera; the browser holds the session."""
    sync_api = pytest.importorskip("playwright.sync_api")
    url = secure.url
    attack = f"""<!doctype html><html><body>
<form id="login" method="post" action="{url}/api/session" enctype="text/plain" target="out1">
<input name='{{"username":"clinician","password":"x"}}' value=""></form>
<form id="stow" method="post" action="{url}/dicom-web/studies" enctype="multipart/form-data" target="out2">
<input name="file" value="DICM"></form>
<iframe name="out1"></iframe><iframe name="out2"></iframe>
<script>document.getElementById('login').submit(); document.getElementById('stow').submit();</script>
</body></html>"""
    seen: list[tuple[str, str, str]] = []

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = attack.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", free_port()), Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{url}/static/login.html")
                page.fill("#username", "clinician")
                page.fill("#password", PASSWORD)
                page.click("#sign-in")
                page.wait_for_url(f"{url}/")
                session_cookie = {c["name"]: c for c in context.cookies()}["tessera_session"]

                def on_response(response: Any) -> None:
                    request = response.request
                    if request.method == "POST" and request.url.startswith(url):
                        seen.append((request.url, str(response.status), request.headers.get("origin", "")))

                context.on("response", on_response)
                attacker = context.new_page()
                attacker.goto(f"http://127.0.0.1:{evil.server_port}/")
                attacker.wait_for_timeout(1500)
                attacker.wait_for_load_state("networkidle")
                # The session survived and the archive is unchanged.
                assert {c["name"]: c for c in context.cookies()}["tessera_session"][
                    "value"
                ] == session_cookie["value"]
                check = page.evaluate("fetch('/api/session').then((r) => r.json())")
                assert check["username"] == "clinician"
            finally:
                browser.close()
    finally:
        evil.shutdown()
    assert len(seen) == 2, seen
    for target, status, origin in seen:
        assert origin == f"http://127.0.0.1:{evil.server_port}", (target, origin)
        # SameSite=Strict keeps the cookie off the request (401) or the origin check refuses it (403).
        assert status in ("401", "403"), (target, status)
    with secure.server.ctx.archive.sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0  # nothing was stored
