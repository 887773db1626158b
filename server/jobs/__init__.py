"""Derived work after ingest, as a queue in the index database that survives restarts.

``queue``: jobs are queued in the ingest transaction. ``runner``: every serving process
claims and runs them under a lease. ``models``: the ``derived_job`` table.
"""

from __future__ import annotations

from server.context import ServerContext
from server.jobs.queue import JobQueue
from server.jobs.runner import JobRunner

_RUNNER = "jobs.runner"


def attach_job_queue(ctx: ServerContext) -> JobRunner:
    """Queue the registry's jobs with each ingest, and make (not start) this process's runner."""
    assert ctx.registry is not None
    registry = ctx.registry
    queue = JobQueue(registry.job_kinds)
    ctx.archive.set_job_queue(queue)
    settings = ctx.settings
    runner = JobRunner(
        ctx.archive.sessions,
        registry.run_job,
        registry.producers().keys(),
        wakeup=queue.wakeup,
        threads=settings.job_threads,
        lease_seconds=settings.job_lease_seconds,
        max_attempts=settings.job_max_attempts,
        retry_seconds=settings.job_retry_seconds,
    )
    ctx.extras[_RUNNER] = runner
    return runner


def job_runner_of(ctx: ServerContext) -> JobRunner | None:
    runner = ctx.extras.get(_RUNNER)
    return runner if isinstance(runner, JobRunner) else None
