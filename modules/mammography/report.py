"""The BI-RADS report: the form's document, its validation, and its DICOM SR (TID 4200 structure).

The form edits a :class:`BiradsReport` (plain JSON); saving validates it, encodes it as a
Comprehensive SR whose tree follows TID 4200 "Breast Imaging Report" (narrative summary
TID 4201, supplementary data TID 4202 with procedure reported, breast composition,
findings with location, descriptors and the image coordinates they were marked on, and
the overall and per-breast assessments), and stores it through the archive's one ingest
path. Reopening reads the SR back into the same document, so a report round-trips
unchanged. The vocabulary is data (``birads.json``); codes the standard does not define
(4A/4B/4C subcategories, mass density, asymmetry type) use the local scheme ``99TSR``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

LEXICON_PATH = Path(__file__).parent / "birads.json"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
BREAST_IMAGING_REPORT = ("111400", "DCM", "Breast Imaging Report")
SCREENING_MAMMOGRAPHY = ("24623002", "SCT", "Screening mammography")
LATERALITY_CODES = {"R": codes.SCT.Right, "L": codes.SCT.Left, "B": codes.SCT.Bilateral}
LOCAL = "99TSR"  # Tessera's local coding scheme for concepts BI-RADS names but DICOM does not code


class ReportInvalid(ValueError):
    """The report cannot be saved; ``problems`` lists each reason in the reader's words."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@cache
def lexicon() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(LEXICON_PATH.read_text("utf-8"))
    return document


