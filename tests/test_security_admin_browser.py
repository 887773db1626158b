"""The administrators' page and break-glass in a real headless Chromium.

An administrator defines a study group and a limited user on /static/admin.html; that user's
study browser lists only the group's study; declaring an emergency (reason asked) shows every
study and a banner on every page until it is ended. A hostile group description stays text.
Screenshots go to tests/artifacts/security-admin-*.png and security-emergency-*.png.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.security.audit import AuditFilter
from server.security.service import security_of
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_security_browser import ARTIFACTS
from tests.test_security_groups import PASSWORD, quick_argon2, start_hospital

__all__ = ["quick_argon2"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]
XSS = '<img src=x onerror="window.__pwned=1">'


def test_admin_page_and_break_glass(tessera_server_factory: Callable[..., BackgroundServer]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    h = start_hospital(tessera_server_factory, audit_fsync=False)
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and "status of 40" not in message.text:
            problems.append(f"console: {message.text}")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            expect = sync_api.expect
            admin = browser.new_page(viewport={"width": 1360, "height": 900})
            admin.set_default_timeout(10_000)
            admin.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            admin.on("console", on_console)
            admin.goto(h.url + "/admin")
            admin.wait_for_url("**/static/login.html?next=*")
            admin.fill("#username", "admin")
            admin.fill("#password", PASSWORD)
            admin.click("#sign-in")
            admin.wait_for_url("**/static/admin.html")
            expect(admin.locator(".topbar .session-admin")).to_have_text("Users")
            expect(admin.locator("#user-rows tr[data-user]")).to_have_count(4)

            admin.fill("#g-name", "south")
            admin.fill("#g-description", XSS)
            admin.fill("#g-institutions", "South Clinic")
            admin.fill("#g-modalities", "CT")
            admin.click("#new-group button[type=submit]")
            expect(admin.locator("#group-rows tr[data-group=south]")).to_contain_text(
                "institutions: South Clinic"
            )
            expect(admin.locator("#group-rows tr[data-group=south] td").nth(1)).to_have_text(XSS)
            admin.fill("#u-name", "drsouth")
            admin.select_option("#u-role", "clinician")
            admin.fill("#u-password", PASSWORD)
            admin.fill("#u-groups", "south")
            admin.click("#new-user button[type=submit]")
            expect(admin.locator("#user-rows tr[data-user=drsouth]")).to_contain_text("south")
            admin.once("dialog", lambda dialog: dialog.accept("short"))
            admin.locator("#user-rows tr[data-user=drsouth] button", has_text="Reset password").click()
            expect(admin.locator("#error-message")).to_contain_text("at least 12 characters")
            admin.screenshot(path=str(ARTIFACTS / "security-admin-page.png"), full_page=True)
            assert admin.evaluate("window.__pwned") is None

            user = browser.new_page(viewport={"width": 1360, "height": 820})
            user.set_default_timeout(10_000)
            user.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            user.on("console", on_console)
            user.goto(h.url + "/")
            user.wait_for_url("**/static/login.html?next=*")
            user.fill("#username", "drsouth")
            user.fill("#password", PASSWORD)
            user.click("#sign-in")
            user.wait_for_url(h.url + "/")
            rows = user.locator("#study-rows tr[data-study]")
            expect(rows).to_have_count(1)
            assert rows.first.get_attribute("data-study") == h.south_ct.study
            user.once("dialog", lambda dialog: dialog.accept("stroke alert, outside images needed"))
            user.click("#emergency-start")
            expect(user.locator("#emergency-banner")).to_contain_text("stroke alert, outside images needed")
            expect(rows).to_have_count(3)
            user.screenshot(path=str(ARTIFACTS / "security-emergency-banner.png"))
            user.goto(h.url + "/viewer/")
            expect(user.locator("#emergency-banner")).to_be_visible()  # on every page while it lasts
            user.goto(h.url + "/")
            user.click("#emergency-stop")
            expect(user.locator("#emergency-banner")).to_have_count(0)
            expect(rows).to_have_count(1)
        finally:
            browser.close()
    assert not problems, problems
    trail, _ = security_of(h.server.ctx).audit.query(AuditFilter(username="drsouth", event_id="110113"))
    assert sorted(r["event_type"] for r in trail) == ["110127", "110138"]
