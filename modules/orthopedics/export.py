"""A plan leaves Tessera as standard objects: a DICOM SR, a Secondary Capture and a PDF.

* **Comprehensive SR** — a "Orthopedic templating plan" container with one numeric item
  per value (UCUM units: mm, deg, or ``{pixel}`` when uncalibrated), the calibration it
  rests on as text, the template choices as text, and the source radiograph as evidence.
  Concept names use the private scheme ``99TESSERA`` (no standard SR template covers
  templating plans; the codes are listed in docs/orthopedics.md).
* **Secondary Capture** — the radiograph with the plan burned in (:mod:`.overlay`), in a
  derived series of the same study, so any PACS viewer shows what was planned.
* **PDF** — the annotated image and the table of values, to print for the theatre.

Both DICOM objects go into the archive through ``Archive.ingest_bytes``, the one ingest
path, so QIDO/WADO find them like any other instance.
"""

from __future__ import annotations

import datetime
import io
import uuid
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import JPEGBaseline8Bit
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas

from modules.orthopedics.plans import quantity_rows
from server.imaging.calibration import Calibration

SCHEME = "99TESSERA"
PLAN_TITLE = Code("ORTHO-PLAN", SCHEME, "Orthopedic templating plan")
UNITS = {
    "mm": Code("mm", "UCUM", "millimeter"),
    "deg": Code("deg", "UCUM", "degree"),
    "px": Code("{pixel}", "UCUM", "pixel"),
}
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "tessera:modules/orthopedics/plan-series")