def _code(triple: list[str] | tuple[str, str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=triple[0], scheme_designator=triple[1], meaning=triple[2])


def _dcm(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator="DCM", meaning=meaning)


@dataclass
class ImageMark:
    """Where a finding was marked: an image (and frame) and its points in image pixels."""

    sop_instance_uid: str
    sop_class_uid: str
    frame: int = 0  # 0-based
    points: list[list[float]] = field(default_factory=list)  # [[x, y], ...] (column, row)


@dataclass
class Finding:
    laterality: str  # "R" / "L"
    kind: str  # a key of lexicon()["finding_types"]
    clock: str = ""  # "1".."12", "subareolar", "central", "axillary tail"
    depth: str = ""  # anterior / middle / posterior
    distance_from_nipple_mm: float | None = None
    descriptors: dict[str, str] = field(default_factory=dict)  # e.g. {"shape": "irregular"}
    associated_features: list[str] = field(default_factory=list)
    assessment: str = ""  # "0".."6", "4A".."4C"
    marks: list[ImageMark] = field(default_factory=list)


@dataclass
class BiradsReport:
    study_instance_uid: str
    composition: str = ""  # a–d
    findings: list[Finding] = field(default_factory=list)
    assessment_right: str = ""
    assessment_left: str = ""
    assessment_overall: str = ""
    incomplete_needs: list[str] = field(default_factory=list)  # category 0: what is missing
    recommendation: str = ""  # empty: the category's standard management recommendation
    comparison: str = ""  # e.g. "Compared with 2024-06-04"
    narrative: str = ""
    reader: str = ""  # DICOM person name, e.g. "Okafor^Ngozi"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> BiradsReport:
        """The form's document (unknown keys are an error: they would be lost silently)."""
        try:
            findings = [
                Finding(**{**f, "marks": [ImageMark(**m) for m in f.get("marks", [])]})
                for f in document.get("findings", [])
            ]
            return cls(**{**document, "findings": findings})
        except TypeError as exc:
            raise ReportInvalid([f"the report document is malformed: {exc}"]) from exc

    @property
    def management(self) -> str:
        """What the reader wrote, else the overall category's standard recommendation."""
        if self.recommendation:
            return self.recommendation
        entry = lexicon()["assessments"].get(self.assessment_overall)
        return str(entry["recommendation"]) if entry else ""


_SEVERITY = ["1", "2", "3", "0", "4A", "4B", "4C", "5", "6"]  # overall follows the worst breast


def overall_from_breasts(right: str, left: str) -> str:
    known = [a for a in (right, left) if a in _SEVERITY]
    return max(known, key=_SEVERITY.index) if known else ""


def validate(report: BiradsReport, image_laterality: dict[str, str]) -> list[str]:
    """Problems that keep the report from being signed; empty when it can be saved.

    ``image_laterality`` maps the SOP Instance UIDs of the exam's images to their
    laterality, so a finding marked on the other breast's image is caught.
    """
    lex = lexicon()
    problems: list[str] = []
    assessments = lex["assessments"]
    if report.composition not in lex["composition"]:
        problems.append("breast composition (a–d) is required")
    for name, value in (
        ("overall", report.assessment_overall),
        ("right", report.assessment_right),
        ("left", report.assessment_left),
    ):
        if value and value not in assessments:
            problems.append(f"the {name} assessment {value!r} is not a BI-RADS category")
    if not report.assessment_overall:
        problems.append("an overall assessment is required")
    worst = overall_from_breasts(report.assessment_right, report.assessment_left)
    if worst and report.assessment_overall and report.assessment_overall != worst:
        problems.append(
            f"the overall assessment {report.assessment_overall} must be the most severe breast assessment ({worst})"
        )
    if report.assessment_overall == "0":
        unknown = [n for n in report.incomplete_needs if n not in lex["incomplete_needs"]]
        if not report.incomplete_needs or unknown:
            problems.append(
                "category 0 must say what is needed: additional imaging evaluation and/or prior mammograms for comparison"
            )
    if report.assessment_overall in ("3", "4A", "4B", "4C", "5") and not report.findings:
        problems.append(f"category {report.assessment_overall} needs at least one finding it applies to")
    for i, finding in enumerate(report.findings, start=1):
        where = f"finding {i}"
        kind = lex["finding_types"].get(finding.kind)
        if finding.laterality not in ("R", "L"):
            problems.append(f"{where}: laterality must be R or L")
        if kind is None:
            problems.append(f"{where}: {finding.kind!r} is not a BI-RADS finding type")
            continue
        for descriptor, value in finding.descriptors.items():
            if descriptor not in kind["descriptors"]:
                problems.append(f"{where}: a {kind['label'].lower()} has no {descriptor} descriptor")
            elif value not in lex["descriptors"][descriptor]["values"]:
                problems.append(f"{where}: {value!r} is not a BI-RADS {descriptor}")
        if finding.clock and finding.clock not in lex["clock_positions"]:
            problems.append(f"{where}: location {finding.clock!r} is not a clock position or region")
        if finding.depth and finding.depth not in lex["depths"]:
            problems.append(f"{where}: depth must be anterior, middle or posterior")
        if finding.assessment and finding.assessment not in assessments:
            problems.append(f"{where}: {finding.assessment!r} is not a BI-RADS category")
        for feature in finding.associated_features:
            if feature not in lex["associated_features"]:
                problems.append(f"{where}: {feature!r} is not a BI-RADS associated feature")
        for mark in finding.marks:
            side = image_laterality.get(mark.sop_instance_uid)
            if side is None:
                problems.append(f"{where}: marked on an image that is not part of this exam")
            elif side in ("R", "L") and side != finding.laterality:
                problems.append(f"{where}: a {finding.laterality} finding is marked on a {side} image")
    return problems


# ---- DICOM SR ------------------------------------------------------------------------------------


def _text(name: hd.sr.CodedConcept, value: str, relation: str = "CONTAINS") -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=relation)


def _assessment_items(category: str, name: hd.sr.CodedConcept) -> list[Any]:
    entry = lexicon()["assessments"][category]
    item = hd.sr.CodeContentItem(name=name, value=_code(entry["code"]), relationship_type="CONTAINS")
    items: list[Any] = [item]
    if "subcategory" in entry:
        items.append(
            hd.sr.CodeContentItem(
                name=_code((f"{LOCAL}-SUB", LOCAL, "BI-RADS assessment subcategory")),
                value=_code(entry["subcategory"]),
                relationship_type="CONTAINS",
            )
        )
    return items


