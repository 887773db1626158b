"""Running queued derived jobs: claimed under a lease, retried with backoff, never run twice at once.

Every serving process runs one ``JobRunner``. A job is claimed by one atomic UPDATE that
only succeeds while the job is still claimable (``state='queued'`` and due, or ``running``
with an expired lease); on PostgreSQL the candidate row is first locked with
``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent runners pass over each other's rows
instead of waiting. The claim sets a lease that the runner renews while the job runs; a
process that dies stops renewing, and once the lease expires another runner takes the job
again. Completion and failure are written only while the runner still holds the lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from server.archive.events import InstanceStored
from server.jobs.models import DONE, FAILED, QUEUED, RUNNING, DerivedJob
from server.jobs.queue import rows_changed, utcnow

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600
_ERROR_CHARS = 4000


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    key: str
    payload: dict[str, Any]
    attempts: int  # including this one


class JobRunner:
    """Claims and runs this process's share of the derived-job queue on a few daemon threads.

    ``perform(kind, event)`` does the work and raises to report failure; it must be
    idempotent, since a job whose process dies mid-way is run again elsewhere.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        perform: Callable[[str, InstanceStored], None],
        kinds: Collection[str],
        *,
        wakeup: threading.Event | None = None,
        threads: int = 2,
        lease_seconds: float = 300,
        max_attempts: int = 5,
        retry_seconds: float = 10,
        poll_seconds: float = 2.0,
    ) -> None:
        self.sessions = sessions
        self.perform = perform
        self.kinds = sorted(kinds)  # only kinds this process can run; others wait for a process that can
        self.wakeup = wakeup or threading.Event()
        self.threads = threads
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._postgres = sessions.kw["bind"].dialect.name == "postgresql"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._workers or not self.kinds:
            return
        for number in range(self.threads):
            self._workers.append(
                threading.Thread(target=self._work, name=f"tessera-job-{number}", daemon=True)
            )
        self._workers.append(
            threading.Thread(target=self._keep_leases, name="tessera-job-lease", daemon=True)
        )
        for thread in self._workers:
            thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop claiming; jobs still running after ``timeout`` go back to the queue for another process."""
        self._stopping.set()
        self.wakeup.set()
        for thread in self._workers:
            thread.join(timeout / max(1, len(self._workers)))
        if any(t.is_alive() for t in self._workers):
            self._release_leases()
        self._workers = []

    # -- claiming --------------------------------------------------------------------------------

    def _claimable(self, now: Any) -> Any:
        return and_(
            DerivedJob.kind.in_(self.kinds),
            or_(
                and_(DerivedJob.state == QUEUED, DerivedJob.not_before <= now),
                and_(
                    DerivedJob.state == RUNNING,
                    DerivedJob.lease_expires < now,
                    DerivedJob.attempts < self.max_attempts,
                ),
            ),
        )

    def claim(self) -> ClaimedJob | None:
        """Take one due job (or one whose lease expired), or None if there is none."""
        now = utcnow()
        candidates = (
            select(DerivedJob.id)
            .where(self._claimable(now))
            .order_by(DerivedJob.not_before, DerivedJob.id)
            .limit(1 if self._postgres else 8)
        )
        if self._postgres:
            candidates = candidates.with_for_update(skip_locked=True)
        with self.sessions() as session:
            for job_id in session.scalars(candidates).all():
                # The guard re-checks claimability in the UPDATE itself: of two runners racing
                # for a row (SQLite has no row locks), exactly one sees rowcount 1.
                taken = rows_changed(
                    session,
                    update(DerivedJob)
                    .where(DerivedJob.id == job_id, self._claimable(now))
                    .values(
                        state=RUNNING,
                        lease_owner=self.owner,
                        lease_expires=now + self.lease,
                        attempts=DerivedJob.attempts + 1,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False),
                )
                if taken == 1:
                    row = session.execute(
                        select(
                            DerivedJob.id,
                            DerivedJob.kind,
                            DerivedJob.key,
                            DerivedJob.payload,
                            DerivedJob.attempts,
                        ).where(DerivedJob.id == job_id)
                    ).one()
                    session.commit()
                    return ClaimedJob(row.id, row.kind, row.key, dict(row.payload), row.attempts)
            session.commit()  # releases the SKIP LOCKED row locks of a claim that lost
        return None

    # -- running ---------------------------------------------------------------------------------

    def run_one(self, job: ClaimedJob) -> bool:
        """Run a claimed job and record the outcome; True if it succeeded."""
        try:
            self.perform(job.kind, InstanceStored(**job.payload))
        except Exception as exc:
            log.warning(
                "derived job %s %s failed (attempt %d of %d)",
                job.kind,
                job.key,
                job.attempts,
                self.max_attempts,
                exc_info=True,
            )
            self._record_failure(job, f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS])
            return False
        self._finish(job, state=DONE, last_error=None)
        return True

    def _record_failure(self, job: ClaimedJob, error: str) -> None:
        if job.attempts >= self.max_attempts:
            self._finish(job, state=FAILED, last_error=error)
            return
        delay = min(MAX_BACKOFF_SECONDS, self.retry_seconds * 2 ** (job.attempts - 1))
        self._finish(job, state=QUEUED, last_error=error, not_before=utcnow() + timedelta(seconds=delay))

    def _finish(self, job: ClaimedJob, **values: Any) -> None:
        """Write the outcome, only if this runner still holds the job (its lease was not taken over)."""
        with self.sessions() as session:
            rows_changed(
                session,
                update(DerivedJob)
                .where(
                    DerivedJob.id == job.id, DerivedJob.state == RUNNING, DerivedJob.lease_owner == self.owner
                )
                .values(lease_owner=None, lease_expires=None, updated_at=utcnow(), **values)
                .execution_options(synchronize_session=False),
            )
            session.commit()

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.claim()
            except Exception:
                log.exception("cannot claim derived jobs; trying again in %.0f s", self.poll_seconds)
                self._stopping.wait(self.poll_seconds)
                continue
            if job is None:
                # A commit in this process sets the event after the row is visible, so a job
                # queued between the claim above and this wait is not missed.
                self.wakeup.wait(self.poll_seconds)
                self.wakeup.clear()
                continue
            self.wakeup.set()  # more may be waiting: let an idle worker look too
            try:
                self.run_one(job)
            except Exception:  # the outcome could not be written: the lease expires and it runs again
                log.exception("cannot record the outcome of derived job %s", job.id)

    # -- leases ----------------------------------------------------------------------------------

    def _keep_leases(self) -> None:
        """Renew the leases of jobs running here; give up on jobs whose process died too often."""
        interval = max(0.5, self.lease.total_seconds() / 3)
        while not self._stopping.wait(interval):
            try:
                self.renew_leases()
                self.fail_abandoned()
            except Exception:
                log.exception("cannot renew derived-job leases")

    def renew_leases(self) -> int:
        now = utcnow()
        with self.sessions() as session:
            count = rows_changed(
                session,
                update(DerivedJob)
                .where(DerivedJob.lease_owner == self.owner, DerivedJob.state == RUNNING)
                .values(lease_expires=now + self.lease)
                .execution_options(synchronize_session=False),
            )
            session.commit()
        return count

    def fail_abandoned(self) -> int:
        """A job whose lease expired on its last attempt (its process died each time) is failed."""
        now = utcnow()
        with self.sessions() as session:
            count = rows_changed(
                session,
                update(DerivedJob)
                .where(
                    DerivedJob.state == RUNNING,
                    DerivedJob.lease_expires < now,
                    DerivedJob.attempts >= self.max_attempts,
                )
                .values(
                    state=FAILED,
                    lease_owner=None,
                    lease_expires=None,
                    last_error="abandoned: the process running it stopped before finishing, on every attempt",
                    updated_at=now,
                )
                .execution_options(synchronize_session=False),
            )
            session.commit()
        return count

    def _release_leases(self) -> None:
        """On shutdown: jobs still running here go back to the queue now, not after their lease."""
        now = utcnow()
        try:
            with self.sessions() as session:
                rows_changed(
                    session,
                    update(DerivedJob)
                    .where(DerivedJob.lease_owner == self.owner, DerivedJob.state == RUNNING)
                    .values(
                        state=QUEUED,
                        attempts=DerivedJob.attempts - 1,
                        lease_owner=None,
                        lease_expires=None,
                        not_before=now,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False),
                )
                session.commit()
        except Exception:
            log.exception("cannot hand running derived jobs back to the queue; their leases will expire")
