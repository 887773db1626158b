"""The archive facade: one ingest path for every door, and lookups for every reader."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import Dataset
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, undefer

from server.archive.blobs import CHUNK, BlobStore, dataset_sha256, hash_file
from server.archive.database import make_engine, migrate, session_factory
from server.archive.dicomfile import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    GeometryLimits,
    ParsedInstance,
    RejectedInstance,
    parse_instance,
)
from server.archive.events import InstanceStored
from server.archive.models import Instance, Patient, Series, Study
from server.archive.pixeldata import FrameIndex
from server.config import Settings

log = logging.getLogger(__name__)


class _FallBack(Exception):
    """A batch met a known SOP Instance UID: index its instances one by one instead."""


class StoreStatus(Enum):
    STORED = "stored"
    ALREADY_PRESENT = "already present"  # byte-identical duplicate: idempotent success
    REPLACED = "replaced"  # different content, policy "replace"
    KEPT_EXISTING = "kept existing"  # different content, policy "keep"
    REJECTED = "rejected"


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    failure_status: int = 0  # DICOM failure code when rejected
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not StoreStatus.REJECTED


@dataclass(frozen=True)
class StoredInstance:
    """What a reader needs to serve an instance: where its bytes are and how they are encoded."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    sha256: str
    rows: int | None
    columns: int | None
    number_of_frames: int
    samples_per_pixel: int | None
    bits_allocated: int | None
    photometric_interpretation: str
    frame_index: FrameIndex | None


def _text(ds: Dataset, keyword: str, limit: int = 324) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip()[:limit]


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _view_code(ds: Dataset) -> str:
    sequence = ds.get("ViewCodeSequence")
    if sequence:
        return str(sequence[0].get("CodeValue", "") or "")[:32]
    return ""