def _finding_container(finding: Finding, evidence: dict[str, Dataset]) -> hd.sr.ContainerContentItem:
    lex = lexicon()
    kind = lex["finding_types"][finding.kind]
    container = hd.sr.ContainerContentItem(name=codes.DCM.Finding, relationship_type="CONTAINS")
    # The finding's type is a CODE whose children say where and what it is (TID 4206 shape):
    # a CONTAINER may not be the source of HAS PROPERTIES in a Comprehensive SR, a CODE may.
    finding_code = hd.sr.CodeContentItem(
        name=codes.DCM.Finding, value=_code(kind["code"]), relationship_type="CONTAINS"
    )
    properties: list[Any] = [
        hd.sr.CodeContentItem(
            name=codes.SCT.Laterality,
            value=LATERALITY_CODES[finding.laterality],
            relationship_type="HAS CONCEPT MOD",
        )
    ]
    if finding.clock:
        properties.append(_text(codes.DCM.ClockfaceOrRegion, finding.clock, "HAS PROPERTIES"))
    if finding.depth:
        properties.append(_text(codes.DCM.Depth, finding.depth, "HAS PROPERTIES"))
    if finding.distance_from_nipple_mm is not None:
        properties.append(
            hd.sr.NumContentItem(
                name=codes.DCM.DistanceFromNipple,
                value=finding.distance_from_nipple_mm,
                unit=hd.sr.CodedConcept("mm", "UCUM", "millimeter"),
                relationship_type="HAS PROPERTIES",
            )
        )
    for descriptor, value in sorted(finding.descriptors.items()):
        spec = lex["descriptors"][descriptor]
        properties.append(
            hd.sr.CodeContentItem(
                name=_code(spec["concept"]),
                value=_code(spec["values"][value]),
                relationship_type="HAS PROPERTIES",
            )
        )
    for feature in finding.associated_features:
        properties.append(_text(codes.SCT.AssociatedFinding, feature, "HAS PROPERTIES"))
    finding_code.ContentSequence = properties
    items: list[Any] = [finding_code]
    if finding.assessment:
        items.extend(_assessment_items(finding.assessment, codes.DCM.AssessmentCategory))
    for mark in finding.marks:
        source = evidence[mark.sop_instance_uid]
        image = hd.sr.ImageContentItem(
            name=codes.DCM.BestIllustrationOfFinding,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            referenced_frame_numbers=[mark.frame + 1]
            if int(source.get("NumberOfFrames", 1) or 1) > 1
            else None,
            relationship_type="CONTAINS",
        )
        if mark.points:
            points = [[float(x), float(y)] for x, y in mark.points]
            graphic = hd.sr.GraphicTypeValues.POINT if len(points) == 1 else hd.sr.GraphicTypeValues.POLYLINE
            scoord = hd.sr.ScoordContentItem(
                name=codes.DCM.ImageRegion,
                graphic_type=graphic,
                graphic_data=np.array(points),
                pixel_origin_interpretation="VOLUME",
                relationship_type="CONTAINS",
            )
            scoord.ContentSequence = [image]
            image.RelationshipType = "SELECTED FROM"
            items.append(scoord)
        else:
            items.append(image)
    container.ContentSequence = items
    return container


