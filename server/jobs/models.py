"""The derived-job table: background work after ingest, kept in the index database.

A row is queued in the same transaction that stores its instance, so a committed
instance always has its jobs and a failed ingest never leaves one behind; any serving
process may then claim it (see ``server.jobs.runner``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from server.archive.models import Base

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
STATES = (QUEUED, RUNNING, DONE, FAILED)


class DerivedJob(Base):
    """One module's derived work for one instance; (kind, key) is unique so enqueueing is idempotent."""

    __tablename__ = "derived_job"
    __table_args__ = (
        UniqueConstraint("kind", "key", name="uq_derived_job_kind_key"),
        Index("ix_derived_job_state_not_before", "state", "not_before"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))  # the module id that runs it
    key: Mapped[str] = mapped_column(String(64))  # the SOP Instance UID it is about
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the InstanceStored event, field by field
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))  # retry backoff
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
