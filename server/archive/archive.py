"""The archive facade: one ingest path for every door, and lookups for every reader."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from sqlalchemy import CursorResult, Insert, Table, func, insert, select, update
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
from server.archive.objectstore import open_mirror
from server.archive.pixeldata import FrameIndex
from server.config import Settings
from server.isolation import _PRELOAD, IsolatedPool

if TYPE_CHECKING:
    from server.jobs.queue import JobQueue

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
        self.blobs = BlobStore(settings.blob_dir, settings.tmp_dir, open_mirror(settings.blob_store_url))
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
        self._job_queue: JobQueue | None = None
        self._io_pool = ThreadPoolExecutor(16, thread_name_prefix="tessera-fsync")  # fsyncs overlap

    def close(self) -> None:
        self._io_pool.shutdown(wait=False)
        self.engine.dispose()

    # -- notification --------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[InstanceStored], None]) -> None:
        self._listeners.append(listener)

    def set_notify_executor(self, executor: Executor) -> None:
        """Listeners run here, so ingest returns as soon as the instance is durable."""
        self._notify_executor = executor

    def set_job_queue(self, queue: JobQueue) -> None:
        """Derived jobs are queued in each ingest transaction, so they survive a restart."""
        self._job_queue = queue

    def _enqueue_jobs(self, session: Session, events: list[InstanceStored]) -> None:
        if self._job_queue is not None:
            self._job_queue.enqueue(session, events)

    def _notify(self, event: InstanceStored) -> None:
        if self._job_queue is not None:
            self._job_queue.wake()
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
        # The file goes to disk while it is parsed; commit_temp's own fsync then has little left
        # to wait for (C-STORE sends one instance at a time, so this wait is its latency).
        self._io_pool.submit(_write_back, temp_path)
        try:
            prepared = self._prepare(temp_path, sha256, expected_study)
            if isinstance(prepared, StoreOutcome):
                return prepared
            outcome, event = self._store(prepared, temp_path, _digest(prepared, temp_path, sha256))
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
                existing = (known[0], known[1]) if known else None  # the row the replace policy overwrites
                try:
                    replaced_hash = self._index(session, parsed, digest, size, header, existing)
                    self._enqueue_jobs(session, [_event(parsed)])
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
        placed: list[Path] = []
        isolated = len(items) > 1 and _parser_ready()
        # Each instance is parsed (in a worker process: both cores work, whatever the number of
        # server processes) and then made durable, so one's fsync overlaps the next one's parsing.
        prepared = list(
            self._io_pool.map(
                lambda item: self._prepare_and_place(item[0], item[1], expected_study, isolated), items
            )
        )
        failed: OSError | None = None
        for position, (result, (temp_path, _)) in enumerate(zip(prepared, items, strict=True)):
            if isinstance(result, StoreOutcome):
                outcomes[position] = result
            elif isinstance(result, OSError):
                failed = result
                temp_path.unlink(missing_ok=True)
            else:
                parsed, digest, path = result
                ready.append((position, parsed, temp_path, digest))
                placed.append(path)
        if failed is not None:  # disk full, permissions: nothing of the batch is kept
            for _, _, _, digest in ready:
                try:
                    self._drop_blob_if_unreferenced(digest)
                except (OSError, OperationalError):  # an orphan blob: reconcile finds it
                    log.warning("could not remove blob %s of a failed batch", digest)
            log.warning("batch ingest could not write: %s", failed)
            failure = StoreOutcome(
                StoreStatus.REJECTED, failure_status=OUT_OF_RESOURCES, reason=f"storage error: {failed}"
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
                self._index_new(
                    session,
                    [
                        (parsed, digest, size, header)
                        for (_, parsed, _, digest), header, size in zip(ready, headers, sizes, strict=True)
                    ],
                )
                for position, parsed, _, _ in ready:
                    batch.append((position, StoreOutcome(StoreStatus.STORED, **_ids(parsed.dataset))))
                    events.append(_event(parsed))
                self._enqueue_jobs(session, events)
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

    def _prepare_and_place(
        self, temp_path: Path, sha256: str | None, expected_study: str | None, isolated: bool
    ) -> tuple[ParsedInstance, str, Path] | StoreOutcome | OSError:
        """One instance of a batch: parsed, validated and moved durably to its blob path."""
        try:
            prepared = self._prepare(temp_path, sha256, expected_study, isolated)
            if isinstance(prepared, StoreOutcome):
                return prepared
            digest = _digest(prepared, temp_path, sha256)
            return prepared, digest, self._place(temp_path, digest)
        except OSError as exc:
            return exc

    def _prepare(
        self, temp_path: Path, sha256: str | None, expected_study: str | None, isolated: bool = False
    ) -> ParsedInstance | StoreOutcome:
        """Parse and validate a temp file; a rejection consumes it.

        ``isolated``: parse in a worker process (a batch); alone, an instance is parsed here,
        where it costs no round trip (C-STORE waits for each instance's answer).
        """
        try:
            parsed = (
                _parse_isolated(temp_path, self.limits)
                if isolated
                else parse_instance(temp_path, self.limits)
            )
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
        existing: tuple[int, str] | None,
    ) -> str | None:
        """Index one instance; with ``existing`` (id, blob hash) overwrite that row and return its hash."""
        if existing is None:
            self._index_new(session, [(parsed, digest, size, header)])
            return None
        now = dt.datetime.now(dt.UTC)
        self._series_keys(session, parsed, {})  # the new content's patient/study/series exist
        values = _instance_values(parsed, digest, size, header, now)
        session.execute(update(_INSTANCE).where(_INSTANCE.c.id == existing[0]).values(**values))
        return existing[1]

    def _index_new(self, session: Session, items: list[tuple[ParsedInstance, str, int, str]]) -> None:
        """Insert new instances (one executemany) and bump their series' and studies' counters once.

        Core statements, not ORM objects: the index rows are plain values, and SQLite's write
        lock is held from the first INSERT to the commit, so every statement saved counts.
        """
        if not items:
            return
        now = dt.datetime.now(dt.UTC)
        in_batch: dict[str, tuple[int, int, bool]] = {}
        rows: list[dict[str, Any]] = []
        per_series: dict[int, int] = {}
        per_study: dict[int, list[int]] = {}  # study pk -> [new instances, new series]
        for parsed, digest, size, header in items:
            series_pk, study_pk, _ = self._series_keys(session, parsed, in_batch)
            row = _instance_values(parsed, digest, size, header, now)
            row["sop_instance_uid"] = str(parsed.dataset.SOPInstanceUID)
            row["series_pk"] = series_pk
            rows.append(row)
            per_series[series_pk] = per_series.get(series_pk, 0) + 1
            counts = per_study.setdefault(study_pk, [0, 0])
            counts[0] += 1
        for _, study_pk, new_series in in_batch.values():
            if new_series:
                per_study[study_pk][1] += 1
        session.execute(insert(_INSTANCE), rows)
        for series_pk, added in per_series.items():
            session.execute(
                update(_SERIES)
                .where(_SERIES.c.id == series_pk)
                .values(number_of_instances=_SERIES.c.number_of_instances + added)
            )
        for study_pk, (added, series_added) in per_study.items():
            study_values: dict[str, Any] = {
                "number_of_instances": _STUDY.c.number_of_instances + added,
                "updated_at": now,
            }
            if series_added:
                study_values["number_of_series"] = _STUDY.c.number_of_series + series_added
                modalities = sorted(
                    m
                    for m in session.scalars(
                        select(_SERIES.c.modality).where(_SERIES.c.study_pk == study_pk).distinct()
                    )
                    if m
                )
                study_values["modalities_in_study"] = "\\".join(modalities)
            session.execute(update(_STUDY).where(_STUDY.c.id == study_pk).values(**study_values))

    def _series_keys(
        self, session: Session, parsed: ParsedInstance, in_batch: dict[str, tuple[int, int, bool]]
    ) -> tuple[int, int, bool]:
        """(series pk, study pk, created now) of the instance's series, creating patient/study/series."""
        series_uid = str(parsed.dataset.SeriesInstanceUID)
        known = self._known_series.get(series_uid)
        if known is not None:  # committed rows are never deleted: no lookup needed
            return known[0], known[1], False
        if series_uid in in_batch:
            return in_batch[series_uid]
        series_pk = session.scalar(select(_SERIES.c.id).where(_SERIES.c.series_instance_uid == series_uid))
        if series_pk is not None:
            study_pk = session.scalar(select(_SERIES.c.study_pk).where(_SERIES.c.id == series_pk))
            assert study_pk is not None
            keys = (series_pk, study_pk, False)
        else:
            study_pk = self._study_key(session, parsed)
            series_pk = _inserted_key(
                session,
                insert(_SERIES).values(
                    series_instance_uid=series_uid,
                    study_pk=study_pk,
                    modality=parsed.text("Modality", 16),
                    series_number=parsed.integer("SeriesNumber"),
                    series_description=parsed.text("SeriesDescription", 256),
                    body_part_examined=parsed.text("BodyPartExamined", 64),
                    laterality=parsed.text("Laterality", 16),
                    series_date=parsed.text("SeriesDate", 8),
                    series_time=parsed.text("SeriesTime", 16),
                    performed_procedure_step_start_date=parsed.text("PerformedProcedureStepStartDate", 8),
                    number_of_instances=0,
                ),
            )
            keys = (series_pk, study_pk, True)
        in_batch[series_uid] = keys
        self._pending_series.setdefault(session, []).append((series_uid, keys[0], keys[1]))
        return keys

    def _study_key(self, session: Session, parsed: ParsedInstance) -> int:
        study_uid = str(parsed.dataset.StudyInstanceUID)
        study_pk = session.scalar(select(_STUDY.c.id).where(_STUDY.c.study_instance_uid == study_uid))
        if study_pk is not None:
            return study_pk
        patient_id = parsed.text("PatientID", 64)
        issuer = parsed.text("IssuerOfPatientID", 64)
        patient_pk = session.scalar(
            select(_PATIENT.c.id).where(
                _PATIENT.c.patient_id == patient_id, _PATIENT.c.issuer_of_patient_id == issuer
            )
        )
        if patient_pk is None:
            name = parsed.text("PatientName")
            patient_pk = _inserted_key(
                session,
                insert(_PATIENT).values(
                    patient_id=patient_id,
                    issuer_of_patient_id=issuer,
                    patient_name=name,
                    patient_name_search=name.upper(),
                    patient_birth_date=parsed.text("PatientBirthDate", 8),
                    patient_sex=parsed.text("PatientSex", 16),
                ),
            )
        return _inserted_key(
            session,
            insert(_STUDY).values(
                study_instance_uid=study_uid,
                patient_pk=patient_pk,
                study_date=parsed.text("StudyDate", 8),
                study_time=parsed.text("StudyTime", 16),
                accession_number=parsed.text("AccessionNumber", 16),
                study_id=parsed.text("StudyID", 16),
                referring_physician_name=parsed.text("ReferringPhysicianName"),
                study_description=parsed.text("StudyDescription", 256),
                modalities_in_study="",
                number_of_series=0,
                number_of_instances=0,
                updated_at=dt.datetime.now(dt.UTC),
            ),
        )

    def _same_dataset(self, existing_sha256: str, temp_path: Path) -> bool:
        """Whether two files hold the same data set, whatever their file meta says."""
        try:
            return dataset_sha256(self.blobs.local_path(existing_sha256)) == dataset_sha256(temp_path)
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
            path=self.blobs.local_path(instance.blob_sha256),
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
                os.link(self.blobs.local_path(digest), temp_path)  # fetched if only in the object store
                outcome = self.ingest_temp(temp_path, digest)
                if not outcome.ok:
                    log.warning(
                        "orphan blob %s cannot be indexed (%s); left in place",
                        digest,
                        outcome.reason,
                    )
                else:  # indexed under another hash (its preamble was zeroed): this copy is redundant
                    self._drop_blob_if_unreferenced(digest)
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


_PATIENT = cast(Table, Patient.__table__)
_STUDY = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCE = cast(Table, Instance.__table__)


def _inserted_key(session: Session, statement: Insert) -> int:
    key = cast(CursorResult[Any], session.execute(statement)).inserted_primary_key
    assert key is not None
    return int(key[0])


def _instance_values(
    parsed: ParsedInstance, digest: str, size: int, header: str, now: dt.datetime
) -> dict[str, Any]:
    ds = parsed.dataset
    return {
        "sop_class_uid": str(ds.SOPClassUID),
        "instance_number": parsed.integer("InstanceNumber"),
        "transfer_syntax_uid": parsed.transfer_syntax_uid,
        "rows": parsed.integer("Rows"),
        "columns": parsed.integer("Columns"),
        "number_of_frames": parsed.integer("NumberOfFrames") or 1,
        "samples_per_pixel": parsed.integer("SamplesPerPixel"),
        "bits_allocated": parsed.integer("BitsAllocated"),
        "photometric_interpretation": parsed.text("PhotometricInterpretation", 32),
        "image_type": parsed.text("ImageType", 128),
        "image_laterality": parsed.text("ImageLaterality", 16),
        "view_position": parsed.text("ViewPosition", 16),
        "view_code": _view_code(ds),
        "content_date": parsed.text("ContentDate", 8),
        "content_time": parsed.text("ContentTime", 16),
        "blob_sha256": digest,
        "blob_size": size,
        "received_at": now,
        "header": header,
        "frame_index": parsed.frame_index.to_bytes() if parsed.frame_index is not None else None,
    }


# Parsing is pure Python (pydicom, the structure walk, DICOM JSON) and most of an instance's
# CPU: in worker processes it uses every core, even behind one server process.
_PARSE_WORKERS = min(os.cpu_count() or 1, 4)
parser_pool = IsolatedPool("DICOM parser", workers=_PARSE_WORKERS, preload=_PRELOAD)
_parser_started = threading.Event()  # the workers are being started
_parser_warm = threading.Event()  # ... and answer


def _parser_ready() -> bool:
    """Whether batches go to the workers; the first batch starts them, and the server parses
    meanwhile: starting the forkserver costs seconds of CPU, no request should wait for it."""
    if _PARSE_WORKERS < 2:
        return False
    start_parser_workers()
    return _parser_warm.is_set()


def start_parser_workers() -> None:
    """Start the parser workers in the background (once); ``tessera serve`` does it at start-up."""
    if _PARSE_WORKERS < 2 or _parser_started.is_set():
        return
    _parser_started.set()
    threading.Thread(target=_warm_parser, name="parser-warm-up", daemon=True).start()


def _warm_parser() -> None:
    parser_pool.warm()
    _parser_warm.set()


def _parse_isolated(path: Path, limits: GeometryLimits) -> ParsedInstance:
    """``parse_instance`` in a worker, with the same outcome as in this process.

    The workers are there for the second core, not for isolation (the parser is pure Python,
    its inputs bounded by the structure walk): if a worker dies (out of memory, killed) or a
    result cannot cross the process boundary, the instance is parsed here, as it would be alone.
    A worker dying breaks the pool under every job in flight, so this keeps the others stored.
    """
    try:
        return parser_pool.run(parse_instance, path, limits)
    except (RejectedInstance, OSError):
        raise
    except Exception as exc:
        log.warning("parsing %s in a worker failed (%s); parsing it in the server", path.name, exc)
        return parse_instance(path, limits)


def _write_back(path: Path) -> None:
    """fsync a temp file early; an error is not lost: ``commit_temp`` fsyncs again and reports it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # already refused and removed
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _digest(parsed: ParsedInstance, temp_path: Path, sha256: str | None) -> str:
    """The blob's SHA-256: the one hashed on arrival, unless the preamble was zeroed since."""
    if sha256 and not parsed.preamble_zeroed:
        return sha256
    return hash_file(temp_path)


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
        parsed.text("Modality", 16),
        parsed.transfer_syntax_uid,
        parsed.integer("NumberOfFrames") or 1,
    )


def open_archive(settings: Settings) -> Archive:
    os.makedirs(settings.data_dir, exist_ok=True)
    return Archive(settings)
