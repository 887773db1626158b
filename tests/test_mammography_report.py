"""BI-RADS report: validation, the SR round-trip through the archive, structure checks, PDF and lay letter."""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from modules.mammography.letters import ExamContext, density_statement, letter_pdf
from modules.mammography.report import (
    BiradsReport,
    Finding,
    ImageMark,
    build_sr,
    overall_from_breasts,
    report_from_sr,
    validate,
)
from sample_data.mammography import CURRENT, RIVERA, write_mammography_demo
from server.serve import BackgroundServer
from tests.conftest import make_settings

EXAM = ExamContext("Rivera^Elena", "TES-MG-0001", "19680412", "20250610", "ACC-MG-2025", "MAMMO SCREENING")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mammography_demo(
        tmp_path_factory.mktemp("mg"), shape=(320, 256), tomo_shape=(160, 128), slices=6
    )


def _sop(paths: list[Path], name: str) -> tuple[str, str]:
    path = next(p for p in paths if p.name == name and "2025" in str(p))
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.SOPInstanceUID), str(ds.SOPClassUID)


def suspicious_report(paths: list[Path]) -> BiradsReport:
    lcc, cls = _sop(paths, "02-LCC.dcm")
    tomo, tomo_cls = _sop(paths, "10-LCC_Tomosynthesis.dcm")
    return BiradsReport(
        study_instance_uid=CURRENT.uid_for(RIVERA),
        composition="c",
        findings=[
            Finding(
                laterality="L",
                kind="mass",
                clock="2",
                depth="middle",
                distance_from_nipple_mm=62.5,
                descriptors={"shape": "irregular", "margin": "spiculated", "density": "high"},
                associated_features=["architectural distortion"],
                assessment="4C",
                marks=[
                    ImageMark(lcc, cls, 0, [[250.0, 180.0], [268.0, 196.0]]),
                    ImageMark(tomo, tomo_cls, 3, [[125.0, 90.0]]),
                ],
            ),
            Finding(
                laterality="L",
                kind="calcifications",
                clock="2",
                descriptors={"morphology": "fine pleomorphic", "distribution": "grouped"},
                assessment="4B",
            ),
        ],
        assessment_right="1",
        assessment_left="4C",
        assessment_overall="4C",
        comparison="Compared with 2024-06-04",
        narrative="New since the prior examination.",
        reader="Okafor^Ngozi",
    )


def test_validation_names_each_problem() -> None:
    bad = BiradsReport(
        study_instance_uid="1.2",
        composition="e",
        findings=[
            Finding("L", "mass", descriptors={"morphology": "amorphous"}, marks=[ImageMark("9.9", "1.2", 0)]),
            Finding("R", "asymmetry", clock="13", marks=[ImageMark("img-left", "1.2", 0)]),
        ],
        assessment_right="2",
        assessment_left="4A",
        assessment_overall="0",
    )
    problems = validate(bad, {"img-left": "L"})
    text = " | ".join(problems)
    assert "breast composition (a–d) is required" in text
    assert "most severe breast assessment (4A)" in text
    assert "category 0 must say what is needed" in text
    assert "a mass has no morphology descriptor" in text
    assert "not part of this exam" in text
    assert "'13' is not a clock position" in text
    assert "a R finding is marked on a L image" in text
    assert overall_from_breasts("2", "0") == "0" and overall_from_breasts("4A", "3") == "4A"
    assert validate(BiradsReport("1.2", composition="b", assessment_overall="1"), {}) == []