def report_content(report: BiradsReport, evidence: dict[str, Dataset]) -> hd.sr.ContainerContentItem:
    """The TID 4200 tree of a report."""
    lex = lexicon()
    root = hd.sr.ContainerContentItem(name=_code(BREAST_IMAGING_REPORT), template_id="4200")
    items: list[Any] = [
        hd.sr.CodeContentItem(
            name=codes.DCM.LanguageOfContentItemAndDescendants,
            value=hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)"),
            relationship_type="HAS CONCEPT MOD",
        )
    ]
    if report.reader:
        items.append(
            hd.sr.PnameContentItem(
                name=codes.DCM.PersonObserverName, value=report.reader, relationship_type="HAS OBS CONTEXT"
            )
        )
    narrative = hd.sr.ContainerContentItem(name=codes.DCM.NarrativeSummary, relationship_type="CONTAINS")
    narrative.ContentSequence = [_text(codes.DCM.NarrativeSummary, narrative_text(report))]
    if report.narrative:  # the reader's own words, kept apart so the form gets them back verbatim
        narrative.ContentSequence.append(_text(codes.DCM.Comment, report.narrative))
    items.append(narrative)

    supplementary = hd.sr.ContainerContentItem(name=codes.DCM.SupplementaryData, relationship_type="CONTAINS")
    data: list[Any] = [
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported, value=_code(SCREENING_MAMMOGRAPHY), relationship_type="CONTAINS"
        )
    ]
    if report.composition:
        data.append(
            hd.sr.CodeContentItem(
                name=codes.DCM.BreastComposition,
                value=_code(lex["composition"][report.composition]["code"]),
                relationship_type="CONTAINS",
            )
        )
    if report.comparison:
        data.append(_text(_dcm("111424", "Comparison to previous studies"), report.comparison))
    findings = hd.sr.ContainerContentItem(name=codes.DCM.Findings, relationship_type="CONTAINS")
    findings.ContentSequence = [_finding_container(f, evidence) for f in report.findings]
    if report.findings:
        data.append(findings)
    overall = hd.sr.ContainerContentItem(name=codes.DCM.OverallAssessment, relationship_type="CONTAINS")
    assessment: list[Any] = []
    if report.assessment_overall:
        assessment.extend(_assessment_items(report.assessment_overall, codes.DCM.AssessmentCategory))
    for side, value in (("R", report.assessment_right), ("L", report.assessment_left)):
        if value:
            per_breast = hd.sr.ContainerContentItem(
                name=codes.DCM.AssessmentCategory, relationship_type="CONTAINS"
            )
            per_breast.ContentSequence = [
                hd.sr.CodeContentItem(
                    name=codes.SCT.Laterality,
                    value=LATERALITY_CODES[side],
                    relationship_type="HAS CONCEPT MOD",
                ),
                *_assessment_items(value, codes.DCM.AssessmentCategory),
            ]
            assessment.append(per_breast)
    for need in report.incomplete_needs:
        assessment.append(_text(_code((f"{LOCAL}-NEED", LOCAL, "Needed to complete the assessment")), need))
    assessment.append(_text(codes.DCM.Recommendation, report.management))
    if report.recommendation:
        assessment.append(
            _text(_code((f"{LOCAL}-OWN", LOCAL, "Recommendation written by the reader")), "yes")
        )
    overall.ContentSequence = assessment
    data.append(overall)
    supplementary.ContentSequence = data
    items.append(supplementary)
    root.ContentSequence = items
    return root


def narrative_text(report: BiradsReport) -> str:
    """The report as prose: what a referring physician reads (also the SR narrative summary)."""
    lex = lexicon()
    lines = []
    if report.comparison:
        lines.append(f"Comparison: {report.comparison}.")
    if report.composition:
        lines.append(
            f"Breast composition: {report.composition.upper()}. {lex['composition'][report.composition]['label']}"
        )
    if report.findings:
        for i, f in enumerate(report.findings, start=1):
            lines.append(f"Finding {i}: {finding_sentence(f)}")
    else:
        lines.append("No suspicious mass, calcifications, architectural distortion or asymmetry.")
    if report.narrative:
        lines.append(report.narrative)
    if report.assessment_overall:
        entry = lex["assessments"][report.assessment_overall]
        lines.append(f"BI-RADS {report.assessment_overall}: {entry['label']}.")
    for side, value in (("Right", report.assessment_right), ("Left", report.assessment_left)):
        if value:
            lines.append(f"{side} breast: BI-RADS {value}.")
    if report.incomplete_needs:
        lines.append("Needed: " + " and ".join(report.incomplete_needs) + ".")
    if report.management:
        lines.append(f"Recommendation: {report.management}")
    return "\n".join(lines)


