"""Laterality and view of a mammography image, from whatever the modality filled in.

Order of trust: ImageLaterality, then the frame's FrameLaterality (enhanced objects such
as tomosynthesis), then the series' Laterality; ViewCodeSequence (SNOMED CT codes of
CID 4014, modifiers of CID 4015), then ViewPosition, then words in the Series / Image
description. An image whose view cannot be told is kept with view "UNKNOWN" — the
hanging shows it in the "other images" strip, it is never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from pydicom.dataset import Dataset

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
DIGITAL_MAMMOGRAPHY_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
BREAST_PROJECTION_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.13.1.4"
BREAST_PROJECTION_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.13.1.5"
MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
IMAGE_SOP_CLASSES = frozenset(
    {
        DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
        DIGITAL_MAMMOGRAPHY_FOR_PROCESSING,
        BREAST_TOMOSYNTHESIS,
        BREAST_PROJECTION_FOR_PRESENTATION,
        BREAST_PROJECTION_FOR_PROCESSING,
    }
)
MAMMOGRAPHY_SOP_CLASSES = IMAGE_SOP_CLASSES | {MAMMOGRAPHY_CAD_SR}


class ViewCodeValues(Enum):
    """CID 4014 View for Mammography: SNOMED CT code → the ACR abbreviation the hanging uses."""

    CC = "399162004"
    MLO = "399368009"
    ML = "399260004"
    LM = "399352003"
    LMO = "399099002"
    XCCL = "399192008"
    XCCM = "399101009"
    FB = "399196006"
    SIO = "399188001"
    ISO = "441555000"


class ViewModifierValues(Enum):
    """CID 4015 View Modifier for Mammography (the ones readers act on)."""

    MAGNIFICATION = "399163009"
    SPOT_COMPRESSION = "399055006"
    ROLLED_LATERAL = "399197002"
    ROLLED_MEDIAL = "399226006"
    ROLLED_SUPERIOR = "415670009"
    ROLLED_INFERIOR = "414493004"
    IMPLANT_DISPLACED = "399209000"
    TANGENTIAL = "399110001"
    CLEAVAGE = "399161006"
    AXILLARY_TAIL = "399011000"
    NIPPLE_IN_PROFILE = "442581004"
    ANTERIOR_COMPRESSION = "441752004"
    INFRA_MAMMARY_FOLD = "442593008"
    AXILLARY_TISSUE = "442580003"


VIEW_MEANINGS = {
    "CC": "cranio-caudal",
    "MLO": "medio-lateral oblique",
    "ML": "medio-lateral",
    "LM": "latero-medial",
    "LMO": "latero-medial oblique",
    "XCCL": "cranio-caudal exaggerated laterally",
    "XCCM": "cranio-caudal exaggerated medially",
    "FB": "caudo-cranial",
    "SIO": "superolateral to inferomedial oblique",
    "ISO": "inferomedial to superolateral oblique",
}
_BY_CODE = {v.value: v.name for v in ViewCodeValues}
_MODIFIER_BY_CODE = {v.value: v.name for v in ViewModifierValues}
# Words seen in ViewPosition and descriptions, longest first so "XCCL" wins over "CC".
_VIEW_WORDS = ("XCCL", "XCCM", "LMO", "MLO", "SIO", "ISO", "CC", "ML", "LM", "FB")
_VIEW_POSITION_ALIASES = {"CC": "CC", "MLO": "MLO", "ML": "ML", "LM": "LM", "LMO": "LMO", "XCCL": "XCCL"}
_DESCRIPTION = re.compile(
    r"(?<![A-Z])(R|L|RIGHT|LEFT)?[ _-]?(XCCL|XCCM|LMO|MLO|SIO|ISO|CC|ML|LM|FB)(?![A-Z])"
)


class ImageKind(Enum):
    """What a viewport can ask for: the conventional 2D image, a synthesized 2D, or a tomosynthesis stack."""

    MAMMOGRAM = "mammogram"
    SYNTHESIZED = "synthesized"
    TOMOSYNTHESIS = "tomosynthesis"
    PROJECTION = "projection"


@dataclass(frozen=True)
class BreastView:
    """Laterality ("R", "L", "B" or "" when unknown), view (ACR abbreviation or "UNKNOWN"),
    modifiers, the attribute each came from, and notices for the reader."""

    laterality: str
    view: str
    modifiers: tuple[str, ...] = ()
    laterality_source: str = ""
    view_source: str = ""
    notices: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """RCC, LMLO, RXCCL-M … as readers say it; "?" marks what is unknown."""
        suffix = "".join(f"-{m[0]}" for m in self.modifiers if m in ("MAGNIFICATION", "SPOT_COMPRESSION"))
        view = self.view if self.view != "UNKNOWN" else "?"
        return f"{self.laterality or '?'}{view}{suffix}"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def _frame_laterality(ds: Dataset) -> str:
    for sequence in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(sequence)
        if groups and "FrameAnatomySequence" in groups[0]:
            value = str(groups[0].FrameAnatomySequence[0].get("FrameLaterality", "")).strip().upper()
            if value:
                return value
    return ""


def parse_breast_view(ds: Dataset) -> BreastView:
    """Laterality and view of one image header; never raises on odd or missing attributes."""
    notices: list[str] = []
    laterality, laterality_source = "", ""
    for source, value in (
        ("ImageLaterality", _text(ds, "ImageLaterality")),
        ("FrameLaterality", _frame_laterality(ds)),
        ("Laterality", _text(ds, "Laterality")),
    ):
        if value in ("R", "L", "B"):
            laterality, laterality_source = value, source
            break

    view, view_source = "", ""
    modifiers: list[str] = []
    codes = ds.get("ViewCodeSequence") or []
    if codes:
        item = codes[0]
        code = str(item.get("CodeValue", "")).strip()
        view = _BY_CODE.get(code, "")
        if view:
            view_source = "ViewCodeSequence"
        else:
            meaning = str(item.get("CodeMeaning", "")).strip()
            notices.append(f"unknown view code {code or '(none)'} {meaning!r}".strip())
        for modifier in item.get("ViewModifierCodeSequence", []) or []:
            name = _MODIFIER_BY_CODE.get(str(modifier.get("CodeValue", "")).strip())
            modifiers.append(name or str(modifier.get("CodeMeaning", "modifier")).strip().upper())
    if not view:
        position = _text(ds, "ViewPosition")
        if position in _VIEW_POSITION_ALIASES:
            view, view_source = _VIEW_POSITION_ALIASES[position], "ViewPosition"
    if not view or not laterality:
        for keyword in ("SeriesDescription", "ImageComments", "AcquisitionDeviceProcessingDescription"):
            match = _DESCRIPTION.search(_text(ds, keyword))
            if match is None:
                continue
            if not view:
                view, view_source = match[2], keyword
            if not laterality and match[1]:
                laterality, laterality_source = match[1][0], keyword
            break
    if not view:
        view = "UNKNOWN"
        notices.append("view not recorded; shown among other images")
    if not laterality:
        notices.append("laterality not recorded; shown among other images")
    elif laterality_source not in ("ImageLaterality", "FrameLaterality"):
        notices.append(f"laterality taken from {laterality_source}")
    if view_source not in ("ViewCodeSequence", "") and view != "UNKNOWN":
        notices.append(f"view taken from {view_source}")
    return BreastView(laterality, view, tuple(modifiers), laterality_source, view_source, tuple(notices))


def image_kind(ds: Dataset) -> ImageKind:
    """Tomosynthesis stack, synthesized 2D (an MG image generated from a stack), projection or mammogram."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == BREAST_TOMOSYNTHESIS:
        return ImageKind.TOMOSYNTHESIS
    if sop_class in (BREAST_PROJECTION_FOR_PRESENTATION, BREAST_PROJECTION_FOR_PROCESSING):
        return ImageKind.PROJECTION
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "GENERATED_2D" in image_type or "SYNTHESIZED" in image_type:
        return ImageKind.SYNTHESIZED
    return ImageKind.MAMMOGRAM


def tomosynthesis_notices(ds: Dataset) -> list[str]:
    """What is missing from a tomosynthesis object that the viewer would otherwise use."""
    notices = []
    if not ds.get("PerFrameFunctionalGroupsSequence"):
        notices.append("no per-frame functional groups: slices shown in stored order, positions unknown")
    if not ds.get("SharedFunctionalGroupsSequence"):
        notices.append("no shared functional groups: pixel spacing from the top-level attributes, if any")
    return notices
