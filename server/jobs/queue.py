"""Putting derived jobs in the queue, and what an administrator sees of it.

Jobs are inserted by the ingest transaction itself (``JobQueue.enqueue`` is handed the
archive's session before it commits), so an instance and its jobs are committed or
rolled back together. Enqueueing is an upsert on (kind, key): storing an instance again
(the ``replace`` policy) puts its jobs back in the queue instead of adding new ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from server.archive.events import InstanceStored
from server.jobs.models import FAILED, QUEUED, STATES, DerivedJob

_CHUNK = 500  # rows per INSERT: well under SQLite's bound-parameter limit


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rows_changed(session: Session, statement: Executable) -> int:
    """Execute an UPDATE and say how many rows it changed (the claim guard depends on this)."""
    return int(cast(CursorResult[Any], session.execute(statement)).rowcount or 0)


class JobQueue:
    """Enqueues derived jobs inside an ingest transaction, and wakes this process's runner."""

    def __init__(self, kinds_for: Callable[[InstanceStored], Sequence[str]]) -> None:
        self._kinds_for = kinds_for  # which job kinds (module ids) want this instance
        self.wakeup = threading.Event()

    def enqueue(self, session: Session, events: Sequence[InstanceStored]) -> int:
        """Add the jobs these instances call for to ``session``'s transaction; the caller commits."""
        now = utcnow()
        rows: list[dict[str, Any]] = [
            {
                "kind": kind,
                "key": event.sop_instance_uid,
                "payload": dataclasses.asdict(event),
                "state": QUEUED,
                "attempts": 0,
                "not_before": now,
                "created_at": now,
                "updated_at": now,
            }
            for event in events
            for kind in self._kinds_for(event)
        ]
        dialect = session.get_bind().dialect.name
        for start in range(0, len(rows), _CHUNK):
            session.execute(_upsert(dialect, rows[start : start + _CHUNK]))
        return len(rows)

    def wake(self) -> None:
        """After a commit: the runner looks for work now instead of at its next poll."""
        self.wakeup.set()


def _upsert(dialect: str, rows: list[dict[str, Any]]) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(DerivedJob).values(rows)
    return statement.on_conflict_do_update(
        index_elements=[DerivedJob.kind, DerivedJob.key],
        set_={
            "payload": statement.excluded.payload,
            "state": QUEUED,
            "attempts": 0,
            "not_before": statement.excluded.not_before,
            "lease_owner": None,
            "lease_expires": None,
            "last_error": None,
            "updated_at": statement.excluded.updated_at,
        },
    )


@dataclass(frozen=True)
class JobView:
    """A job as shown to an administrator."""

    id: int
    kind: str
    key: str
    state: str
    attempts: int
    last_error: str | None
    updated_at: str

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def job_counts(sessions: sessionmaker[Session]) -> dict[str, dict[str, int]]:
    """Jobs per kind and state, every state present (0 when none)."""
    with sessions() as session:
        rows = session.execute(
            select(DerivedJob.kind, DerivedJob.state, func.count()).group_by(
                DerivedJob.kind, DerivedJob.state
            )
        ).all()
    counts: dict[str, dict[str, int]] = {}
    for kind, state, count in rows:
        counts.setdefault(kind, dict.fromkeys(STATES, 0))[state] = int(count)
    return dict(sorted(counts.items()))


def total_counts(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {state: sum(by_state[state] for by_state in counts.values()) for state in STATES}


def failed_jobs(sessions: sessionmaker[Session], limit: int = 100) -> list[JobView]:
    """The most recently failed jobs, with their last error."""
    with sessions() as session:
        jobs = session.scalars(
            select(DerivedJob)
            .where(DerivedJob.state == FAILED)
            .order_by(DerivedJob.updated_at.desc(), DerivedJob.id.desc())
            .limit(limit)
        ).all()
    return [JobView(j.id, j.kind, j.key, j.state, j.attempts, j.last_error, _iso(j.updated_at)) for j in jobs]


def retry_failed(sessions: sessionmaker[Session], kind: str | None = None) -> int:
    """Put failed jobs back in the queue with fresh attempts; returns how many."""
    now = utcnow()
    statement = (
        update(DerivedJob)
        .where(DerivedJob.state == FAILED)
        .values(
            state=QUEUED, attempts=0, not_before=now, lease_owner=None, lease_expires=None, updated_at=now
        )
    )
    if kind is not None:
        statement = statement.where(DerivedJob.kind == kind)
    with sessions() as session:
        count = rows_changed(session, statement)
        session.commit()
    return count


def _iso(moment: dt.datetime) -> str:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).isoformat()