def finding_sentence(f: Finding) -> str:
    lex = lexicon()
    side = {"R": "right", "L": "left"}.get(f.laterality, "?")
    parts = (
        [f"{lex['finding_types'][f.kind]['label']} in the {side} breast"]
        if f.kind in lex["finding_types"]
        else [f.kind]
    )
    if f.clock:
        parts.append(f"at {f.clock} o'clock" if f.clock.isdigit() else f"in the {f.clock} region")
    if f.depth:
        parts.append(f"{f.depth} depth")
    if f.distance_from_nipple_mm is not None:
        parts.append(f"{f.distance_from_nipple_mm:g} mm from the nipple")
    if f.descriptors:
        parts.append(", ".join(f"{k} {v}" for k, v in sorted(f.descriptors.items())))
    if f.associated_features:
        parts.append("with " + ", ".join(f.associated_features))
    if f.assessment:
        parts.append(f"BI-RADS {f.assessment}")
    return "; ".join(parts) + "."


def build_sr(
    report: BiradsReport,
    evidence: list[Dataset],
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
) -> Dataset:
    """The Comprehensive SR of a report, referencing the exam's images as evidence."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report_content(report, by_uid),
        series_instance_uid=series_instance_uid,
        series_number=90,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer="Tessera",
        is_complete=True,
        is_final=True,
        is_verified=bool(report.reader),
        verifying_observer_name=report.reader or None,
        verifying_organization="Tessera Breast Center" if report.reader else None,
        institution_name="Tessera Breast Center",
        performed_procedure_codes=[_code(SCREENING_MAMMOGRAPHY)],
    )
    sr.SeriesDescription = "BI-RADS report"
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the lexicon and readers' text are not Latin-1
    now = dt.datetime.now()
    sr.ContentDate, sr.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    return sr


# ---- reading an SR back ----------------------------------------------------------------------------


def _name(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _value(item: Dataset) -> tuple[str, str]:
    code = item.ConceptCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []) or [])


def _category(items: list[Dataset]) -> str:
    """The BI-RADS category of an assessment item (and its 4A–4C subcategory, if any)."""
    assessments = lexicon()["assessments"]
    category = ""
    for item in items:
        if item.ValueType != "CODE":
            continue
        name, value = _name(item), _value(item)
        if name == ("111005", "DCM"):
            category = next((k for k, v in assessments.items() if (v["code"][0], v["code"][1]) == value), "")
        elif name == (f"{LOCAL}-SUB", LOCAL):
            category = next(
                (k for k, v in assessments.items() if "subcategory" in v and v["subcategory"][0] == value[0]),
                category,
            )
    return category


def is_birads_sr(ds: Dataset) -> bool:
    names = ds.get("ConceptNameCodeSequence") or []
    return bool(names) and str(names[0].CodeValue) == BREAST_IMAGING_REPORT[0]


def report_from_sr(ds: Dataset) -> BiradsReport:
    """Read a Tessera BI-RADS SR back into the form's document."""
    if not is_birads_sr(ds):
        raise ReportInvalid(["this SR is not a Breast Imaging Report (TID 4200)"])
    lex = lexicon()
    report = BiradsReport(study_instance_uid=str(ds.StudyInstanceUID))
    own_recommendation = False
    recommendation = ""
    for item in _children(ds):
        name = _name(item)
        if name == ("121008", "DCM"):
            report.reader = str(item.PersonName)
        if name != ("111414", "DCM"):
            continue
        for data in _children(item):
            dname = _name(data)
            if dname == ("111006", "DCM"):
                value = _value(data)
                report.composition = next(
                    k for k, v in lex["composition"].items() if v["code"][0] == value[0]
                )
            elif dname == ("111424", "DCM"):
                report.comparison = str(data.TextValue)
            elif dname == ("121070", "DCM"):
                report.findings = [_finding_from_sr(f) for f in _children(data)]
            elif dname == ("111413", "DCM"):
                children = _children(data)
                report.assessment_overall = _category(children)
                for child in children:
                    cname = _name(child)
                    if child.ValueType == "CONTAINER" and cname == ("111005", "DCM"):
                        grand = _children(child)
                        side = next(_value(g)[0] for g in grand if _name(g) == ("272741003", "SCT"))
                        category = _category(grand)
                        if side == "24028007":
                            report.assessment_right = category
                        else:
                            report.assessment_left = category
                    elif cname == (f"{LOCAL}-NEED", LOCAL):
                        report.incomplete_needs.append(str(child.TextValue))
                    elif cname == ("121075", "DCM"):
                        recommendation = str(child.TextValue)
                    elif cname == (f"{LOCAL}-OWN", LOCAL):
                        own_recommendation = True
    report.recommendation = recommendation if own_recommendation else ""
    for section in (i for i in _children(ds) if _name(i) == ("111412", "DCM")):
        for item in _children(section):
            if _name(item) == ("121106", "DCM"):
                report.narrative = str(item.TextValue)
    return report


