"""The study browser and the generic viewer, driven in a real headless Chromium.

Opens `/`, searches, opens a study and one of its series in the generic viewer, and checks
that the image draws, scrolls, and takes window/level; checks that a DICOM name full of
markup is shown literally. Screenshots go to tests/artifacts/ for a human to look at.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sample_data.demo import write_demo_archive
from tests.browser import CHROMIUM, CHROMIUM_ARGS

ARTIFACTS = Path(__file__).parent / "artifacts"
TRICKY_NAME = "O'Brien, <b>Sean</b>"  # DICOM: O'Brien^<b>Sean</b>

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


@pytest.fixture
def demo_server(tessera_server_factory: Callable[..., Any], tmp_path: Path) -> Any:
    server = tessera_server_factory()
    for path in write_demo_archive(tmp_path / "demo", specialties=False):
        server.ctx.archive.ingest_path(path)
    return server


def test_search_open_study_and_view_series(demo_server: Any) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    base = demo_server.url.rstrip("/")
    problems: list[str] = []

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 820})
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error"
                    else None
                ),
            )
            expect = sync_api.expect

            # -- the study list: everything, then the markup-laden name shown literally
            page.goto(base + "/")
            rows = page.locator("#study-rows tr[data-study]")
            expect(rows).to_have_count(5)
            expect(page.locator("#study-rows td.patient-name", has_text=TRICKY_NAME)).to_have_count(1)
            assert page.locator("#study-rows b").count() == 0, "markup from a DICOM name reached the DOM"
            page.screenshot(path=str(ARTIFACTS / "browser-all-studies.png"))

            # -- search by (lower-case, partial) patient name
            page.fill("#f-name", "doe")
            page.press("#f-name", "Enter")
            expect(rows).to_have_count(2)
            for name in rows.locator("td.patient-name").all_text_contents():
                assert name == "Doe, John"
            assert "PatientName=doe" in page.url  # the search is kept in the address

            # -- a study: its series with thumbnails, module and an Open link
            rows.filter(has_text="ACC-1001").click()
            cards = page.locator("#detail .series-card")
            expect(cards).to_have_count(4)
            soft = cards.filter(has_text="AX 5.0 SOFT TISSUE")
            expect(soft.locator(".module")).to_have_text("Generic image viewer")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#detail img.thumb')]"
                ".every(img => img.complete && img.naturalWidth > 0)"
            )
            page.screenshot(path=str(ARTIFACTS / "browser-study.png"))

            # -- the generic viewer
            soft.get_by_role("link", name="Open").click()
            page.wait_for_url("**/viewer/?study=*")
            frame = page.locator("#frame")
            page.wait_for_function(
                "() => { const i = document.getElementById('frame');"
                " return !i.hidden && i.complete && i.naturalWidth > 0 && i.dataset.frame === '1'; }"
            )
            expect(page.locator("#overlay-frame")).to_have_text("Frame 1/5")
            expect(page.locator("#overlay-patient")).to_contain_text("Doe, John")
            expect(page.locator("#overlay-wl")).to_have_text("W 400 L 40")
            box = page.locator("#stage").bounding_box()
            assert box is not None and box["width"] > 600 and box["height"] > 400
            shown = frame.bounding_box()
            assert shown is not None and shown["width"] == pytest.approx(box["width"], abs=2)

            # wheel: next frame, drawn
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, 120)
            expect(page.locator("#overlay-frame")).to_have_text("Frame 2/5")
            page.wait_for_function("() => document.getElementById('frame').dataset.frame === '2'")
            # keys and slider agree
            page.keyboard.press("ArrowDown")
            expect(page.locator("#overlay-frame")).to_have_text("Frame 3/5")
            expect(page.locator("#slider")).to_have_value("3")
            page.wait_for_function("() => document.getElementById('frame').dataset.frame === '3'")

            # window/level by right-drag: the readout changes and a new rendering arrives
            before_src = frame.get_attribute("src")
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx, cy)
            page.mouse.down(button="right")
            page.mouse.move(cx + 80, cy + 40, steps=6)
            page.mouse.up(button="right")
            expect(page.locator("#overlay-wl")).not_to_have_text("W 400 L 40")
            expect(page.locator("#overlay-preset")).to_have_text("Custom")
            page.wait_for_function(
                "(old) => { const i = document.getElementById('frame');"
                " return i.src !== old && i.complete && i.naturalWidth > 0; }",
                arg=before_src,
            )
            page.screenshot(path=str(ARTIFACTS / "viewer-custom-window.png"))

            # a preset from the image's metadata
            page.get_by_role("button", name="LUNG").click()
            expect(page.locator("#overlay-wl")).to_have_text("W 1500 L -600")
            expect(page.get_by_role("button", name="LUNG")).to_have_attribute("aria-pressed", "true")
            page.keyboard.press("0")
            expect(page.locator("#overlay-preset")).to_have_text("Default")

            # left-drag in scroll mode moves through the frames
            page.get_by_role("button", name="Scroll").click()
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx, cy + 20, steps=4)
            page.mouse.up()
            expect(page.locator("#overlay-frame")).to_have_text("Frame 5/5")
            page.wait_for_function("() => document.getElementById('frame').dataset.frame === '5'")

            # -- the markup-laden name in the viewer overlay and the rail
            page.goto(base + "/?PatientName=brien")
            expect(rows).to_have_count(1)
            rows.first.focus()
            page.keyboard.press("Enter")  # opens the study and focuses its first Open link
            expect(page.locator("#detail h2")).to_have_text(TRICKY_NAME)
            page.keyboard.press("Enter")
            page.wait_for_url("**/viewer/?study=*")
            page.wait_for_function("() => document.getElementById('frame').naturalWidth > 0")
            expect(page.locator("#overlay-patient div").first).to_have_text(TRICKY_NAME)
            assert page.locator("#overlay-patient b, #detail b").count() == 0
            assert TRICKY_NAME in page.title()
            page.screenshot(path=str(ARTIFACTS / "viewer-obrien.png"))

            # -- an unknown study: the problem detail is shown, not a blank page
            page.goto(base + "/viewer/?study=1.2.3.4&series=1.2.3.5")
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error-message")).to_contain_text("no study")
            problems = [p for p in problems if "404" not in p]  # the expected 404s above
            page.screenshot(path=str(ARTIFACTS / "viewer-unknown-study.png"))
        finally:
            browser.close()

    assert not problems, problems


def _launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def test_filters_paging_and_formatting(demo_server: Any) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    base = demo_server.url.rstrip("/")
    with sync_api.sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.set_default_timeout(10_000)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            rows = page.locator("#study-rows tr[data-study]")

            # shared helpers, imported as the pages import them
            page.goto(base + "/")
            expect(rows).to_have_count(5)
            helpers = page.evaluate(
                """async () => {
                  const d = await import('/static/js/dicomweb.js');
                  return [
                    d.formatPersonName('Doe^John'),
                    d.formatPersonName({Alphabetic: 'Walker^Rebecca^^Dr.'}),
                    d.formatPersonName('Yamada^Tarou=山田^太郎'),
                    d.formatPersonName(''),
                    d.formatDate('20250314'),
                    d.formatDate('2025'),
                    d.formatTime('093000.123'),
                  ];
                }"""
            )
            assert helpers == [
                "Doe, John",
                "Dr. Walker, Rebecca",
                "Yamada, Tarou",
                "",
                "2025-03-14",
                "2025",
                "09:30",
            ]

            # modality filter searches at once
            page.select_option("#f-mod", "CT")
            expect(rows).to_have_count(2)
            # date range (with the modality still set): only the prior CT of 2024
            page.fill("#f-from", "2024-01-01")
            page.fill("#f-to", "2024-12-31")
            page.press("#f-to", "Enter")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("ACC-0901")
            # an inverted range is refused with a message, not sent
            page.fill("#f-from", "2025-01-01")
            page.get_by_role("button", name="Search").click()
            expect(page.locator("#error-message")).to_contain_text("starts after it ends")
            # nothing found: an empty state, not an empty table
            page.get_by_role("button", name="Clear").click()
            expect(rows).to_have_count(5)
            page.fill("#f-acc", "NO-SUCH")
            page.press("#f-acc", "Enter")
            expect(rows).to_have_count(0)
            expect(page.locator("#study-rows td.placeholder")).to_have_text("No studies match this search.")

            # paging by offset; the server's "more results" warning enables Next
            page.goto(base + "/?offset=3")
            expect(rows).to_have_count(2)
            expect(page.locator("#status")).to_have_text("Studies 4–5")
            expect(page.locator("#prev")).to_be_enabled()
            expect(page.locator("#next")).to_be_disabled()
            page.click("#prev")
            expect(rows).to_have_count(5)
            expect(page.locator("#prev")).to_be_disabled()

            # keyboard: "/" focuses the search, Escape leaves it for the list, arrows move
            page.locator("body").press("/")
            expect(page.locator("#f-name")).to_be_focused()
            page.keyboard.press("Escape")
            expect(rows.nth(0)).to_be_focused()
            page.keyboard.press("ArrowDown")
            expect(rows.nth(1)).to_be_focused()
            page.keyboard.press("Space")
            expect(rows.nth(1)).to_have_attribute("aria-selected", "true")
            expect(page.locator("#detail .series-card")).not_to_have_count(0)
            assert "study=" in page.url
            assert not problems, problems
        finally:
            browser.close()
