"""Login in a real headless Chromium: the study browser sends the user to the login page, works
after signing in (XSRF token included on writes), signs out; an auditor lands on the audit trail.
Screenshots go to tests/artifacts/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_security_access import PASSWORD, quick_argon2, start_secure

__all__ = ["quick_argon2"]

ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def test_login_study_browser_logout_and_audit_page(
    tessera_server_factory: Callable[..., BackgroundServer], varied_files: list[Path]
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    secure = start_secure(tessera_server_factory, audit_fsync=False)
    for path in varied_files:
        secure.server.ctx.archive.ingest_path(path)
    base = secure.url
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []

    def on_console(message: Any) -> None:
        # Chromium logs every refused request as a console error: those made on purpose here are expected.
        expected = ("status of 401", "status of 403", "status of 415")
        if message.type == "error" and not any(e in message.text for e in expected):
            problems.append(f"console: {message.text}")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 820})
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", on_console)
            expect = sync_api.expect

            page.goto(base + "/?PatientName=doe")
            page.wait_for_url("**/static/login.html?next=*")
            assert "next=%2F%3FPatientName%3Ddoe" in page.url
            page.fill("#username", "clinician")
            page.fill("#password", "not the password")
            page.click("#sign-in")
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error-message")).to_contain_text("Wrong user name or password")
            page.screenshot(path=str(ARTIFACTS / "security-login-failed.png"))

            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            page.wait_for_url(base + "/?PatientName=doe")
            rows = page.locator("#study-rows tr[data-study]")
            expect(rows).to_have_count(1)
            expect(page.locator(".topbar .session-user")).to_have_text("clinician · clinician")
            page.screenshot(path=str(ARTIFACTS / "security-browser-signed-in.png"))
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert (
                cookies["tessera_session"]["httpOnly"] and cookies["tessera_session"]["sameSite"] == "Strict"
            )
            assert page.evaluate("document.cookie").count("tessera_session") == 0  # not readable by scripts

            # A write from the page carries the XSRF token (the server answers 415 for the empty body,
            # not 403); the same write without the page's fetch wrapper is refused.
            status = page.evaluate(
                "fetch('/dicom-web/studies', {method: 'POST', body: ''}).then((r) => r.status)"
            )
            assert status == 415
            bare = page.evaluate(
                "fetch('/dicom-web/studies', {method: 'POST', body: '', headers: {'X-XSRF-Token': 'forged'}})"
                ".then((r) => r.status)"
            )
            assert bare == 415  # the wrapper replaces a forged header with the session's token

            page.click("#sign-out")
            page.wait_for_url("**/static/login.html")
            page.goto(base + "/")
            page.wait_for_url("**/static/login.html?next=*")

            page.fill("#username", "auditor")
            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            page.wait_for_url("**/static/audit.html")
            records = page.locator("#record-rows tr")
            expect(records.first).to_be_visible()
            expect(page.locator("#record-rows")).to_contain_text("User Authentication · Login")
            expect(page.locator("#record-rows")).to_contain_text("clinician (session)")
            page.select_option("#f-event", "110114")
            page.click("#filters button[type=submit]")
            expect(page.locator("#status")).to_contain_text("of 4")  # failed + login + logout + auditor login
            page.screenshot(path=str(ARTIFACTS / "security-audit-page.png"), full_page=True)
            href = page.get_attribute("#export-csv", "href")
            assert href is not None and "event=110114" in href and "format=csv" in href

            # An auditor sees no patient data: the study list refuses.
            page.goto(base + "/")
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error-message")).to_contain_text("403")
        finally:
            browser.close()
    assert not problems, problems
