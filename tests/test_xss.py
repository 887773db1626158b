"""Stored XSS sweep: hostile text in every displayed DICOM tag, in user names and in URL
parameters, then every page opened in a real headless Chromium.

Each payload, if it ever ran, would set ``window.__xss`` (or call ``alert``); markup that was
injected but stopped by the Content-Security-Policy shows up as a ``securitypolicyviolation``
event. Both must stay empty on every page, the hostile text must appear literally where the
page shows it, and every response (pages, scripts, styles, images, API) carries the CSP header.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import FileDataset

from server.security.policy import Role
from server.security.service import security_of
from server.serve import BackgroundServer
from tests.test_security_access import PASSWORD, quick_argon2, start_secure
from tests.test_security_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

__all__ = ["quick_argon2"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]

# Each payload names itself in the flag it would set, so a failure says which tag leaked.
PAYLOADS = {
    "PatientName": "<script>alert('PatientName')</script>",  # PN: no "=" (it separates name groups)
    "PatientID": "\"><script>window.__xss='PatientID'</script>",
    "StudyDescription": "</title><svg onload=window.__xss='StudyDescription'>",
    "SeriesDescription": "<img src=x onerror=alert('SeriesDescription')>",
    "InstitutionName": "javascript:window.__xss='InstitutionName'",
    "ReferringPhysicianName": "<svg><script>alert('Referring')</script></svg>",
    "BodyPartExamined": '"><b onclick=1>',
    "AccessionNumber": "'-alert(1)-'",
}
USER_PAYLOAD = "<img/src=x/onerror=window.__xss='username'>"
URL_PAYLOAD = "\"><img src=x onerror=window.__xss='url'>"

WATCH = """
window.__xss = undefined;
window.__csp = [];
window.alert = (message) => { window.__xss = 'alert:' + message; };
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI || 'inline'} ${e.sample || ''} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


def hostile(ds: FileDataset) -> bytes:
    """The data set with every displayed tag carrying its payload (UTF-8, so nothing is lost)."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, payload in PAYLOADS.items():
        setattr(ds, keyword, payload)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def hostile_archive(server: BackgroundServer, scratch: Path) -> None:
    """One small case per viewer: CT (generic), echo, mammography, radiographs, a slide."""
    from sample_data.cardiology import echo_loop
    from sample_data.mammography import write_mammography_demo
    from sample_data.orthopedics import write_orthopedics_demo
    from sample_data.radiology import ct_series
    from sample_data.wsi import SIZES, generate

    datasets: list[FileDataset] = [
        *ct_series(2, size=64),
        echo_loop("A4C", n_frames=6, rows=120, columns=160),
    ]
    paths = write_mammography_demo(scratch / "mg", shape=(256, 200), tomo_shape=(128, 100), slices=3)
    paths += write_orthopedics_demo(scratch / "ortho")
    paths += generate(replace(SIZES["small"], width=1024, height=768), scratch / "wsi").dicom_files
    datasets += [dcmread(p) for p in paths]
    for ds in datasets:
        outcome = server.ctx.archive.ingest_bytes(hostile(ds))
        assert outcome.ok, outcome.reason


def pages(base: str, session: requests.Session) -> list[str]:
    """Every page: the core's, and each module's (found from its static folder and viewer_url)."""
    found = ["/", "/viewer/", "/static/login.html", "/static/audit.html", "/static/admin.html"]
    studies = session.get(f"{base}/dicom-web/studies?limit=100", timeout=30).json()
    for study in studies:
        uid = study["0020000D"]["Value"][0]
        for series in session.get(f"{base}/api/studies/{uid}", timeout=30).json()["series"]:
            found.append(series["viewer_url"])
    modules = session.get(f"{base}/api/modules", timeout=30).json()
    for module in modules if isinstance(modules, list) else modules.get("modules", []):
        static = Path(__file__).resolve().parents[1] / "modules" / module["id"] / "static"
        for html in sorted(static.glob("*.html")):
            found.append(
                f"/{module['id']}/static/{html.name}?study={quote(URL_PAYLOAD)}&series={quote(URL_PAYLOAD)}"
            )
    found += [
        f"/viewer/?study={quote(URL_PAYLOAD)}&series={quote(URL_PAYLOAD)}",
        f"/static/login.html?next={quote(URL_PAYLOAD)}",
    ]
    return list(dict.fromkeys(found))


def studies_with(base: str, session: requests.Session, modality: str) -> list[dict[str, Any]]:
    found = session.get(f"{base}/dicom-web/studies?ModalitiesInStudy={modality}", timeout=30).json()
    return [session.get(f"{base}/api/studies/{s['0020000D']['Value'][0]}", timeout=30).json() for s in found]


def plant_module_texts(base: str, session: requests.Session) -> None:
    """Hostile text through the modules' own APIs: a slide annotation label, a BI-RADS report."""
    from modules.mammography.report import BiradsReport

    for study in studies_with(base, session, "SM"):
        for series in [s for s in study["series"] if s["Modality"] == "SM"]:
            collection: dict[str, Any] = {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[10, 10], [110, 10], [110, 60], [10, 10]]],
                        },
                        "properties": {"label": PAYLOADS["PatientName"] + PAYLOADS["StudyDescription"]},
                    }
                ],
            }
            url = f"{base}/pathology/slides/{series['SeriesInstanceUID']}/annotations"
            saved = session.put(url, json=collection, timeout=30)
            assert saved.status_code == 200, saved.text
    for study in studies_with(base, session, "MG")[:1]:
        report = BiradsReport(
            study_instance_uid=study["StudyInstanceUID"],
            composition="b",
            assessment_right="1",
            assessment_left="1",
            assessment_overall="1",
            comparison=PAYLOADS["StudyDescription"],
            narrative=PAYLOADS["PatientName"] + " " + PAYLOADS["InstitutionName"],
        )
        saved = session.post(
            f"{base}/mammography/reports/{report.study_instance_uid}", json=report.to_json(), timeout=60
        )
        assert saved.status_code == 201, saved.text


