"""Reading mammography exams from the archive: a study's images with their views, and the
patient's other mammography studies (the prior candidates). Blocking: SQL and header reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from sqlalchemy import select

from modules.mammography.hanging import Exam, ExamImage
from modules.mammography.views import (
    IMAGE_SOP_CLASSES,
    ImageKind,
    image_kind,
    parse_breast_view,
    tomosynthesis_notices,
)
from server.archive.models import Patient, Study
from server.context import ServerContext
from server.security.groups import Scope, visible_studies

if TYPE_CHECKING:
    from server.archive.archive import StoredInstance


def chest_wall_side(header: Dataset, laterality: str) -> tuple[str, str]:
    """Where the chest wall lies in the stored pixels ("left"/"right") and how we know.

    PatientOrientation's first value is the direction of increasing column index: toward
    anterior ("A") puts the nipple on the right, so the chest wall is on the left. Without
    it we assume the IHE Mammography Image profile's display-ready storage (right breast:
    chest wall right; left breast: chest wall left) and say so.
    """
    orientation = header.get("PatientOrientation")
    if orientation and len(orientation) >= 1:
        row_direction = str(orientation[0]).upper()
        if "A" in row_direction:
            return "left", "PatientOrientation"
        if "P" in row_direction:
            return "right", "PatientOrientation"
    if laterality == "R":
        return "right", "assumed"
    if laterality == "L":
        return "left", "assumed"
    return "", ""


def exam_image(header: Dataset, study_uid: str, series_uid: str, frames: int) -> ExamImage:
    breast = parse_breast_view(header)
    kind = image_kind(header)
    notices: list[str] = []
    if kind is ImageKind.TOMOSYNTHESIS:
        notices += tomosynthesis_notices(header)
    side, source = chest_wall_side(header, breast.laterality)
    if source == "assumed":
        notices.append("PatientOrientation missing: assumed stored as displayed (IHE)")
    source_sop = ""
    for item in header.get("SourceImageSequence", []) or []:
        source_sop = str(item.get("ReferencedSOPInstanceUID", ""))
        break

    def number(keyword: str) -> int:
        try:
            return int(header.get(keyword) or 0)
        except (TypeError, ValueError):
            return 0

    return ExamImage(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        breast=breast,
        kind=kind,
        frames=frames,
        chest_wall=side,
        chest_wall_source=source,
        series_number=number("SeriesNumber"),
        instance_number=number("InstanceNumber"),
        source_sop_instance_uid=source_sop,
        notices=tuple(notices),
    )


def load_exam(
    ctx: ServerContext, study_uid: str, instances: dict[str, StoredInstance] | None = None
) -> Exam | None:
    """A study's mammography images with their views; None when the study is unknown.

    ``instances``, when given, collects the images' index records by SOP Instance UID (the
    hanging describes the images it places from them without asking the index again)."""
    with ctx.archive.sessions() as session:
        row = session.execute(
            select(Study, Patient)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Study.study_instance_uid == study_uid)
        ).first()
        if row is None:
            return None
        study, patient = row
        person = (patient.patient_name, patient.patient_id)
        fields = (
            study.study_date,
            study.study_time,
            study.accession_number,
            study.study_description,
            study.modalities_in_study,
        )
    images = []
    for instance in ctx.archive.stored_instances(study_uid):
        if instance.sop_class_uid not in IMAGE_SOP_CLASSES:
            continue
        header = ctx.headers.get(instance)
        if instances is not None:
            instances[instance.sop_instance_uid] = instance
        images.append(
            exam_image(header, study_uid, instance.series_instance_uid, max(1, instance.number_of_frames))
        )
    modalities = frozenset(m for m in fields[4].split("\\") if m) or frozenset({"MG"})
    return Exam(
        study_uid, fields[0], fields[1], fields[2], fields[3], modalities, tuple(images), person[0], person[1]
    )


def patient_mammography_studies(ctx: ServerContext, study_uid: str, scope: Scope | None) -> list[str]:
    """Study Instance UIDs of the same patient's other studies that hold mammography (newest first),
    only those within ``scope`` (the requesting user's study groups; None: not limited)."""
    with ctx.archive.sessions() as session:
        patient_pk = session.execute(
            select(Study.patient_pk).where(Study.study_instance_uid == study_uid)
        ).scalar_one_or_none()
        if patient_pk is None:
            return []
        rows = session.execute(
            select(Study.study_instance_uid)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Study.patient_pk == patient_pk)
            .where(Study.study_instance_uid != study_uid)
            .where(Study.modalities_in_study.contains("MG"))
            .where(visible_studies(scope))
            .order_by(Study.study_date.desc(), Study.study_time.desc())
        ).all()
    return [row[0] for row in rows]


def load_prior_candidates(
    ctx: ServerContext,
    current: Exam,
    scope: Scope | None,
    instances: dict[str, StoredInstance] | None = None,
) -> list[Exam]:
    """Every other mammography exam of the patient the user may see, read fully (newest first)."""
    exams = []
    for uid in patient_mammography_studies(ctx, current.study_instance_uid, scope):
        exam = load_exam(ctx, uid, instances)
        if exam is not None and exam.images:
            exams.append(exam)
    return exams
