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
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import FileDataset

from server.security.policy import Role
from server.security.service import security_of
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_security_access import PASSWORD, quick_argon2, start_secure
from tests.test_security_browser import ARTIFACTS

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
ANN_PAYLOADS = {
    "label": "<img src=x onerror=window.__xss='ann'>",
    "SeriesDescription": "<svg onload=alert('ann-series')>",
    "Manufacturer": "\"><script>window.__xss='ann-maker'</script>",
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
    slide = generate(replace(SIZES["small"], width=1024, height=768), scratch / "wsi").dicom_files
    paths += slide
    datasets += [dcmread(p) for p in paths]
    for ds in datasets:
        outcome = server.ctx.archive.ingest_bytes(hostile(ds))
        assert outcome.ok, outcome.reason
    server.ctx.archive.ingest_bytes(hostile_slide_annotations(dcmread(slide[0], stop_before_pixels=True)))


def hostile_slide_annotations(level_0: FileDataset) -> bytes:
    """Another tool's DICOM bulk annotations of the slide, hostile where the pathology viewers show
    them (the read-only DICOM layer: series description, manufacturer, group label)."""
    import numpy as np

    from tests.test_pathology_dicom_annotations import other_tool_ann

    outline = np.array([[100.0, 100.0], [400.0, 120.0], [380.0, 400.0]], dtype=np.float32)
    ann = other_tool_ann(level_0, "2D", [(ANN_PAYLOADS["label"], "POLYGON", [outline])])
    ann.SeriesDescription = ANN_PAYLOADS["SeriesDescription"]
    ann.Manufacturer = ANN_PAYLOADS["Manufacturer"]
    ann.SpecificCharacterSet = "ISO_IR 192"
    buffer = io.BytesIO()
    ann.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


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


def inspect_page(page: Any, target: str, problems: list[str]) -> str:
    """Note on ``problems`` a payload that ran or markup the CSP stopped; return the shown text."""
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
    return str(page.evaluate("document.title + '\\n' + document.body.innerText"))


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
    slide_pages = [
        t
        for t in targets
        if t.startswith("/pathology/static/viewer.html?study=") and URL_PAYLOAD[0] not in unquote(t)
    ]
    assert slide_pages, targets
    series = slide_pages[0].rsplit("series=", 1)[1]
    targets.append(slide_pages[0].replace("viewer.html", "compare.html") + f"&compare={series}")
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
                text = inspect_page(page, target, problems)
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
    # the slide's DICOM annotation layer, in the single viewer and on both sides of the compare page
    for target in (slide_pages[0], targets[-1]):
        for key, payload in ANN_PAYLOADS.items():
            count = texts[target].count(payload)
            assert count >= (2 if "compare" in target and key != "label" else 1), (target, key, texts[target])
    assert PAYLOADS["StudyDescription"] in texts["/static/audit.html"]  # the failed login's user name


# Module texts that are not DICOM tags of the core sweep: what users type into the cardiology
# and orthopedics APIs, and the DICOM strings only those viewers show.
MODULE_PAYLOADS = {
    "ViewName": "<img src=x onerror=window.__xss='ViewName'>",
    "StageName": "<svg onload=window.__xss='StageName'>",
    "CalibrationDescription": "<img src=x onerror=alert('CalibrationDescription')>",
    "ImplantName": "<script>window.__xss='ImplantName'</script>",
    "Manufacturer": "<b onmouseover=alert('Manufacturer')>GIT",
    "ImplantSize": "<i>52</i>",
    "label": "<img src=x onerror=window.__xss='label'>",
    "kind": "<svg/onload=window.__xss='kind'>",
    "note": "</textarea><script>window.__xss='note'</script>",
    "id": "\"><img src=x onerror=window.__xss='id'>",
}


def plant_cardiology_and_orthopedics(server: BackgroundServer, scratch: Path) -> None:
    """An echo loop with a hostile view and stage, radiographs with a hostile calibration note,
    and a DICOM implant template (GIT) whose manufacturer, name and size are hostile."""
    from sample_data.cardiology import echo_loop
    from sample_data.orthopedics import generic_implant_template, write_orthopedics_demo

    loop = echo_loop("A4C", n_frames=6, rows=120, columns=160, stage=(1, MODULE_PAYLOADS["StageName"], 1))
    loop.ViewName = MODULE_PAYLOADS["ViewName"]
    radiographs = [dcmread(p) for p in write_orthopedics_demo(scratch / "ortho")]
    for ds in radiographs:
        if ds.get("PixelSpacingCalibrationType") == "GEOMETRY":
            ds.PixelSpacingCalibrationDescription = MODULE_PAYLOADS["CalibrationDescription"]
    template = generic_implant_template(
        manufacturer=MODULE_PAYLOADS["Manufacturer"], implant_name=MODULE_PAYLOADS["ImplantName"]
    )
    template.ImplantSize = MODULE_PAYLOADS["ImplantSize"]
    # The echo keeps its body part and series description: they are what makes it a cardiac loop.
    part, description = loop.BodyPartExamined, loop.SeriesDescription
    encoded = [hostile(ds) for ds in radiographs]
    hostile(loop)
    loop.BodyPartExamined, loop.SeriesDescription = part, description
    for ds in (loop, template):
        ds.SpecificCharacterSet = "ISO_IR 192"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        encoded.append(buffer.getvalue())
    for data in encoded:
        outcome = server.ctx.archive.ingest_bytes(data)
        assert outcome.ok, outcome.reason


def save_module_texts(base: str, session: requests.Session) -> tuple[list[str], dict[str, str]]:
    """Hostile labels, ids, kinds and notes through the cardiology and orthopedics APIs; the
    viewer pages to open, and the radiograph a plan was saved on, by page."""
    targets: list[str] = []
    planned: dict[str, str] = {}
    (echo,) = studies_with(base, session, "US")
    study = echo["StudyInstanceUID"]
    index = session.get(f"{base}/cardiology/studies/{study}/loops", timeout=30).json()
    sop = index["loops"][0]["sop_instance_uid"]
    saved = session.put(
        f"{base}/cardiology/studies/{study}/measurements",
        json={
            "measurements": [
                {
                    "id": MODULE_PAYLOADS["id"],
                    "kind": "distance",
                    "sop_instance_uid": sop,
                    "frame": 1,
                    "points": [[20, 20], [90, 70]],
                    "label": MODULE_PAYLOADS["label"],
                },
                {
                    "id": "2",
                    "kind": "area",
                    "sop_instance_uid": sop,
                    "frame": 2,
                    "points": [[30, 30], [80, 30], [60, 80]],
                    "label": MODULE_PAYLOADS["note"],
                },
            ]
        },
        timeout=30,
    )
    assert saved.status_code == 200, saved.text
    assert [m["label"] for m in saved.json()["measurements"]] == [
        MODULE_PAYLOADS["label"],
        MODULE_PAYLOADS["note"],
    ]
    targets += [s["viewer_url"] for s in echo["series"]]

    templates = session.get(f"{base}/orthopedics/templates", timeout=60).json()["templates"]
    (git,) = [t for t in templates if t["source"] == "DICOM GIT"]
    assert (
        git["name"] == MODULE_PAYLOADS["ImplantName"]
        and git["manufacturer"] == MODULE_PAYLOADS["Manufacturer"]
    )
    for study in studies_with(base, session, "DX"):
        for series in study["series"]:
            images = session.get(
                f"{base}/orthopedics/studies/{study['StudyInstanceUID']}/series/{series['SeriesInstanceUID']}/images",
                timeout=30,
            ).json()
            image = images["images"][0] if isinstance(images, dict) else images[0]
            radiograph = image["sop_instance_uid"]
            calibration = session.get(
                f"{base}/orthopedics/images/{radiograph}/calibration", timeout=30
            ).json()
            plan: dict[str, Any] = {
                "measurements": [
                    {
                        "id": "m1",
                        "kind": "leg-length",
                        "label": MODULE_PAYLOADS["label"],
                        "points": [[100, 400], [500, 400], [150, 600], [450, 610]],
                    },
                ],
                "templates": [
                    {
                        "id": "t1",
                        "template_id": git["id"],
                        "size": MODULE_PAYLOADS["ImplantSize"],
                        "x": 300,
                        "y": 300,
                    }
                ],
                "note": MODULE_PAYLOADS["note"],
            }
            # a measurement of an unknown kind is refused (it could never be computed)
            hostile_kind = {"id": "m2", "kind": MODULE_PAYLOADS["kind"], "points": [[10, 10], [20, 20]]}
            refused = session.put(
                f"{base}/orthopedics/images/{radiograph}/plan",
                json={**plan, "measurements": [*plan["measurements"], hostile_kind]},
                timeout=60,
            )
            assert refused.status_code == 400, refused.text
            assert refused.headers["Content-Type"].startswith("application/problem+json")
            assert "unknown measurement" in refused.json()["detail"]
            put = session.put(f"{base}/orthopedics/images/{radiograph}/plan", json=plan, timeout=60)
            assert put.status_code == 200, put.text
            assert put.json()["plan"]["note"] == MODULE_PAYLOADS["note"]
            # the PDF report draws the hostile labels as plain text (no markup to trip over)
            report = session.get(f"{base}/orthopedics/images/{radiograph}/plan/report.pdf", timeout=60)
            assert report.status_code == 200 and report.content.startswith(b"%PDF"), report.text[:200]
            targets.append(series["viewer_url"])
            planned[series["viewer_url"]] = calibration["description"]
    return targets, planned


def test_no_module_text_runs_in_cardiology_or_orthopedics(
    tessera_server_factory: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    secure = start_secure(tessera_server_factory, audit_fsync=False)
    base = secure.url
    plant_cardiology_and_orthopedics(secure.server, tmp_path)
    admin = secure.login("administrator")
    admin.headers["X-XSRF-Token"] = admin.cookies.get("tessera_xsrf") or ""
    targets, planned = save_module_texts(base, admin)
    assert any(t.startswith("/cardiology/") for t in targets) and len(planned) == 2, targets
    # The calibration note of the long-leg film reaches the API as the hostile text itself.
    assert any(MODULE_PAYLOADS["CalibrationDescription"] in d for d in planned.values()), planned

    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    texts: dict[str, str] = {}
    notes: dict[str, str] = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(WATCH)
            context.add_cookies(
                [{"name": c.name, "value": c.value or "", "url": base} for c in admin.cookies]
            )
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda error: problems.append(f"{page.url}: page error {error}"))
            for n, target in enumerate(targets):
                page.goto(base + target)
                page.wait_for_load_state("networkidle")
                if target.startswith("/cardiology/"):
                    page.wait_for_function("document.querySelectorAll('#measurements li').length === 2")
                else:
                    page.wait_for_function(
                        "document.querySelectorAll('#measurements li, #templates li').length >= 2"
                    )
                    # every template the library offers, the hostile DICOM GIT one included
                    page.wait_for_function("document.querySelectorAll('#template option').length >= 2")
                    notes[target] = page.input_value("#note")
                page.wait_for_timeout(300)
                page.screenshot(path=str(ARTIFACTS / f"xss-{target.split('/')[1]}-{n}.png"))
                texts[target] = inspect_page(page, target, problems)
                texts[target] += "\n" + page.evaluate(
                    "[...document.querySelectorAll('option, optgroup')].map((o) => o.textContent + ' ' + o.label).join('\\n')"
                )
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
    for target, text in texts.items():
        if target.startswith("/cardiology/"):
            wanted = ["ViewName", "StageName"]
        else:
            wanted = ["ImplantName", "Manufacturer", "ImplantSize"]
            assert notes[target] == MODULE_PAYLOADS["note"], notes
        missing = [k for k in wanted if MODULE_PAYLOADS[k] not in text]
        assert not missing, f"{target}: not shown literally: {missing}\n{text}"
    # the long-leg film shows its hostile calibration note as text
    assert any(MODULE_PAYLOADS["CalibrationDescription"] in t for t in texts.values())
