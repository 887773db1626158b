"""Path traversal: no URL and no DICOM value ever becomes a filesystem path.

Every route of the running application (core, DICOMweb, module and static routes) is requested
with traversal payloads in each of its path parameters, sent byte for byte (no client-side
normalisation); DICOM values carrying ``../`` are ingested and must not name any file.
"""

from __future__ import annotations

import http.client
import os
import re
from pathlib import Path

from pydicom.uid import generate_uid

from sample_data.radiology import ct_series
from server.archive.archive import StoreStatus
from server.serve import BackgroundServer
from server.web.app import handler_rules, make_app
from tests.dicom_cases import to_bytes

CANARY = "tessera-canary-7f3a9c"
PAYLOADS = [
    "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252F..%252F..%252Fetc%252Fpasswd",  # double-encoded
    "%2Fetc%2Fpasswd",  # absolute
    "..%5C..%5C..%5Cindex.sqlite3",  # backslashes
    "1.2.3%00.json",  # NUL byte
    "..%2Findex.sqlite3",
    "..%2F..%2Fcanary.txt",
    "..%2F..%2F..%2Fcanary.txt",
    "%2e%2e",
    "....%2F%2F....%2F%2Fetc%2Fpasswd",
]
LITERAL_PAYLOADS = ["../../../../etc/passwd", "..\\..\\canary.txt", "/etc/passwd"]
_CAPTURE = re.compile(r"\((?!\?:)")


def _templates(server: BackgroundServer) -> list[str]:
    """Each route's pattern with its capture groups replaced by ``{}`` (complex regexes skipped)."""
    templates = []
    for rule in handler_rules(make_app(server.ctx)):
        pattern = rule.matcher.regex.pattern.lstrip("^").rstrip("$")  # type: ignore[attr-defined]
        out, depth, i = "", 0, 0
        while i < len(pattern):
            char = pattern[i]
            if char == "\\" and depth:
                i += 2
                continue
            if char == "(":
                if depth == 0:
                    out += "{}"
                depth += 1
            elif char == ")":
                depth -= 1
            elif depth == 0:
                out += char
            i += 1
        out = out.replace("/?", "").replace("\\.", ".").replace("\\-", "-")
        if out.startswith("/") and not re.search(r"[\[\]*+?|\\^$]", out):
            templates.append(out)
    return templates


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_traversal_in_every_path_parameter_is_refused(
    tessera_server: BackgroundServer, tmp_path: Path
) -> None:
    (tmp_path / "canary.txt").write_text(CANARY)
    (tessera_server.settings.data_dir / "canary.txt").write_text(CANARY)
    templates = _templates(tessera_server)
    assert any(t.startswith("/static/") for t in templates)
    assert any(t.startswith("/dicom-web/") for t in templates)
    assert any(t.startswith("/pathology/") for t in templates)
    failures = []
    requests_sent = 0
    for template in templates:
        slots = template.count("{}")
        for slot in range(slots):
            for payload in PAYLOADS + LITERAL_PAYLOADS:
                values = ["1.2.3"] * slots
                values[slot] = payload
                path = template.format(*values)
                status, body = _get(tessera_server.port, path)
                requests_sent += 1
                leaked = CANARY.encode() in body or b"root:x:0:0" in body or b"SQLite format 3" in body
                if status >= 500 or leaked:
                    failures.append((path, status, body[:120]))
    assert requests_sent > 300
    assert not failures, failures
    assert _get(tessera_server.port, "/api/health")[0] == 200


def test_static_files_stay_inside_their_folders(tessera_server: BackgroundServer) -> None:
    for path in (
        "/static/../server/config.py",
        "/static/%2e%2e/server/config.py",
        "/static/..%2fserver%2fconfig.py",
        "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        "/vendor/openseadragon/..%2f..%2f..%2fpackage.json",
        "/pathology/static/..%2f..%2f..%2fserver%2fconfig.py",
        "/static/index.html%00.js",
    ):
        status, body = _get(tessera_server.port, path)
        assert status in (400, 403, 404), (path, status)
        assert b"class Settings" not in body and b"root:x:0:0" not in body


def test_dicom_values_with_traversal_never_name_a_file(tessera_server: BackgroundServer) -> None:
    archive = tessera_server.ctx.archive
    data_dir = tessera_server.settings.data_dir
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        ds = ct_series(1, size=32)[0]
        setattr(ds, keyword, "../../../../tmp/evil")
        outcome = archive.ingest_bytes(to_bytes(ds))
        assert outcome.status is StoreStatus.REJECTED, keyword
        assert "not a valid UID" in (outcome.reason or ""), outcome.reason
    ds = ct_series(1, size=32, series_number=7)[0]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "../../../../tmp/evil-patient"
    ds.PatientName = "..\\..\\evil^name"
    ds.SeriesDescription = "/etc/passwd"
    ds.AccessionNumber = "../acc"
    ds.StudyID = "../../sid"
    assert archive.ingest_bytes(to_bytes(ds)).status is StoreStatus.STORED
    tessera_server.ctx.archive.reconcile()
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            assert "evil" not in name and "passwd" not in name and ".." not in name, os.path.join(root, name)
    assert not Path("/tmp/evil").exists() and not Path("/tmp/evil-patient").exists()
    # The instance is served by its UIDs, whatever its other values say.
    status, body = _get(
        tessera_server.port,
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered",
    )
    assert status == 200 and body[:2] == b"\xff\xd8"
