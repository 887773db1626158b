"""``tessera jobs``: what the derived-job queue holds, why jobs failed, and running them again."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from server.config import Settings
from server.jobs.models import STATES
from server.jobs.queue import failed_jobs, job_counts, retry_failed, total_counts


def add_commands(subparsers: Any) -> None:
    jobs = subparsers.add_parser(
        "jobs", help="derived work after ingest: counts by state, failed jobs, retry failed ones"
    )
    jobs.add_argument(
        "action",
        nargs="?",
        choices=("status", "failed", "retry"),
        default="status",
        help="status (default): jobs per kind and state; failed: failed jobs with their error; "
        "retry: queue failed jobs again",
    )
    jobs.add_argument("--kind", help="with retry: only jobs of this kind (a module id)")
    jobs.add_argument("--limit", type=int, default=100, help="with failed: at most this many (newest first)")
    jobs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    jobs.set_defaults(func=cmd_jobs)


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from server.archive.archive import Archive

    archive = Archive(settings)
    try:
        if args.action == "retry":
            count = retry_failed(archive.sessions, args.kind)
            print(f"{count} failed jobs queued again")
            return 0
        if args.action == "failed":
            jobs = failed_jobs(archive.sessions, args.limit)
            if args.json:
                print(json.dumps([j.as_json() for j in jobs], indent=2))
            for job in [] if args.json else jobs:
                print(f"{job.id}\t{job.kind}\t{job.key}\t{job.attempts} attempts\t{job.updated_at}")
                print(f"\t{job.last_error or '(no error recorded)'}")
            if not jobs and not args.json:
                print("no failed jobs", file=sys.stderr)
            return 0
        counts = job_counts(archive.sessions)
    finally:
        archive.close()
    if args.json:
        print(json.dumps({"kinds": counts, "total": total_counts(counts)}, indent=2))
        return 0
    print("kind\t" + "\t".join(STATES))
    for kind, by_state in [*counts.items(), ("total", total_counts(counts))]:
        print(kind + "\t" + "\t".join(str(by_state[state]) for state in STATES))
    return 0