def report_pages(base: str, session: requests.Session) -> list[str]:
    """The server-rendered report and letter of each mammography study with a report."""
    found = []
    for study in studies_with(base, session, "MG"):
        uid = study["StudyInstanceUID"]
        if session.get(f"{base}/mammography/reports/{uid}", timeout=30).status_code == 200:
            found += [f"/mammography/reports/{uid}/report.html", f"/mammography/reports/{uid}/letter.html"]
            found.append(f"/mammography/static/report.html?study={uid}")
    assert found, "no mammography report was saved"
    return found


def test_no_payload_runs_on_any_page(
    tessera_server_factory: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    secure = start_secure(tessera_server_factory, audit_fsync=False)
    base = secure.url
    hostile_archive(secure.server, tmp_path)
    accounts = security_of(secure.server.ctx).accounts
    accounts.add_user(USER_PAYLOAD, Role.AUDITOR, PASSWORD, full_name=PAYLOADS["PatientName"])
    failed = requests.post(
        f"{base}/api/session", json={"username": PAYLOADS["StudyDescription"], "password": "x"}, timeout=10
    )
    assert failed.status_code == 401
    assert requests.post(
        f"{base}/api/session", json={"username": USER_PAYLOAD, "password": PASSWORD}, timeout=10
    ).ok
    admin = secure.login("administrator")
    admin.headers["X-XSRF-Token"] = admin.cookies.get("tessera_xsrf") or ""
    plant_module_texts(base, admin)
    targets = pages(base, admin)
    targets += report_pages(base, admin)
    module_pages = [
        t for t in targets if t.split("/")[1] in ("pathology", "cardiology", "mammography", "orthopedics")
    ]
    assert len({t.split("?")[0] for t in module_pages}) >= 7, module_pages  # every module page was found

    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    missing_csp: list[str] = []
    shown: dict[str, list[str]] = {}
    texts: dict[str, str] = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(WATCH)
            context.add_cookies(
                [{"name": c.name, "value": c.value or "", "url": base} for c in admin.cookies]
            )

            def on_response(response: Any) -> None:
                if not response.url.startswith(base) or response.status >= 300:
                    return
                kind = response.headers.get("content-type", "")
                if "content-security-policy" not in response.headers:  # pages, static files, API alike
                    missing_csp.append(f"{urlsplit(response.url).path} ({kind})")

            context.on("response", on_response)
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda error: problems.append(f"{page.url}: page error {error}"))
            for target in targets:
                page.goto(base + target)
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(300)
                if target == "/":
                    page.screenshot(path=str(ARTIFACTS / "xss-study-browser.png"))
                if target.startswith("/mammography/static/viewer.html?study=2"):
                    page.screenshot(path=str(ARTIFACTS / "xss-mammography-viewer.png"))
                if target == "/static/audit.html":
                    page.screenshot(path=str(ARTIFACTS / "xss-audit.png"), full_page=True)
                ran = page.evaluate("window.__xss")
                # OpenSeadragon adds a <style> element of its own (its focus outline), which the CSP
                # blocks on the mammography viewer; that is the library, not a payload.
                blocked = [
                    v
                    for v in page.evaluate("window.__csp")
                    if not (v.startswith("style-src") and "/vendor/openseadragon/" in v)
                ]
                if ran is not None:
                    problems.append(f"{target}: payload ran ({ran})")
                if blocked:
                    problems.append(f"{target}: markup injected, stopped by CSP: {blocked}")
                text = page.evaluate("document.title + '\\n' + document.body.innerText")
                shown[target] = [k for k, p in PAYLOADS.items() if p in text]
                texts[target] = text
            # The sign-in page for a visitor with a hostile ?next=: no open redirect, nothing runs.
            visitor = browser.new_context()
            visitor.add_init_script(WATCH)
            login = visitor.new_page()
            login.goto(f"{base}/static/login.html?next={quote('javascript:window.__xss=1')}")
            login.fill("#username", "viewer")
            login.fill("#password", PASSWORD)
            login.click("#sign-in")
            login.wait_for_load_state("networkidle")
            assert (
                urlsplit(login.url).netloc == urlsplit(base).netloc and login.evaluate("window.__xss") is None
            )
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
    assert not missing_csp, missing_csp
    # The text is shown, literally, where it is displayed.
    assert {"PatientName", "PatientID", "StudyDescription"} <= set(shown["/"]), shown
    assert USER_PAYLOAD in texts["/static/audit.html"]  # the user who signed in
    assert PAYLOADS["StudyDescription"] in texts["/static/audit.html"]  # the failed login's user name
