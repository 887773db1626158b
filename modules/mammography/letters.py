"""Printable outputs of a BI-RADS report: the physician report and the MQSA lay summary letter,
each as HTML (escaped, no scripts or inline styles, so it passes the server's CSP) and PDF.

The lay letter carries the breast-density statement the FDA's MQSA rule prescribes
(21 CFR 900.12(c)(2)(iv), in force since September 2024) word for word: "not dense" for
composition a or b, "dense" for c or d. PDFs are drawn with reportlab.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from html import escape

from reportlab.lib.pagesizes import letter
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

from modules.mammography.report import BiradsReport, finding_sentence, lexicon


@dataclass(frozen=True)
class ExamContext:
    """Who and what the report is about (from the study's header)."""

    patient_name: str
    patient_id: str
    birth_date: str
    study_date: str
    accession_number: str
    study_description: str
    facility: str = "Tessera Breast Center"


def _person(name: str) -> str:
    parts = [p for p in name.split("^") if p]
    return " ".join(parts[1:2] + parts[:1]) if len(parts) > 1 else name


def _date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if len(da) == 8 and da.isdigit() else da


def density_statement(report: BiradsReport) -> str:
    """The MQSA-prescribed density paragraph for the report's composition."""
    lex = lexicon()
    dense = bool(lex["composition"][report.composition]["dense"])
    return str(lex["mqsa_density"]["dense" if dense else "not_dense"])


def report_paragraphs(report: BiradsReport, exam: ExamContext) -> list[tuple[str, str]]:
    """(heading, text) pairs: the one content both the HTML and the PDF render."""
    lex = lexicon()
    overall = lex["assessments"].get(report.assessment_overall, {})
    sections = [
        ("Patient", f"{_person(exam.patient_name)} · ID {exam.patient_id} · born {_date(exam.birth_date)}"),
        (
            "Examination",
            f"{exam.study_description} · {_date(exam.study_date)} · accession {exam.accession_number}",
        ),
    ]
    if report.comparison:
        sections.append(("Comparison", report.comparison))
    sections.append(
        (
            "Breast composition",
            f"{report.composition.upper()}. {lex['composition'][report.composition]['label']}",
        )
    )
    if report.findings:
        for i, finding in enumerate(report.findings, start=1):
            sections.append((f"Finding {i}", finding_sentence(finding)))
    else:
        sections.append(
            ("Findings", "No suspicious mass, calcifications, architectural distortion or asymmetry.")
        )
    if report.narrative:
        sections.append(("Comment", report.narrative))
    per_breast = ", ".join(
        f"{side} BI-RADS {value}"
        for side, value in (("right", report.assessment_right), ("left", report.assessment_left))
        if value
    )
    assessment = f"BI-RADS {report.assessment_overall}: {overall.get('label', '')}"
    sections.append(("Assessment", assessment + (f" ({per_breast})" if per_breast else "")))
    if report.incomplete_needs:
        sections.append(("Needed to complete", " and ".join(report.incomplete_needs)))
    sections.append(("Recommendation", report.management))
    if report.reader:
        sections.append(("Reported by", _person(report.reader)))
    return sections


def letter_paragraphs(report: BiradsReport, exam: ExamContext) -> list[tuple[str, str]]:
    """The lay summary: result in plain words, the density statement, what to do next."""
    lex = lexicon()
    overall = lex["assessments"][report.assessment_overall]
    return [
        ("", f"Dear {_person(exam.patient_name)},"),
        ("", f"Thank you for having your mammogram at {exam.facility} on {_date(exam.study_date)}."),
        ("Your result", str(overall["lay"])),
        ("Breast density", density_statement(report)),
        (
            "",
            "A mammogram does not find every cancer. If you notice a lump or any other change in your "
            "breasts, tell your healthcare provider even if your mammogram result is normal.",
        ),
        ("", f"A report of your mammogram has been sent to your healthcare provider. {exam.facility}"),
    ]


def _html(title: str, sections: list[tuple[str, str]]) -> str:
    body = []
    for heading, text in sections:
        paragraph = escape(text).replace("\n", "<br>")
        body.append(f"<h2>{escape(heading)}</h2><p>{paragraph}</p>" if heading else f"<p>{paragraph}</p>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<link rel="stylesheet" href="/mammography/static/print.css"></head>'
        f'<body class="print"><h1>{escape(title)}</h1>{"".join(body)}</body></html>\n'
    )


def _pdf(title: str, sections: list[tuple[str, str]]) -> bytes:
    buffer = io.BytesIO()
    styles = getSampleStyleSheet()
    document = SimpleDocTemplate(
        buffer, pagesize=letter, title=title, leftMargin=20 * mm, rightMargin=20 * mm, topMargin=18 * mm
    )
    story = [Paragraph(escape(title), styles["Title"])]
    for heading, text in sections:
        if heading:
            story.append(Paragraph(escape(heading), styles["Heading3"]))
        story.append(Paragraph(escape(text).replace("\n", "<br/>"), styles["BodyText"]))
        story.append(Spacer(1, 3 * mm))
    document.build(story)
    return buffer.getvalue()


def report_html(report: BiradsReport, exam: ExamContext) -> str:
    return _html("Mammography report", report_paragraphs(report, exam))


def report_pdf(report: BiradsReport, exam: ExamContext) -> bytes:
    return _pdf("Mammography report", report_paragraphs(report, exam))


def letter_html(report: BiradsReport, exam: ExamContext) -> str:
    return _html("Your mammogram results", letter_paragraphs(report, exam))


def letter_pdf(report: BiradsReport, exam: ExamContext) -> bytes:
    return _pdf("Your mammogram results", letter_paragraphs(report, exam))
