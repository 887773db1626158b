"""Tessera's own JSON API for the viewers: studies with the module that opens each series."""

from __future__ import annotations

import tempfile
import zipfile
from typing import IO, Any

from sqlalchemy import select

from server.archive.deidentify import (
    BurnedInAnnotationError,
    ExportReport,
    archived_study_files,
    export_study,
    zip_writer,
)
from server.archive.models import Instance, Patient, Series, Study
from server.jobs.queue import failed_jobs, job_counts, total_counts
from server.modules import SeriesRecord
from server.security.audit import EXPORT
from server.security.policy import Permission
from server.web.base import BaseHandler, ProblemError

GENERIC_VIEWER = "/viewer/"


class StudyHandler(BaseHandler):
    """GET /api/studies/{uid}: the study, its patient, and for each series its module and viewer."""

    async def get(self, study: str) -> None:
        document = await self.run_blocking(self._load, study)
        if document is None:
            raise ProblemError(404, "no study with that UID in the archive")
        self.write_json(document)

    def _load(self, study_uid: str) -> dict[str, Any] | None:
        with self.ctx.archive.sessions() as session:
            row = session.execute(
                select(Study, Patient)
                .join(Patient, Study.patient_pk == Patient.id)
                .where(Study.study_instance_uid == study_uid)
            ).first()
            if row is None:
                return None
            study, patient = row
            series_rows = session.scalars(
                select(Series)
                .where(Series.study_pk == study.id)
                .order_by(Series.series_number.asc().nulls_last(), Series.id)
            ).all()
            classes: dict[int, set[str]] = {}
            for series_pk, sop_class in session.execute(
                select(Instance.series_pk, Instance.sop_class_uid)
                .where(Instance.series_pk.in_([s.id for s in series_rows]))
                .distinct()
            ):
                classes.setdefault(series_pk, set()).add(sop_class)
        registry = self.ctx.registry
        series_out = []
        for series in series_rows:
            record = SeriesRecord(
                study_instance_uid=study_uid,
                series_instance_uid=series.series_instance_uid,
                modality=series.modality,
                sop_class_uids=frozenset(classes.get(series.id, set())),
                body_part_examined=series.body_part_examined,
                series_description=series.series_description,
                number_of_instances=series.number_of_instances,
            )
            module = registry.claim(record) if registry is not None else None
            viewer = (
                module.viewer_url(study_uid, series.series_instance_uid)
                if module is not None
                else f"{GENERIC_VIEWER}?study={study_uid}&series={series.series_instance_uid}"
            )
            series_out.append(
                {
                    "SeriesInstanceUID": series.series_instance_uid,
                    "Modality": series.modality,
                    "SeriesNumber": series.series_number,
                    "SeriesDescription": series.series_description,
                    "BodyPartExamined": series.body_part_examined,
                    "Laterality": series.laterality,
                    "NumberOfSeriesRelatedInstances": series.number_of_instances,
                    "SOPClassUIDs": sorted(record.sop_class_uids),
                    "module": {"id": module.id, "title": module.title} if module is not None else None,
                    "viewer_url": viewer,
                }
            )
        return {
            "StudyInstanceUID": study.study_instance_uid,
            "StudyDate": study.study_date,
            "StudyTime": study.study_time,
            "AccessionNumber": study.accession_number,
            "StudyDescription": study.study_description,
            "ReferringPhysicianName": study.referring_physician_name,
            "ModalitiesInStudy": [m for m in study.modalities_in_study.split("\\") if m],
            "NumberOfStudyRelatedSeries": study.number_of_series,
            "NumberOfStudyRelatedInstances": study.number_of_instances,
            "patient": {
                "PatientName": patient.patient_name,
                "PatientID": patient.patient_id,
                "PatientBirthDate": patient.patient_birth_date,
                "PatientSex": patient.patient_sex,
            },
            "series": series_out,
        }


class DeidentifiedExportHandler(BaseHandler):
    """POST /api/studies/{uid}/deidentified-export: the study de-identified (PS3.15 Basic Profile), as a zip.

    POST, not GET: each call makes a new export with a new key (unlinkable UIDs), and it needs
    the WRITE permission (clinicians, administrators). Audited as an Export (110106).
    """

    audit_events = {"POST": (EXPORT, "R", "")}
    CHUNK = 1024 * 1024

    async def post(self, study: str) -> None:
        choice = self.get_query_argument("burned_in", "refuse")
        if choice not in ("refuse", "leave-out"):
            raise ProblemError(400, "burned_in must be refuse (the default) or leave-out")
        # Spooled to an unnamed file in the data folder (room for a large study), streamed, then gone.
        with tempfile.TemporaryFile(dir=self.ctx.settings.data_dir) as spool:
            report = await self.run_blocking(self._export, study, spool, choice == "leave-out")
            self.set_header("Content-Type", "application/zip")
            self.set_header("Content-Disposition", 'attachment; filename="deidentified-study.zip"')
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Tessera-Instances", str(report.instances))
            self.set_header("X-Tessera-Left-Out", str(len(report.left_out)))
            await self.run_blocking(spool.seek, 0)
            while chunk := await self.run_blocking(spool.read, self.CHUNK):
                self.write(chunk)
                await self.flush()
            await self.finish()

    def _export(self, study: str, spool: IO[bytes], leave_out: bool) -> ExportReport:
        files = archived_study_files(self.ctx.archive, study)
        if not files:
            raise ProblemError(404, "no study with that UID in the archive")
        try:
            with zipfile.ZipFile(spool, "w") as bundle:
                return export_study(files, zip_writer(bundle), leave_out_burned_in=leave_out)
        except BurnedInAnnotationError as exc:
            raise ProblemError(
                409,
                str(exc),
                title="Burned-in annotation",
                burned_in_instances=exc.sop_instance_uids,
            ) from exc


class ModulesHandler(BaseHandler):
    """GET /api/modules: the specialty modules this server loaded."""

    def get(self) -> None:
        registry = self.ctx.registry
        modules = registry.modules if registry is not None else []
        self.write_json(
            [
                {
                    "id": m.id,
                    "title": m.title,
                    "priority": m.priority,
                    "static": f"/{m.id}/static/" if m.static_dir else None,
                }
                for m in modules
            ]
        )


class JobsHandler(BaseHandler):
    """GET /api/jobs: the derived-job queue, for administrators: jobs per kind and state, recent failures."""

    permissions = {"*": Permission.ADMIN}

    async def get(self) -> None:
        sessions = self.ctx.archive.sessions
        counts, failed = await self.run_blocking(lambda: (job_counts(sessions), failed_jobs(sessions, 20)))
        self.set_header("Cache-Control", "no-store")
        self.write_json(
            {"total": total_counts(counts), "kinds": counts, "failed": [job.as_json() for job in failed]}
        )


class HealthHandler(BaseHandler):
    """GET /api/health: for load balancers; checks that the index answers."""

    async def get(self) -> None:
        def ping() -> None:
            with self.ctx.archive.sessions() as session:
                session.execute(select(1))

        try:
            await self.run_blocking(ping)
        except Exception as exc:
            raise ProblemError(503, "the index database does not answer") from exc
        self.write_json({"status": "ok"})
