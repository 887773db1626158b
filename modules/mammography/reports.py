"""Reports in the archive: the latest BI-RADS SR of a study, and saving a new version. Blocking."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from modules.mammography.exams import exam_image
from modules.mammography.letters import ExamContext
from modules.mammography.report import (
    COMPREHENSIVE_SR,
    BiradsReport,
    ReportInvalid,
    build_sr,
    is_birads_sr,
    new_report_uids,
    report_from_sr,
    validate,
)
from modules.mammography.views import IMAGE_SOP_CLASSES
from server.context import ServerContext


class StudyNotFound(LookupError):
    pass


@dataclass
class StudyReports:
    """A study's images (as report evidence) and its saved BI-RADS reports."""

    images: list[tuple[Dataset, dict[str, Any]]]  # header, summary for the form
    reports: list[Dataset]  # BI-RADS SR headers, oldest first

    @property
    def latest(self) -> Dataset | None:
        return self.reports[-1] if self.reports else None

    def exam_context(self) -> ExamContext:
        ds = self.images[0][0]
        return ExamContext(
            patient_name=str(ds.get("PatientName", "")),
            patient_id=str(ds.get("PatientID", "")),
            birth_date=str(ds.get("PatientBirthDate", "")),
            study_date=str(ds.get("StudyDate", "")),
            accession_number=str(ds.get("AccessionNumber", "")),
            study_description=str(ds.get("StudyDescription", "")),
        )


def study_reports(ctx: ServerContext, study_uid: str) -> StudyReports:
    instances = ctx.archive.stored_instances(study_uid)
    images: list[tuple[Dataset, dict[str, Any]]] = []
    reports: list[Dataset] = []
    for instance in instances:
        if instance.sop_class_uid in IMAGE_SOP_CLASSES:
            header = ctx.headers.get(instance)
            image = exam_image(
                header, study_uid, instance.series_instance_uid, max(1, instance.number_of_frames)
            )
            images.append((header, {**image.to_json(), "SeriesInstanceUID": instance.series_instance_uid}))
        elif instance.sop_class_uid == COMPREHENSIVE_SR:
            header = dcmread(instance.path)  # an SR is all header; read it whole, not from the cache
            if is_birads_sr(header):
                reports.append(header)
    if not images:
        raise StudyNotFound(f"study {study_uid} holds no mammography images")
    reports.sort(
        key=lambda ds: (
            str(ds.get("ContentDate", "")),
            str(ds.get("ContentTime", "")),
            int(ds.get("InstanceNumber", 0)),
        )
    )
    return StudyReports(images, reports)


def latest_report(ctx: ServerContext, study_uid: str) -> tuple[BiradsReport | None, StudyReports]:
    reports = study_reports(ctx, study_uid)
    latest = reports.latest
    return (report_from_sr(latest) if latest is not None else None), reports


def save_report(ctx: ServerContext, study_uid: str, document: dict[str, Any]) -> dict[str, Any]:
    """Validate, encode as SR and store through the archive's ingest; raises ReportInvalid."""
    report = BiradsReport.from_json({**document, "study_instance_uid": study_uid})
    reports = study_reports(ctx, study_uid)
    lateralities = {summary["SOPInstanceUID"]: summary["laterality"] for _, summary in reports.images}
    problems = validate(report, lateralities)
    if problems:
        raise ReportInvalid(problems)
    version = len(reports.reports) + 1
    series_uid, sop_uid = new_report_uids(study_uid, version)
    sr = build_sr(report, [header for header, _ in reports.images], series_uid, sop_uid, version)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    outcome = ctx.archive.ingest_bytes(buffer.getvalue())
    if not outcome.ok:
        raise ReportInvalid([f"the archive refused the report: {outcome.reason}"])
    return {"SOPInstanceUID": str(sop_uid), "SeriesInstanceUID": str(series_uid), "version": version}
