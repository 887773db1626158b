"""The derived-job queue: queued with the instance, run once under a lease, retried, survives restarts."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sample_data.mammography import CURRENT, mammogram
from sample_data.radiology import ct_series
from server.archive.archive import Archive, StoreStatus
from server.archive.events import InstanceStored
from server.archive.models import Instance
from server.cli import main as tessera
from server.config import Settings
from server.context import ServerContext
from server.jobs import job_runner_of
from server.jobs.models import DONE, FAILED, QUEUED, RUNNING, DerivedJob
from server.jobs.queue import JobQueue
from server.jobs.runner import JobRunner
from server.modules import ModuleRegistry, RouteSpec, SeriesRecord
from server.security.policy import Role
from server.security.service import security_of
from server.serve import BackgroundServer, build_context
from tests.conftest import free_port, make_settings

ROOT = Path(__file__).resolve().parents[1]
CT = "1.2.840.10008.5.1.4.1.1.2"


class CountingModule:
    """A module whose job for each CT instance records every run, and any two runs at once."""

    id = "counting"
    title = "Counting"
    priority = 0
    static_dir = None
    hanging_protocols = ()

    def __init__(self, *, failures: int = 0, seconds: float = 0.0) -> None:
        self.failures = failures  # each instance's first `failures` runs raise
        self.seconds = seconds
        self.runs: Counter[str] = Counter()
        self.events: list[InstanceStored] = []
        self.overlaps: list[str] = []
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def setup(self, ctx: ServerContext) -> None:
        pass

    def claims(self, series: SeriesRecord) -> bool:
        return False

    def routes(self, ctx: ServerContext) -> list[RouteSpec]:
        return []

    def on_instance_stored(self, event: InstanceStored) -> None:
        pass

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str) -> str:
        return ""

    def wants_job(self, event: InstanceStored) -> bool:
        return event.sop_class_uid == CT

    def run_job(self, event: InstanceStored) -> None:
        key = event.sop_instance_uid
        with self._lock:
            if key in self._active:
                self.overlaps.append(key)
            self._active.add(key)
            self.runs[key] += 1
            self.events.append(event)
            attempt = self.runs[key]
        try:
            time.sleep(self.seconds)
            if attempt <= self.failures:
                raise ValueError(f"no pixels yet (run {attempt})")
        finally:
            with self._lock:
                self._active.discard(key)


def _bytes(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _jobs(archive: Archive) -> list[DerivedJob]:
    with archive.sessions() as session:
        return list(session.scalars(select(DerivedJob).order_by(DerivedJob.id)).all())


def _wait(condition: Any, seconds: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _runner(archive: Archive, module: CountingModule, **options: Any) -> JobRunner:
    registry = ModuleRegistry([module])
    return JobRunner(archive.sessions, registry.run_job, [module.id], **options)


@pytest.fixture
def counting_ctx(settings: Settings) -> Iterator[tuple[ServerContext, CountingModule]]:
    module = CountingModule()
    context = build_context(settings, ModuleRegistry([module]))
    yield context, module
    runner = job_runner_of(context)
    if runner is not None:
        runner.stop()
    context.executor.shutdown(wait=True)
    context.archive.close()


def test_jobs_are_queued_with_the_instance_and_run_once_a_runner_starts(
    counting_ctx: tuple[ServerContext, CountingModule],
) -> None:
    ctx, module = counting_ctx
    archive = ctx.archive
    ct = ct_series(3)
    assert archive.ingest_bytes(_bytes(ct[0])).status is StoreStatus.STORED  # the one-by-one path
    temps = []
    for ds in ct[1:]:
        fh, path = archive.blobs.new_temp()
        with fh:
            fh.write(_bytes(ds))
        temps.append((path, None))
    assert all(o.status is StoreStatus.STORED for o in archive.ingest_batch(temps))  # one transaction
    jobs = _jobs(archive)
    assert sorted(j.key for j in jobs) == sorted(str(ds.SOPInstanceUID) for ds in ct)
    assert {(j.kind, j.state, j.attempts) for j in jobs} == {("counting", QUEUED, 0)}
    assert not module.runs  # nothing runs in a process without a started runner

    # Stored again (the same bytes): already present, no second job.
    assert archive.ingest_bytes(_bytes(ct[0])).status is StoreStatus.ALREADY_PRESENT
    assert len(_jobs(archive)) == 3

    runner = job_runner_of(ctx)
    assert runner is not None
    runner.start()
    _wait(lambda: all(j.state == DONE for j in _jobs(archive)), what="jobs done")
    assert module.runs == Counter({str(ds.SOPInstanceUID): 1 for ds in ct})
    first = next(e for e in module.events if e.sop_instance_uid == str(ct[0].SOPInstanceUID))
    assert first == InstanceStored(
        str(ct[0].StudyInstanceUID),
        str(ct[0].SeriesInstanceUID),
        str(ct[0].SOPInstanceUID),
        CT,
        "CT",
        str(ct[0].file_meta.TransferSyntaxUID),
        1,
    )
    assert all(j.lease_owner is None and j.attempts == 1 for j in _jobs(archive))


def test_an_ingest_that_fails_leaves_neither_instance_nor_job(
    counting_ctx: tuple[ServerContext, CountingModule],
) -> None:
    ctx, _module = counting_ctx
    archive = ctx.archive
    queue = JobQueue(ModuleRegistry([CountingModule()]).job_kinds)

    class FailingAfterEnqueue(JobQueue):
        """The job rows are written, then the database fails before the commit."""

        def enqueue(self, session: Session, events: Any) -> int:
            written = queue.enqueue(session, events)
            assert written == len(events)
            raise OperationalError("COMMIT", {}, Exception("connection lost"))

    archive.set_job_queue(FailingAfterEnqueue(lambda e: []))
    one, *batch = ct_series(3)
    outcome = archive.ingest_bytes(_bytes(one))
    assert outcome.status is StoreStatus.REJECTED and outcome.reason == "database unavailable"
    temps = []
    for ds in batch:
        fh, path = archive.blobs.new_temp()
        with fh:
            fh.write(_bytes(ds))
        temps.append((path, None))
    assert all(o.status is StoreStatus.REJECTED for o in archive.ingest_batch(temps))
    with archive.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert _jobs(archive) == []
    assert list(archive.blobs.iter_hashes()) == []  # nothing half-stored either


def test_a_new_ingest_wakes_the_runner_without_waiting_for_its_poll(
    counting_ctx: tuple[ServerContext, CountingModule],
) -> None:
    ctx, module = counting_ctx
    runner = job_runner_of(ctx)
    assert runner is not None
    runner.poll_seconds = 60
    runner.start()
    time.sleep(0.3)  # the workers are idle, waiting
    started = time.monotonic()
    ds = ct_series(1)[0]
    assert ctx.archive.ingest_bytes(_bytes(ds)).ok
    _wait(lambda: module.runs[str(ds.SOPInstanceUID)] == 1, seconds=10, what="the job")
    assert time.monotonic() - started < 5


def test_two_runners_never_run_one_job_twice(settings: Settings) -> None:
    """Two runners with their own engines (as two processes would have) drain one queue."""
    module = CountingModule(seconds=0.01)
    archives = [Archive(settings), Archive(settings, run_migrations=False)]
    queue = JobQueue(ModuleRegistry([module]).job_kinds)
    events = [
        InstanceStored("1.2", "1.2.3", f"1.2.3.{n}", CT, "CT", "1.2.840.10008.1.2.1", 1) for n in range(60)
    ]
    with archives[0].sessions() as session:
        queue.enqueue(session, events)
        session.commit()
    runners = [_runner(a, module, threads=3, poll_seconds=0.1) for a in archives]
    try:
        for runner in runners:
            runner.start()
        _wait(lambda: sum(module.runs.values()) >= 60 and all(j.state == DONE for j in _jobs(archives[0])))
        time.sleep(0.3)  # any late duplicate would show now
    finally:
        for runner in runners:
            runner.stop()
        for archive in archives:
            archive.close()
    assert module.runs == Counter({e.sop_instance_uid: 1 for e in events})
    assert module.overlaps == []


def test_an_expired_lease_is_taken_again_and_the_late_owner_cannot_finish(archive: Archive) -> None:
    module = CountingModule()
    queue = JobQueue(ModuleRegistry([module]).job_kinds)
    event = InstanceStored("1.2", "1.2.3", "1.2.3.4", CT, "CT", "1.2.840.10008.1.2.1", 1)
    with archive.sessions() as session:
        queue.enqueue(session, [event])
        session.commit()
    crashed = _runner(archive, module, lease_seconds=1)
    survivor = _runner(archive, module, lease_seconds=30)
    held = crashed.claim()  # ... and its process dies before running it
    assert held is not None and held.attempts == 1
    assert survivor.claim() is None  # the lease is still valid
    time.sleep(1.2)
    retaken = survivor.claim()
    assert retaken is not None and retaken.id == held.id and retaken.attempts == 2
    assert _jobs(archive)[0].lease_owner == survivor.owner
    crashed.run_one(held)  # a late outcome from the first owner is not written
    assert _jobs(archive)[0].state == RUNNING and _jobs(archive)[0].lease_owner == survivor.owner
    assert survivor.run_one(retaken)
    job = _jobs(archive)[0]
    assert (job.state, job.attempts, job.lease_owner) == (DONE, 2, None)


def test_a_job_whose_process_keeps_dying_is_failed(archive: Archive) -> None:
    module = CountingModule()
    queue = JobQueue(ModuleRegistry([module]).job_kinds)
    with archive.sessions() as session:
        queue.enqueue(session, [InstanceStored("1", "1.1", "1.1.1", CT, "CT", "1.2.840.10008.1.2.1", 1)])
        session.commit()
    runner = _runner(archive, module, lease_seconds=0.2, max_attempts=2)
    assert runner.claim() is not None
    time.sleep(0.3)
    assert runner.claim() is not None  # the second and last attempt, also abandoned
    time.sleep(0.3)
    assert runner.claim() is None
    assert runner.fail_abandoned() == 1
    job = _jobs(archive)[0]
    assert job.state == FAILED and "abandoned" in (job.last_error or "")


def test_a_failing_job_is_retried_with_backoff_then_failed_and_can_be_retried(
    archive: Archive, capsys: pytest.CaptureFixture[str]
) -> None:
    flaky = CountingModule(failures=1)
    broken = CountingModule(failures=100)
    queue = JobQueue(lambda e: [e.sop_class_uid])
    with archive.sessions() as session:
        queue.enqueue(session, [InstanceStored("1", "1.1", "1.1.1", "flaky", "CT", "1.2", 1)])
        queue.enqueue(session, [InstanceStored("1", "1.1", "1.1.2", "broken", "CT", "1.2", 1)])
        session.commit()

    def perform(kind: str, event: InstanceStored) -> None:
        (flaky if kind == "flaky" else broken).run_job(event)

    runner = JobRunner(
        archive.sessions, perform, ["flaky", "broken"], max_attempts=3, retry_seconds=0.2, poll_seconds=0.05
    )
    started = time.monotonic()
    runner.start()
    try:
        _wait(lambda: {j.key: j.state for j in _jobs(archive)} == {"1.1.1": DONE, "1.1.2": FAILED})
    finally:
        runner.stop()
    assert time.monotonic() - started >= 0.2 + 0.4  # backoff: 0.2 s, then 0.4 s
    jobs = {j.key: j for j in _jobs(archive)}
    assert flaky.runs["1.1.1"] == 2 and jobs["1.1.1"].attempts == 2 and jobs["1.1.1"].last_error is None
    assert broken.runs["1.1.2"] == 3 and jobs["1.1.2"].attempts == 3
    assert jobs["1.1.2"].last_error == "ValueError: no pixels yet (run 3)"

    data = ["--data-dir", str(archive.settings.data_dir), "--database-url", archive.settings.database_url]
    assert tessera(["jobs", *data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["kind", "queued", "running", "done", "failed"]
    assert "broken\t0\t0\t0\t1" in lines and "flaky\t0\t0\t1\t0" in lines and "total\t0\t0\t1\t1" in lines
    assert tessera(["jobs", "failed", *data]) == 0
    out = capsys.readouterr().out
    assert "broken\t1.1.2\t3 attempts" in out and "ValueError: no pixels yet (run 3)" in out
    assert tessera(["jobs", "retry", *data]) == 0
    assert capsys.readouterr().out.strip() == "1 failed jobs queued again"
    job = next(j for j in _jobs(archive) if j.key == "1.1.2")
    assert (job.state, job.attempts) == (QUEUED, 0)


def test_jobs_api_is_for_administrators(tessera_server_factory: Any) -> None:
    server: BackgroundServer = tessera_server_factory(auth_enabled=True)
    accounts = security_of(server.ctx).accounts
    tokens = {}
    for role in (Role.ADMINISTRATOR, Role.CLINICIAN):
        accounts.add_user(role.value, role, "a long enough passphrase 1")
        tokens[role] = accounts.create_token(role.value, "tests")[1]
    ds = mammogram(CURRENT, "L", "CC", 3, seed=5, shape=(256, 200))
    assert server.ctx.archive.ingest_bytes(_bytes(ds)).ok
    _wait(lambda: any(j.state == DONE for j in _jobs(server.ctx.archive)), what="the pyramid job")

    def get(role: Role) -> requests.Response:
        return requests.get(
            f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {tokens[role]}"}, timeout=10
        )

    assert get(Role.CLINICIAN).status_code == 403
    answer = get(Role.ADMINISTRATOR)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["kinds"]["mammography"] == {"queued": 0, "running": 0, "done": 1, "failed": 0}
    assert body["total"]["done"] == 1 and body["failed"] == []
    assert requests.get(f"{server.url}/api/jobs", timeout=10).status_code == 401


class ServeProcess:
    """`tessera serve` in its own process, with a short job lease."""

    def __init__(self, data_dir: Path, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {
            **os.environ,
            "TESSERA_DATA_DIR": str(data_dir),
            "TESSERA_DATABASE_URL": database_url,
            "TESSERA_PORT": str(self.port),
            "TESSERA_PROCESSES": "1",
            "TESSERA_DICOM_ENABLED": "false",
            "TESSERA_JOB_THREADS": "1",
            "TESSERA_JOB_LEASE_SECONDS": "3",
        }
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/api/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self._log.close()


def _stow(url: str, payload: bytes) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return requests.post(
        url + "/dicom-web/studies",
        data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )


def test_queued_jobs_survive_a_killed_server_and_are_done_by_the_next(tmp_path: Path, db_url: str) -> None:
    """Pyramid jobs queued while no server ran are done by one; killed (SIGKILL) mid-job, the next
    takes over the rest, and the job the dead process held once its lease expires."""
    data = tmp_path / "data"
    count = 6
    offline = build_context(make_settings(data, db_url))  # stores and queues, runs nothing
    template = mammogram(CURRENT, "L", "CC", 3, seed=3, shape=(2048, 1600))
    for _ in range(count):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        assert offline.archive.ingest_bytes(_bytes(template)).ok
    offline.executor.shutdown(wait=True)
    offline.archive.close()
    archive = Archive(make_settings(data, db_url), run_migrations=False)  # to watch the queue
    assert Counter(j.state for j in _jobs(archive)) == {QUEUED: count}

    first = ServeProcess(data, db_url, tmp_path / "first.log")
    try:

        def mid_queue() -> bool:
            states = Counter(j.state for j in _jobs(archive))
            return states[DONE] >= 1 and states[RUNNING] == 1

        _wait(mid_queue, seconds=60, what="one pyramid done and the next one running")
    finally:
        first.stop(signal.SIGKILL)
    held = next(j for j in _jobs(archive) if j.state == RUNNING)  # left behind by the dead process
    done_by_first = sum(j.state == DONE for j in _jobs(archive))
    assert 0 < done_by_first < count

    second = ServeProcess(data, db_url, tmp_path / "second.log")
    try:
        _wait(lambda: all(j.state == DONE for j in _jobs(archive)), seconds=120, what="every pyramid")
    finally:
        second.stop()
    jobs = {j.id: j for j in _jobs(archive)}
    archive.close()
    assert jobs[held.id].attempts == 2 and jobs[held.id].lease_owner is None  # retaken after its lease
    logs = [p.read_text(errors="replace") for p in (first.log, second.log)]
    assert logs[1].count("built pyramid") >= count - done_by_first - 1  # the second server did the rest
    assert sum(log.count("built pyramid") for log in logs) == count  # each pyramid built once
    assert len(list(archive.settings.derived_dir.joinpath("pyramids").glob("*.zarr"))) == count