def test_sr_structure_and_round_trip(demo: list[Path]) -> None:
    report = suspicious_report(demo)
    evidence = [dcmread(p, stop_before_pixels=True) for p in demo if "2025" in str(p)]
    sr = build_sr(report, evidence, "1.2.3.4", "1.2.3.4.5", 1)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "111400"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "4200"
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in sr.ContentSequence]
    assert names == ["121049", "121008", "111412", "111414"]
    supplementary = sr.ContentSequence[3]
    inner = [item.ConceptNameCodeSequence[0].CodeValue for item in supplementary.ContentSequence]
    assert inner == ["121058", "111006", "111424", "121070", "111413"]
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "VERIFIED"
    evidence_uids = {
        sop.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert {str(ds.SOPInstanceUID) for ds in evidence} == evidence_uids
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    reread = dcmread(io.BytesIO(buffer.getvalue()))
    assert report_from_sr(reread) == report


def test_density_wording_and_pdf_text(demo: list[Path]) -> None:
    report = suspicious_report(demo)
    assert "Your breast tissue is dense." in density_statement(report)
    fatty = BiradsReport("1.2", composition="b", assessment_overall="1")
    assert "Your breast tissue is not dense." in density_statement(fatty)
    text = pdf_text(letter_pdf(report, EXAM))
    assert "Your breast tissue is dense." in text
    assert "needs a biopsy" in text
    assert "Dear Elena Rivera" in text


def pdf_text(data: bytes) -> str:
    """The shown strings of a reportlab PDF: inflate each stream, join the (text) operands."""
    strings = []
    for match in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        raw = match.group(1).strip()
        if raw.endswith(b"~>"):  # reportlab: ASCII85 around Flate
            raw = base64.a85decode(raw[:-2])
        try:
            raw = zlib.decompress(raw)
        except zlib.error:
            continue
        strings += [s.decode("latin-1") for s in re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj", raw)]
    return re.sub(r"\s+", " ", " ".join(s.replace("\\(", "(").replace("\\)", ")") for s in strings))


# ---- over HTTP: stored in the archive and re-opened --------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo: list[Path]) -> Iterator[BackgroundServer]:
    running = BackgroundServer.start(make_settings(tmp_path_factory.mktemp("server")))
    for path in demo:
        assert running.ctx.archive.ingest_path(path).ok
    yield running
    running.stop()


def call(server: BackgroundServer, path: str, body: Any = None) -> tuple[int, bytes, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def test_report_saved_as_sr_and_reopened_over_http(server: BackgroundServer, demo: list[Path]) -> None:
    study = CURRENT.uid_for(RIVERA)
    status, body, _ = call(server, f"/mammography/reports/{study}")
    form = json.loads(body)
    assert status == 200 and form["report"] is None and form["saved"] is None
    assert "4C" in form["lexicon"]["assessments"] and len(form["images"]) == 6
    assert call(server, f"/mammography/reports/{study}/letter.pdf")[0] == 404

    status, body, content_type = call(server, f"/mammography/reports/{study}", {"composition": "z"})
    problem = json.loads(body)
    assert status == 422 and content_type == "application/problem+json"
    assert "breast composition (a–d) is required" in problem["problems"]

    report = suspicious_report(demo)
    status, body, _ = call(server, f"/mammography/reports/{study}", report.to_json())
    assert status == 201, body
    saved = json.loads(body)
    stored = server.ctx.archive.instance_by_uid(saved["SOPInstanceUID"])
    assert stored is not None and stored.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
    reopened = json.loads(call(server, f"/mammography/reports/{study}")[1])
    assert reopened["report"] == report.to_json()
    assert reopened["saved"]["versions"] == 1

    status, html, content_type = call(server, f"/mammography/reports/{study}/report.html")
    assert status == 200 and content_type.startswith("text/html")
    assert b"BI-RADS 4C" in html and b"<script" not in html and b"style=" not in html
    status, pdf, content_type = call(server, f"/mammography/reports/{study}/report.pdf")
    assert status == 200 and content_type == "application/pdf" and pdf.startswith(b"%PDF")
    assert "BI-RADS 4C" in pdf_text(pdf)
    status, letter, _ = call(server, f"/mammography/reports/{study}/letter.html")
    assert b"Your breast tissue is dense." in letter
    # A second version replaces the first when reopened.
    changed = {**report.to_json(), "narrative": "Second reading."}
    assert call(server, f"/mammography/reports/{study}", changed)[0] == 201
    again = json.loads(call(server, f"/mammography/reports/{study}")[1])
    assert again["report"]["narrative"] == "Second reading." and again["saved"]["versions"] == 2


def test_dcmtk_parses_the_report_and_the_cad_sr(demo: list[Path], tmp_path: Path) -> None:
    """A second implementation (DCMTK's dsrdump) reads both SRs without errors: content tree,
    value types and the Comprehensive SR relationship constraints."""
    import shutil
    import subprocess

    if shutil.which("dsrdump") is None:
        pytest.skip("DCMTK's dsrdump is not installed (Debian package dcmtk)")
    report = suspicious_report(demo)
    evidence = [dcmread(p, stop_before_pixels=True) for p in demo if "2025" in str(p) and "CAD" not in p.name]
    path = tmp_path / "birads.dcm"
    build_sr(report, evidence, "1.2.3.4", "1.2.3.4.5", 1).save_as(path, enforce_file_format=True)
    cad = next(p for p in demo if "CAD" in p.name)
    for target, title in ((path, "Breast Imaging Report"), (cad, "Mammography CAD Report")):
        result = subprocess.run(["dsrdump", str(target)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert not [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
        assert title in result.stdout


def test_category_zero_and_own_recommendation_round_trip(demo: list[Path]) -> None:
    report = BiradsReport(
        study_instance_uid=CURRENT.uid_for(RIVERA),
        composition="a",
        findings=[Finding("R", "asymmetry", clock="subareolar", descriptors={"asymmetry": "developing"})],
        assessment_right="0",
        assessment_overall="0",
        incomplete_needs=["additional imaging evaluation", "prior mammograms for comparison"],
        recommendation="Spot compression CC and MLO of the right breast.",
    )
    assert validate(report, {}) == []
    evidence = [dcmread(p, stop_before_pixels=True) for p in demo if "2025" in str(p) and "CAD" not in p.name]
    sr = build_sr(report, evidence, "1.2.3.4", "1.2.3.4.6", 2)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    again = report_from_sr(dcmread(io.BytesIO(buffer.getvalue())))
    assert again == report and again.management == report.recommendation
    assert "Your breast tissue is not dense." in density_statement(report)
