"""A batch (one STOW-RS request) is parsed in worker processes: the same outcomes as in the server."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

import server.archive.archive as archive_module
from server.archive.archive import Archive, StoreStatus, parser_pool
from server.archive.dicomfile import DATASET_DOES_NOT_MATCH_SOP_CLASS, GeometryLimits, RejectedInstance
from server.archive.dicomfile import parse_instance as real_parse_instance
from server.archive.models import Instance
from tests.conftest import make_settings
from tests.dicom_cases import bad_inputs, ct_bytes

CRASH_MARKER = "CRASH THE PARSER WORKER"


def _temps(archive: Archive, payloads: list[bytes]) -> list[tuple[Path, str | None]]:
    items: list[tuple[Path, str | None]] = []
    for payload in payloads:
        fh, path = archive.blobs.new_temp()
        with fh:
            fh.write(payload)
        items.append((path, None))
    return items


def _ct(**changes: object) -> bytes:
    """A CT slice of its own (``ct_bytes`` alone repeats one SOP Instance UID)."""
    return ct_bytes(SOPInstanceUID=generate_uid(), **changes)


def _instances(archive: Archive) -> int:
    with archive.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def _crash_in_worker(path: Path, limits: GeometryLimits) -> object:
    """parse_instance, except that a worker process given the marked file dies on the spot."""
    if multiprocessing.parent_process() is not None and CRASH_MARKER.encode() in path.read_bytes():
        os._exit(3)
    return real_parse_instance(path, limits)


def _worker_pid(_path: Path, _limits: GeometryLimits) -> int:
    return os.getpid()


def test_a_refusal_crosses_the_process_boundary_whole() -> None:
    refused = RejectedInstance("SOPClassUID differs", DATASET_DOES_NOT_MATCH_SOP_CLASS)
    refused.sop_class_uid, refused.sop_instance_uid = "1.2.3", "1.2.3.4"
    copy = pickle.loads(pickle.dumps(refused))
    assert (copy.reason, copy.status, copy.sop_class_uid, copy.sop_instance_uid) == (
        "SOPClassUID differs",
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "1.2.3",
        "1.2.3.4",
    )


@pytest.fixture
def warm_parser() -> None:
    """The workers answer: until then batches are parsed in the server (see ``_parser_ready``)."""
    if archive_module._PARSE_WORKERS < 2:
        pytest.skip("one core: batches are parsed in the server process")
    archive_module._parser_ready()
    assert archive_module._parser_warm.wait(120)


def test_batch_parsed_in_workers_gives_the_outcomes_of_one_by_one(
    tmp_path: Path, archive: Archive, warm_parser: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parser_pool.run(_worker_pid, tmp_path, archive.limits) != os.getpid()  # workers are processes
    calls: list[Path] = []
    run = parser_pool.run

    def counted(fn: Callable[..., Any], path: Path, limits: GeometryLimits) -> Any:
        calls.append(path)
        return run(fn, path, limits)

    monkeypatch.setattr(parser_pool, "run", counted)
    cases = bad_inputs()
    goods = [_ct() for _ in range(4)]
    payloads = [goods[0], *cases.values(), *goods[1:]]
    batch = archive.ingest_batch(_temps(archive, payloads))
    alone = Archive(make_settings(tmp_path / "alone"))
    try:
        single = [alone.ingest_temp(path) for path, _ in _temps(alone, payloads)]
    finally:
        alone.close()
    assert [(o.status, o.failure_status, o.reason, o.sop_class_uid, o.sop_instance_uid) for o in batch] == [
        (o.status, o.failure_status, o.reason, o.sop_class_uid, o.sop_instance_uid) for o in single
    ]
    assert len(calls) == len(payloads)  # every part of the batch went to a worker
    assert [o.status for o in batch].count(StoreStatus.STORED) == len(goods)
    assert _instances(archive) == len(goods)
    assert not any(archive.blobs.tmp_dir.iterdir())


def test_a_worker_dying_loses_no_instance_of_the_batch(
    archive: Archive, warm_parser: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "parse_instance", _crash_in_worker)
    restarts = parser_pool.restarts
    payloads = [_ct() for _ in range(5)]
    payloads.insert(2, _ct(ImageComments=CRASH_MARKER))
    outcomes = archive.ingest_batch(_temps(archive, payloads))
    assert [o.status for o in outcomes] == [StoreStatus.STORED] * 6
    assert parser_pool.restarts > restarts  # the marked file really killed a worker
    assert _instances(archive) == 6
    assert not any(archive.blobs.tmp_dir.iterdir())
    again = archive.ingest_batch(_temps(archive, [_ct(), _ct()]))  # the pool was replaced
    assert [o.status for o in again] == [StoreStatus.STORED] * 2