def plan_series_uid(study_instance_uid: str, kind: str) -> str:
    """One derived series per study and object kind, so repeated exports stack in the same series."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{study_instance_uid}/{kind}').int}"


def _new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _ascii(text: str) -> str:
    """Text for DICOM attributes whose character set is not ours to choose (the default repertoire)."""
    return text.replace("÷", "/").replace("×", "x").replace("–", "-").encode("ascii", "replace").decode()


def _code(name: str) -> Code:
    value = name.upper().replace(" ", "-")[:16]
    return Code(value, SCHEME, name.replace("_", " ")[:64])


def build_sr(
    source: Dataset, evaluated: dict[str, Any], calibration: Calibration, instance_number: int
) -> Dataset:
    """The plan's values as a Comprehensive SR referencing the radiograph as evidence."""
    items: list[Any] = [
        hd.sr.TextContentItem(
            name=Code("ORTHO-CALIB", SCHEME, "Calibration"),
            value=_ascii(f"{calibration.source.value}: {calibration.description}")
            + (
                f" ({calibration.column_spacing_mm:.5f} x {calibration.row_spacing_mm:.5f} mm/pixel, "
                f"{calibration.plane.value} plane)"
                if calibration.calibrated
                else " (uncalibrated: values in pixels)"
            ),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    for label, quantity in quantity_rows(evaluated):
        items.append(
            hd.sr.NumContentItem(
                name=_code(quantity.name),
                value=float(round(quantity.value, 4)),
                unit=UNITS[quantity.unit],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        items.append(
            hd.sr.TextContentItem(
                name=Code("ORTHO-LABEL", SCHEME, "Measurement label"),
                value=_ascii(label)[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    for t in evaluated["templates"]:
        side = "left" if t["mirror"] else "right"
        items.append(
            hd.sr.TextContentItem(
                name=Code("ORTHO-TEMPLATE", SCHEME, "Planned implant"),
                value=_ascii(
                    f"{t['name']} ({t['template_id']}) {t['label']}, {side}, rotation {t['rotation_deg']:.1f} deg"
                ),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if evaluated.get("note"):
        items.append(
            hd.sr.TextContentItem(
                name=Code("121106", "DCM", "Comment"),
                value=str(evaluated["note"])[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    container = hd.sr.ContainerContentItem(name=PLAN_TITLE, template_id=None)
    container.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=container,
        series_instance_uid=plan_series_uid(source.StudyInstanceUID, "sr"),
        series_number=901,
        sop_instance_uid=_new_uid(),
        instance_number=instance_number,
        manufacturer="Tessera",
        is_complete=True,
        series_description="Orthopedic plan (SR)",
    )
    sr.SpecificCharacterSet = "ISO_IR 192"  # the note is free text in any script
    return sr


def build_secondary_capture(
    source: Dataset, burned: Image.Image, instance_number: int, calibration: Calibration
) -> Dataset:
    """The burned-in radiograph as a Secondary Capture in the study (JPEG baseline, RGB)."""
    pixels = np.asarray(burned.convert("RGB"), dtype=np.uint8)
    orientation = source.get("PatientOrientation")
    known = bool(orientation) and len(orientation) == 2
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.YBR_FULL_422,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        # highdicom insists on an orientation for the patient coordinate system; when the
        # radiograph does not say, the placeholder is replaced by an empty (Type 2) value below.
        patient_orientation=(str(orientation[0]), str(orientation[1])) if known else ("L", "F"),
        series_instance_uid=plan_series_uid(source.StudyInstanceUID, "sc"),
        series_number=902,
        sop_instance_uid=_new_uid(),
        instance_number=instance_number,
        manufacturer="Tessera",
        transfer_syntax_uid=JPEGBaseline8Bit,
    )
    if not known:
        sc.PatientOrientation = ""
    sc.SpecificCharacterSet = "ISO_IR 192"
    sc.SeriesDescription = "Orthopedic plan (burned-in overlay)"
    sc.BurnedInAnnotation = "YES"
    sc.Modality = "OT"
    sc.ConversionType = "WSD"
    sc.ImageComments = _ascii(f"Calibration: {calibration.description}")[:10240]
    if calibration.calibrated:
        # The burned image has the radiograph's geometry, so its calibration carries over.
        sc.PixelSpacing = [
            f"{calibration.row_spacing_mm:.6f}"[:16],
            f"{calibration.column_spacing_mm:.6f}"[:16],
        ]
        sc.PixelSpacingCalibrationType = "FIDUCIAL" if calibration.marker else "GEOMETRY"
        sc.PixelSpacingCalibrationDescription = _ascii(calibration.description)[:64]
    return sc


def to_bytes(ds: Dataset) -> bytes:
    """A Part-10 file in memory, ready for ``Archive.ingest_bytes``."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def build_pdf(
    burned: Image.Image, evaluated: dict[str, Any], calibration: Calibration, header: Dataset
) -> bytes:
    """A one-page A4 report: patient and study, the annotated image, every value, the calibration."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, pageCompression=1)
    page_w, page_h = A4
    margin = 15 * mm
    canvas.setTitle("Orthopedic templating plan")
    canvas.setFont("Helvetica-Bold", 14)
    canvas.drawString(margin, page_h - margin, "Orthopedic templating plan")
    canvas.setFont("Helvetica", 9)
    who = f"{header.get('PatientName', '')}  ·  ID {header.get('PatientID', '')}  ·  born {header.get('PatientBirthDate', '')}"
    study = (
        f"{header.get('StudyDescription', '')}  ·  {header.get('StudyDate', '')}  ·  "
        f"accession {header.get('AccessionNumber', '')}  ·  {header.get('SeriesDescription', '')}"
    )
    canvas.drawString(margin, page_h - margin - 14, who)
    canvas.drawString(margin, page_h - margin - 26, study)
    canvas.drawString(
        margin,
        page_h - margin - 38,
        f"Plan revision {evaluated.get('revision', 0)} saved {evaluated.get('saved_at', '')}; "
        f"printed {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
    )
    image_top = page_h - margin - 48
    rows = quantity_rows(evaluated)
    table_height = (len(rows) + len(evaluated["templates"]) + 4) * 11
    box_w, box_h = page_w - 2 * margin, max(image_top - margin - table_height, 80 * mm)
    scale = min(box_w / burned.width, box_h / burned.height)
    draw_w, draw_h = burned.width * scale, burned.height * scale
    jpeg = io.BytesIO()
    burned.convert("RGB").save(jpeg, "JPEG", quality=88)
    jpeg.seek(0)
    canvas.drawImage(ImageReader(jpeg), margin, image_top - draw_h, draw_w, draw_h)
    y = image_top - draw_h - 14
    canvas.setFont("Helvetica-Bold", 9)
    canvas.drawString(margin, y, f"Calibration: {calibration.description}")
    canvas.setFont("Helvetica", 9)
    if calibration.calibrated:
        y -= 11
        canvas.drawString(
            margin,
            y,
            f"{calibration.column_spacing_mm:.4f} x {calibration.row_spacing_mm:.4f} mm/pixel, "
            f"{calibration.plane.value} plane",
        )
    for label, quantity in rows:
        y -= 11
        if y < margin:
            canvas.showPage()
            canvas.setFont("Helvetica", 9)
            y = page_h - margin
        unit = "°" if quantity.unit == "deg" else f" {quantity.unit}"
        canvas.drawString(margin, y, f"{label}: {quantity.value:.1f}{unit}")
    for t in evaluated["templates"]:
        y -= 11
        if y < margin:
            canvas.showPage()
            canvas.setFont("Helvetica", 9)
            y = page_h - margin
        canvas.drawString(
            margin, y, f"Implant: {t['name']} {t['label']} ({'left' if t['mirror'] else 'right'})"
        )
    if evaluated.get("note"):
        y -= 14
        canvas.drawString(margin, max(y, margin), f"Note: {str(evaluated['note'])[:150]}")
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()