class Archive:
    """Blobs + index. Thread-safe: every method may run in an executor thread."""

    def __init__(self, settings: Settings, *, run_migrations: bool = True) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(settings.blob_dir, settings.tmp_dir)
        self.engine = make_engine(settings.effective_database_url)
        if run_migrations:
            migrate(self.engine)
        self.sessions = session_factory(self.engine)
        self.limits = GeometryLimits(settings.max_pixel_bytes, settings.max_frames)
        self._listeners: list[Callable[[InstanceStored], None]] = []
        # Series UID -> (series pk, study pk) of committed rows; rows are never deleted, so this stays true.
        self._known_series: dict[str, tuple[int, int]] = {}
        self._pending_series: dict[Session, list[tuple[str, int, int]]] = {}
        self._notify_executor: Executor | None = None
        self._io_pool = ThreadPoolExecutor(4, thread_name_prefix="tessera-fsync")  # fsyncs overlap

    def close(self) -> None:
        self._io_pool.shutdown(wait=False)
        self.engine.dispose()

    # -- notification --------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[InstanceStored], None]) -> None:
        self._listeners.append(listener)

    def set_notify_executor(self, executor: Executor) -> None:
        """Listeners run here, so ingest returns as soon as the instance is durable."""
        self._notify_executor = executor

    def _notify(self, event: InstanceStored) -> None:
        for listener in self._listeners:
            if self._notify_executor is not None:
                self._notify_executor.submit(self._call_listener, listener, event)
            else:
                self._call_listener(listener, event)

    @staticmethod
    def _call_listener(listener: Callable[[InstanceStored], None], event: InstanceStored) -> None:
        try:
            listener(event)
        except Exception:
            log.exception("listener %r failed for %s", listener, event.sop_instance_uid)

    # -- ingest --------------------------------------------------------------------------------

    def ingest_stream(self, source: IO[bytes]) -> StoreOutcome:
        """Copy a readable stream into the store, then ingest it."""
        temp_fh, temp_path = self.blobs.new_temp()
        try:
            with temp_fh:
                shutil.copyfileobj(source, temp_fh, CHUNK)
        except OSError as exc:
            temp_path.unlink(missing_ok=True)
            return StoreOutcome(StoreStatus.REJECTED, failure_status=OUT_OF_RESOURCES, reason=str(exc))
        return self.ingest_temp(temp_path)

    def ingest_path(self, path: Path) -> StoreOutcome:
        with open(path, "rb") as fh:
            return self.ingest_stream(fh)

    def ingest_bytes(self, data: bytes) -> StoreOutcome:
        temp_fh, temp_path = self.blobs.new_temp()
        with temp_fh:
            temp_fh.write(data)
        return self.ingest_temp(temp_path)

    def ingest_temp(
        self, temp_path: Path, sha256: str | None = None, expected_study: str | None = None
    ) -> StoreOutcome:
        """The one ingest path: parse, validate, store durably, index, then notify.

        ``temp_path`` must be a file from ``blobs.new_temp()``; it is consumed either way.
        """
        try:
            prepared = self._prepare(temp_path, sha256, expected_study)
            if isinstance(prepared, StoreOutcome):
                return prepared
            outcome, event = self._store(prepared, temp_path, sha256 or hash_file(temp_path))
        except OSError as exc:  # disk full, permissions: the instance was not stored
            temp_path.unlink(missing_ok=True)
            log.warning("ingest failed: %s", exc)
            return StoreOutcome(
                StoreStatus.REJECTED,
                failure_status=OUT_OF_RESOURCES,
                reason=f"storage error: {exc}",
            )
        except OperationalError as exc:
            temp_path.unlink(missing_ok=True)
            log.warning("ingest failed on the database: %s", exc)
            return StoreOutcome(
                StoreStatus.REJECTED, failure_status=OUT_OF_RESOURCES, reason="database unavailable"
            )
        finally:
            temp_path.unlink(missing_ok=True)
        if event is not None:
            self._notify(event)
        return outcome

    def _store(
        self, parsed: ParsedInstance, temp_path: Path, digest: str
    ) -> tuple[StoreOutcome, InstanceStored | None]:
        ids = _ids(parsed.dataset)
        header = parsed.header_json()
        size = temp_path.stat().st_size
        placed = False  # the blob is in the store; it must not outlive a failed attempt
        for _attempt in range(5):
            with self.sessions() as session:
                known = session.execute(
                    select(Instance.id, Instance.blob_sha256).where(
                        Instance.sop_instance_uid == ids["sop_instance_uid"]
                    )
                ).first()
                duplicate = self._duplicate_outcome(known[1] if known else None, digest, temp_path, ids)
                if duplicate is not None:
                    if placed:
                        self._drop_blob_if_unreferenced(digest)
                    return duplicate, None
                self.blobs.commit_temp(temp_path, digest)
                placed = True
                existing = session.get(Instance, known[0]) if known else None  # replace policy
                try:
                    replaced_hash = self._index(session, parsed, digest, size, header, existing)
                    session.commit()
                    self._remember_series(session)
                except IntegrityError:
                    self._pending_series.pop(session, None)
                    session.rollback()
                    continue  # a concurrent ingest created the same patient/study/series: retry
                except Exception:
                    self._pending_series.pop(session, None)
                    session.rollback()
                    self._drop_blob_if_unreferenced(digest)
                    raise
            if replaced_hash:
                self._drop_blob_if_unreferenced(replaced_hash)
            status = StoreStatus.REPLACED if existing is not None else StoreStatus.STORED
            return StoreOutcome(status, **ids), _event(parsed)
        self._drop_blob_if_unreferenced(digest)
        return StoreOutcome(
            StoreStatus.REJECTED, failure_status=PROCESSING_FAILURE, reason="could not index", **ids
        ), None

    def _remember_series(self, session: Session) -> None:
        """After a commit: the series it created are known from now on."""
        if len(self._known_series) > 100_000:
            self._known_series.clear()
        for series_uid, series_pk, study_pk in self._pending_series.pop(session, []):
            self._known_series[series_uid] = (series_pk, study_pk)

    def ingest_batch(
        self, items: list[tuple[Path, str | None]], expected_study: str | None = None
    ) -> list[StoreOutcome]:
        """Ingest several temp files (one STOW-RS request) with one index transaction.

        Same rules and outcomes as ``ingest_temp`` one by one; the files are made durable
        in parallel and indexed in a single commit. If that commit conflicts with a
        concurrent writer, each instance falls back to the one-by-one path.
        """
        outcomes: list[StoreOutcome | None] = [None] * len(items)
        ready: list[tuple[int, ParsedInstance, Path, str]] = []
        for position, (temp_path, sha256) in enumerate(items):
            prepared = self._prepare(temp_path, sha256, expected_study)
            if isinstance(prepared, StoreOutcome):
                outcomes[position] = prepared
            else:
                ready.append((position, prepared, temp_path, sha256 or hash_file(temp_path)))
        try:
            placed = list(self._io_pool.map(lambda r: self._place(r[2], r[3]), ready))
        except OSError as exc:
            for _, _, temp_path, _ in ready:
                temp_path.unlink(missing_ok=True)
            log.warning("batch ingest could not write: %s", exc)
            failure = StoreOutcome(
                StoreStatus.REJECTED, failure_status=OUT_OF_RESOURCES, reason=f"storage error: {exc}"
            )
            return [o or failure for o in outcomes]
        events: list[InstanceStored] = []
        # Everything CPU-bound happens before the transaction: on SQLite the write lock is held
        # from the first INSERT to the commit, and other processes wait for it.
        headers = [parsed.header_json() for _, parsed, _, _ in ready]
        sizes = [path.stat().st_size for path in placed]
        try:
            with self.sessions() as session:
                uids = [str(p.dataset.SOPInstanceUID) for _, p, _, _ in ready]
                known = any(
                    session.scalars(
                        select(Instance.id).where(Instance.sop_instance_uid.in_(uids[i : i + 500])).limit(1)
                    ).first()
                    for i in range(0, len(uids), 500)
                )
                if known:
                    raise _FallBack  # duplicates and replacements take the careful path
                batch: list[tuple[int, StoreOutcome]] = []
                for (position, parsed, _, digest), header, size in zip(ready, headers, sizes, strict=True):
                    ids = _ids(parsed.dataset)
                    self._index(session, parsed, digest, size, header, None)
                    batch.append((position, StoreOutcome(StoreStatus.STORED, **ids)))
                    events.append(_event(parsed))
                session.commit()
                self._remember_series(session)
            for position, outcome in batch:
                outcomes[position] = outcome
        except (_FallBack, IntegrityError):
            self._pending_series.pop(session, None)
            events = []
            for (position, parsed, _, digest), path in zip(ready, placed, strict=True):
                outcome, event = self._store_placed(parsed, path, digest)
                outcomes[position] = outcome
                if event is not None:
                    events.append(event)
        except OperationalError as exc:
            log.warning("batch ingest failed on the database: %s", exc)
            for (position, _, _, digest), _path in zip(ready, placed, strict=True):
                self._drop_blob_if_unreferenced(digest)
                outcomes[position] = StoreOutcome(
                    StoreStatus.REJECTED, failure_status=OUT_OF_RESOURCES, reason="database unavailable"
                )
        for event in events:
            self._notify(event)
        return [o for o in outcomes if o is not None]

    def _prepare(
        self, temp_path: Path, sha256: str | None, expected_study: str | None
    ) -> ParsedInstance | StoreOutcome:
        """Parse and validate a temp file; a rejection consumes it."""
        try:
            parsed = parse_instance(temp_path, self.limits)
            ds = parsed.dataset
            if expected_study and str(ds.StudyInstanceUID) != expected_study:
                wrong_study = RejectedInstance(
                    f"StudyInstanceUID {ds.StudyInstanceUID} is not the study {expected_study} of the request",
                    DATASET_DOES_NOT_MATCH_SOP_CLASS,
                )
                wrong_study.sop_class_uid = str(ds.SOPClassUID)
                wrong_study.sop_instance_uid = str(ds.SOPInstanceUID)
                raise wrong_study
            return parsed
        except RejectedInstance as exc:
            temp_path.unlink(missing_ok=True)
            return StoreOutcome(
                StoreStatus.REJECTED,
                sop_class_uid=exc.sop_class_uid,
                sop_instance_uid=exc.sop_instance_uid,
                failure_status=exc.status,
                reason=exc.reason,
            )

    def _place(self, temp_path: Path, digest: str) -> Path:
        """Durably move a temp file to its blob path (fsync of file and folder; run in parallel)."""
        return self.blobs.commit_temp(temp_path, digest)

    def _store_placed(
        self, parsed: ParsedInstance, path: Path, digest: str
    ) -> tuple[StoreOutcome, InstanceStored | None]:
        """The one-by-one path for a blob already in place (batch fallback)."""
        fh, temp = self.blobs.new_temp()
        fh.close()
        temp.unlink()
        os.link(path, temp)
        try:
            outcome, event = self._store(parsed, temp, digest)
        finally:
            temp.unlink(missing_ok=True)
        if outcome.status not in (StoreStatus.STORED, StoreStatus.REPLACED):
            self._drop_blob_if_unreferenced(digest)  # placed by the batch, not wanted after all
        return outcome, event

    def _duplicate_outcome(
        self, existing_sha256: str | None, digest: str, temp_path: Path, ids: dict[str, Any]
    ) -> StoreOutcome | None:
        """What a known SOP Instance UID means under the configured policy (None: go on and store)."""
        if existing_sha256 is None:
            return None
        if existing_sha256 == digest or self._same_dataset(existing_sha256, temp_path):
            return StoreOutcome(StoreStatus.ALREADY_PRESENT, **ids)
        policy = self.settings.duplicate_policy
        if policy == "keep":
            return StoreOutcome(
                StoreStatus.KEPT_EXISTING,
                reason="a different instance with this SOP Instance UID is kept",
                **ids,
            )
        if policy == "reject":
            return StoreOutcome(
                StoreStatus.REJECTED,
                failure_status=DUPLICATE_SOP_INSTANCE,
                reason="an instance with this SOP Instance UID and different content is already stored",
                **ids,
            )
        return None

    def _index(
        self,
        session: Session,
        parsed: ParsedInstance,
        digest: str,
        size: int,
        header: str,
        existing: Instance | None,
    ) -> str | None:
        ds = parsed.dataset
        now = dt.datetime.now(dt.UTC)
        series_uid = str(ds.SeriesInstanceUID)
        known = self._known_series.get(series_uid)
        if known is not None and existing is None:
            # The series exists (rows are never deleted): skip patient/study/series lookups.
            series_pk, study_pk = known
            self._insert_instance(
                session,
                parsed,
                series_pk,
                study_pk,
                self._instance_values(parsed, digest, size, header, now),
                False,
                now,
            )
            return None
        patient_id = _text(ds, "PatientID", 64)
        issuer = _text(ds, "IssuerOfPatientID", 64)
        patient = session.scalar(
            select(Patient).where(Patient.patient_id == patient_id, Patient.issuer_of_patient_id == issuer)
        )
        name = _text(ds, "PatientName")
        if patient is None:
            patient = Patient(
                patient_id=patient_id,
                issuer_of_patient_id=issuer,
                patient_name=name,
                patient_name_search=name.upper(),
                patient_birth_date=_text(ds, "PatientBirthDate", 8),
                patient_sex=_text(ds, "PatientSex", 16),
            )
            session.add(patient)
            session.flush()
        study_uid = str(ds.StudyInstanceUID)
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            study = Study(
                study_instance_uid=study_uid,
                patient_pk=patient.id,
                study_date=_text(ds, "StudyDate", 8),
                study_time=_text(ds, "StudyTime", 16),
                accession_number=_text(ds, "AccessionNumber", 16),
                study_id=_text(ds, "StudyID", 16),
                referring_physician_name=_text(ds, "ReferringPhysicianName"),
                study_description=_text(ds, "StudyDescription", 256),
                modalities_in_study="",
                number_of_series=0,
                number_of_instances=0,
                updated_at=now,
            )
            session.add(study)
            session.flush()
        series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
        new_series = series is None
        if series is None:
            series = Series(
                series_instance_uid=series_uid,
                study_pk=study.id,
                modality=_text(ds, "Modality", 16),
                series_number=_int_or_none(ds, "SeriesNumber"),
                series_description=_text(ds, "SeriesDescription", 256),
                body_part_examined=_text(ds, "BodyPartExamined", 64),
                laterality=_text(ds, "Laterality", 16),
                series_date=_text(ds, "SeriesDate", 8),
                series_time=_text(ds, "SeriesTime", 16),
                performed_procedure_step_start_date=_text(ds, "PerformedProcedureStepStartDate", 8),
                number_of_instances=0,
            )
            session.add(series)
            session.flush()
        self._pending_series.setdefault(session, []).append((series_uid, series.id, study.id))
        values = self._instance_values(parsed, digest, size, header, now)
        if existing is not None:
            replaced = existing.blob_sha256
            for key, value in values.items():
                setattr(existing, key, value)
            return replaced
        self._insert_instance(session, parsed, series.id, study.id, values, new_series, now)
        return None

    def _instance_values(
        self, parsed: ParsedInstance, digest: str, size: int, header: str, now: dt.datetime
    ) -> dict[str, Any]:
        ds = parsed.dataset
        return {
            "sop_class_uid": str(ds.SOPClassUID),
            "instance_number": _int_or_none(ds, "InstanceNumber"),
            "transfer_syntax_uid": parsed.transfer_syntax_uid,
            "rows": _int_or_none(ds, "Rows"),
            "columns": _int_or_none(ds, "Columns"),
            "number_of_frames": _int_or_none(ds, "NumberOfFrames") or 1,
            "samples_per_pixel": _int_or_none(ds, "SamplesPerPixel"),
            "bits_allocated": _int_or_none(ds, "BitsAllocated"),
            "photometric_interpretation": _text(ds, "PhotometricInterpretation", 32),
            "image_type": _text(ds, "ImageType", 128),
            "image_laterality": _text(ds, "ImageLaterality", 16),
            "view_position": _text(ds, "ViewPosition", 16),
            "view_code": _view_code(ds),
            "content_date": _text(ds, "ContentDate", 8),
            "content_time": _text(ds, "ContentTime", 16),
            "blob_sha256": digest,
            "blob_size": size,
            "received_at": now,
            "header": header,
            "frame_index": parsed.frame_index.to_bytes() if parsed.frame_index is not None else None,
        }

    def _insert_instance(
        self,
        session: Session,
        parsed: ParsedInstance,
        series_pk: int,
        study_pk: int,
        values: dict[str, Any],
        new_series: bool,
        now: dt.datetime,
    ) -> None:
        session.execute(
            insert(Instance).values(
                sop_instance_uid=str(parsed.dataset.SOPInstanceUID), series_pk=series_pk, **values
            )
        )
        session.execute(
            update(Series)
            .where(Series.id == series_pk)
            .values(number_of_instances=Series.number_of_instances + 1)
        )
        study_values: dict[str, object] = {
            "number_of_instances": Study.number_of_instances + 1,
            "updated_at": now,
        }
        if new_series:
            study_values["number_of_series"] = Study.number_of_series + 1
        session.execute(update(Study).where(Study.id == study_pk).values(**study_values))
        if new_series:
            modalities = sorted(
                m
                for m in session.scalars(
                    select(Series.modality).where(Series.study_pk == study_pk).distinct()
                )
                if m
            )
            session.execute(
                update(Study).where(Study.id == study_pk).values(modalities_in_study="\\".join(modalities))
            )

    def _same_dataset(self, existing_sha256: str, temp_path: Path) -> bool:
        """Whether two files hold the same data set, whatever their file meta says."""
        try:
            return dataset_sha256(self.blobs.path_for(existing_sha256)) == dataset_sha256(temp_path)
        except OSError:
            return False

    def _drop_blob_if_unreferenced(self, digest: str) -> None:
        with self.sessions() as session:
            count = session.scalar(
                select(func.count()).select_from(Instance).where(Instance.blob_sha256 == digest)
            )
        if not count:
            self.blobs.delete(digest)

    # -- reading -------------------------------------------------------------------------------

    def stored_instances(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        *,
        with_frame_index: bool = False,
    ) -> list[StoredInstance]:
        """Instances of a study/series (or one instance), in series and instance-number order."""
        query = (
            select(Instance, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid)
            .order_by(
                Series.series_number.asc().nulls_last(),
                Series.id,
                Instance.instance_number.asc().nulls_last(),
                Instance.id,
            )
        )
        if series_uid is not None:
            query = query.where(Series.series_instance_uid == series_uid)
        if sop_uid is not None:
            query = query.where(Instance.sop_instance_uid == sop_uid)
        if with_frame_index:
            query = query.options(undefer(Instance.frame_index))
        with self.sessions() as session:
            rows = session.execute(query).all()
        return [self._stored(instance, se, st, with_frame_index) for instance, se, st in rows]

    def instance_by_uid(self, sop_uid: str, *, with_frame_index: bool = True) -> StoredInstance | None:
        query = (
            select(Instance, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.sop_instance_uid == sop_uid)
        )
        if with_frame_index:
            query = query.options(undefer(Instance.frame_index))
        with self.sessions() as session:
            row = session.execute(query).first()
        return self._stored(row[0], row[1], row[2], with_frame_index) if row else None

    def _stored(
        self, instance: Instance, series_uid: str, study_uid: str, with_index: bool
    ) -> StoredInstance:
        raw_index = instance.frame_index if with_index else None
        return StoredInstance(
            sop_instance_uid=instance.sop_instance_uid,
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            sop_class_uid=instance.sop_class_uid,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            path=self.blobs.path_for(instance.blob_sha256),
            size=instance.blob_size,
            sha256=instance.blob_sha256,
            rows=instance.rows,
            columns=instance.columns,
            number_of_frames=instance.number_of_frames,
            samples_per_pixel=instance.samples_per_pixel,
            bits_allocated=instance.bits_allocated,
            photometric_interpretation=instance.photometric_interpretation,
            frame_index=FrameIndex.from_bytes(raw_index) if raw_index else None,
        )

    def headers(self, sop_uids: Iterable[str]) -> dict[str, str]:
        """DICOM JSON headers (as stored, with relative BulkDataURIs) by SOP Instance UID."""
        uids = list(sop_uids)
        result: dict[str, str] = {}
        with self.sessions() as session:
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                rows = session.execute(
                    select(Instance.sop_instance_uid, Instance.header).where(
                        Instance.sop_instance_uid.in_(chunk)
                    )
                )
                result.update({uid: header for uid, header in rows})
        return result

    # -- upkeep --------------------------------------------------------------------------------

    def reconcile(self, repair: bool = False, *, temp_older_than_seconds: float = 3600) -> ReconcileReport:
        """Compare index and blobs after a crash or manual tampering; optionally repair.

        Temp files younger than ``temp_older_than_seconds`` are left alone: a live server may
        be writing them. At start-up, before serving, pass 0.
        """
        removed_temp = self.blobs.clean_temp(temp_older_than_seconds)
        with self.sessions() as session:
            indexed = dict(session.execute(select(Instance.blob_sha256, Instance.sop_instance_uid)).all())
        on_disk = set(self.blobs.iter_hashes())
        missing = sorted(uid for digest, uid in indexed.items() if digest not in on_disk)
        orphans = sorted(on_disk - indexed.keys())
        if repair:
            # A complete blob without its row was durably written but never indexed: index it now.
            for digest in orphans:
                temp_fh, temp_path = self.blobs.new_temp()
                temp_fh.close()
                temp_path.unlink()
                os.link(self.blobs.path_for(digest), temp_path)
                outcome = self.ingest_temp(temp_path, digest)
                if not outcome.ok:
                    log.warning(
                        "orphan blob %s cannot be indexed (%s); left in place",
                        digest,
                        outcome.reason,
                    )
        return ReconcileReport(
            missing_files=missing,
            orphan_files=orphans,
            removed_temp_files=removed_temp,
            repaired=repair,
        )


@dataclass(frozen=True)
class ReconcileReport:
    missing_files: list[str]  # SOP Instance UIDs whose blob is gone
    orphan_files: list[str]  # blob hashes no index row refers to
    removed_temp_files: int
    repaired: bool

    @property
    def clean(self) -> bool:
        return not self.missing_files and not self.orphan_files


def _ids(ds: Dataset) -> dict[str, Any]:
    return {
        "sop_class_uid": str(ds.SOPClassUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
    }


def _event(parsed: ParsedInstance) -> InstanceStored:
    ds = parsed.dataset
    return InstanceStored(
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.SOPClassUID),
        _text(ds, "Modality", 16),
        parsed.transfer_syntax_uid,
        _int_or_none(ds, "NumberOfFrames") or 1,
    )


def open_archive(settings: Settings) -> Archive:
    os.makedirs(settings.data_dir, exist_ok=True)
    return Archive(settings)
