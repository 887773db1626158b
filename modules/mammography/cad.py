"""Mammography CAD SR (TID 4000) read as marks the viewer draws over the images.

A CAD report nests each "Single Image Finding" (111059) under the processing summary;
its "Center" (111010) and "Outline" (111041) SCOORDs are SELECTED FROM an image, either
by value (a nested IMAGE item) or by reference (ReferencedContentItemIdentifier into the
tree, usually the Image Library). Both are followed. Anything unreadable is skipped and
reported as a notice, never fatal: CAD marks are an aid, the images are what matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

SINGLE_IMAGE_FINDING = "111059"
CERTAINTY_OF_FINDING = "111012"
CENTER, OUTLINE = "111010", "111041"


@dataclass
class CadMark:
    sop_instance_uid: str
    frame: int  # 0-based
    finding: str  # the finding's code meaning, e.g. "Mammographic breast mass"
    role: str  # "center" or "outline"
    graphic_type: str  # POINT, POLYLINE, CIRCLE, ELLIPSE, MULTIPOINT
    points: list[list[float]]
    certainty: float | None = None  # percent, when the CAD gave one

    def to_json(self) -> dict[str, Any]:
        return {
            "SOPInstanceUID": self.sop_instance_uid,
            "frame": self.frame,
            "finding": self.finding,
            "role": self.role,
            "graphic_type": self.graphic_type,
            "points": self.points,
            "certainty": self.certainty,
        }


@dataclass
class CadReport:
    marks: list[CadMark] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _concept(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence") or []
    return str(names[0].CodeValue) if names else ""


def _item_at(root: Dataset, path: list[int]) -> Dataset | None:
    """The content item at a ReferencedContentItemIdentifier path (1-based, the root is 1)."""
    node = root
    for index in path[1:]:
        children = node.get("ContentSequence") or []
        if not 1 <= index <= len(children):
            return None
        node = children[index - 1]
    return node


def _image_of(root: Dataset, scoord: Dataset) -> tuple[str, int] | None:
    for child in scoord.get("ContentSequence") or []:
        target = child
        if "ReferencedContentItemIdentifier" in child:
            target = _item_at(root, [int(v) for v in child.ReferencedContentItemIdentifier]) or child
        if target.get("ValueType") == "IMAGE" and target.get("ReferencedSOPSequence"):
            ref = target.ReferencedSOPSequence[0]
            frames = ref.get("ReferencedFrameNumber")
            if frames is None:
                frame = 0
            elif isinstance(frames, int):
                frame = frames - 1
            else:
                frame = int(next(iter(frames))) - 1 if len(frames) else 0
            return str(ref.ReferencedSOPInstanceUID), frame
    return None


def read_cad_sr(ds: Dataset) -> CadReport:
    """Every center / outline of every single-image finding, with the image it was found on."""
    report = CadReport()

    def visit(item: Dataset) -> None:
        for child in item.get("ContentSequence") or []:
            if _concept(child) == SINGLE_IMAGE_FINDING and child.get("ValueType") == "CODE":
                finding(child)
            visit(child)

    def finding(item: Dataset) -> None:
        meaning = (
            str(item.ConceptCodeSequence[0].CodeMeaning) if item.get("ConceptCodeSequence") else "finding"
        )
        certainty = None
        for child in item.get("ContentSequence") or []:
            if _concept(child) == CERTAINTY_OF_FINDING and child.get("MeasuredValueSequence"):
                certainty = float(child.MeasuredValueSequence[0].NumericValue)
        for child in item.get("ContentSequence") or []:
            role = {CENTER: "center", OUTLINE: "outline"}.get(_concept(child))
            if role is None or child.get("ValueType") != "SCOORD":
                continue
            image = _image_of(ds, child)
            if image is None:
                report.notices.append(f"a CAD {meaning} {role} has no image reference; not shown")
                continue
            flat = [float(v) for v in child.GraphicData]
            points = [[flat[i], flat[i + 1]] for i in range(0, len(flat) - 1, 2)]
            report.marks.append(
                CadMark(image[0], image[1], meaning, role, str(child.GraphicType), points, certainty)
            )

    visit(ds)
    return report