def _finding_from_sr(container: Dataset) -> Finding:
    lex = lexicon()
    finding = Finding(laterality="", kind="")
    items = _children(container)
    for item in list(items):
        if _name(item) == ("121071", "DCM") and item.ValueType == "CODE":
            items += _children(item)  # the type's properties hang below it
    for item in items:
        name = _name(item)
        if name == ("121071", "DCM") and item.ValueType == "CODE":
            value = _value(item)
            finding.kind = next(k for k, v in lex["finding_types"].items() if v["code"][0] == value[0])
        elif name == ("272741003", "SCT"):
            finding.laterality = {"24028007": "R", "7771000": "L"}.get(_value(item)[0], "")
        elif name == ("111014", "DCM"):
            finding.clock = str(item.TextValue)
        elif name == ("111020", "DCM"):
            finding.depth = str(item.TextValue)
        elif name == ("121242", "DCM"):
            finding.distance_from_nipple_mm = float(item.MeasuredValueSequence[0].NumericValue)
        elif name == ("246090004", "SCT"):
            finding.associated_features.append(str(item.TextValue))
        elif name == ("111005", "DCM"):
            pass
        elif item.ValueType == "SCOORD":
            image = _children(item)[0]
            finding.marks.append(_mark(image, [[float(v) for v in p] for p in _pairs(item.GraphicData)]))
        elif item.ValueType == "IMAGE":
            finding.marks.append(_mark(item, []))
        elif item.ValueType == "CODE":
            for descriptor, spec in lex["descriptors"].items():
                if (spec["concept"][0], spec["concept"][1]) == name:
                    value = _value(item)
                    finding.descriptors[descriptor] = next(
                        k for k, v in spec["values"].items() if (v[0], v[1]) == value
                    )
    finding.assessment = _category(_children(container))
    return finding


def _pairs(values: Any) -> list[tuple[float, float]]:
    flat = [float(v) for v in values]
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _mark(image: Dataset, points: list[list[float]]) -> ImageMark:
    ref = image.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    frame = (
        int(
            frames[0] if isinstance(frames, list | tuple) or type(frames).__name__ == "MultiValue" else frames
        )
        - 1
        if frames
        else 0
    )
    return ImageMark(str(ref.ReferencedSOPInstanceUID), str(ref.ReferencedSOPClassUID), frame, points)


def new_report_uids(study_instance_uid: str, version: int) -> tuple[UID, UID]:
    """Series (one per study) and instance UIDs of a report version, derived from the study."""
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=["tessera-birads-series", study_instance_uid])
    instance = generate_uid(
        entropy_srcs=["tessera-birads", study_instance_uid, str(version), dt.datetime.now().isoformat()]
    )
    return series, instance
