"""Issue 8: a stored file's 128-byte preamble is zeroed, unless it is a TIFF header (dual-personality WSI)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from server.archive.archive import Archive, StoreStatus
from server.archive.blobs import hash_file
from server.archive.models import Instance
from tests.dicom_cases import ct_bytes

# What a polyglot file looks like: a DOS/PE executable header where the preamble may be anything.
EXECUTABLE = (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"This program cannot be run")[
    :128
].ljust(128, b"\xcc")
TIFF_LITTLE = b"II*\x00\x08\x00\x00\x00" + bytes(range(120))
TIFF_BIG = b"MM\x00*\x00\x00\x00\x08" + bytes(range(120))


def _with_preamble(data: bytes, preamble: bytes) -> bytes:
    assert len(preamble) == 128 and data[128:132] == b"DICM"
    return preamble + data[128:]


def _stored(archive: Archive, sop_uid: str) -> bytes:
    stored = archive.instance_by_uid(sop_uid)
    assert stored is not None
    data = stored.path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == stored.sha256 == stored.path.name  # still content-addressed
    return data


def _blob_count(archive: Archive) -> int:
    return sum(1 for _ in archive.blobs.iter_hashes())


def test_executable_preamble_is_stored_as_zeros(archive: Archive) -> None:
    data = ct_bytes()
    outcome = archive.ingest_bytes(_with_preamble(data, EXECUTABLE))
    assert outcome.status is StoreStatus.STORED
    stored = _stored(archive, outcome.sop_instance_uid)
    assert stored[:128] == bytes(128)
    assert stored[128:] == data[128:]  # nothing else changed


@pytest.mark.parametrize("tiff", [TIFF_LITTLE, TIFF_BIG], ids=["II", "MM"])
def test_tiff_preamble_of_a_dual_personality_file_is_kept(archive: Archive, tiff: bytes) -> None:
    data = _with_preamble(ct_bytes(), tiff)
    outcome = archive.ingest_bytes(data)
    assert outcome.status is StoreStatus.STORED
    assert _stored(archive, outcome.sop_instance_uid) == data


def test_stow_digest_of_the_bytes_received_is_not_trusted_after_zeroing(archive: Archive) -> None:
    """STOW-RS hands over the hash computed while receiving; the stored bytes differ from those."""
    data = _with_preamble(ct_bytes(), EXECUTABLE)
    fh, temp = archive.blobs.new_temp()
    with fh:
        fh.write(data)
    (outcome,) = archive.ingest_batch([(temp, hashlib.sha256(data).hexdigest())])
    assert outcome.status is StoreStatus.STORED
    assert _stored(archive, outcome.sop_instance_uid)[:128] == bytes(128)


@pytest.mark.parametrize("first", [bytes(128), EXECUTABLE], ids=["clean-first", "executable-first"])
def test_duplicates_are_judged_as_before(archive: Archive, first: bytes) -> None:
    data = ct_bytes()
    second = EXECUTABLE if first == bytes(128) else bytes(128)
    assert archive.ingest_bytes(_with_preamble(data, first)).status is StoreStatus.STORED
    again = archive.ingest_bytes(_with_preamble(data, second))
    assert again.status is StoreStatus.ALREADY_PRESENT
    tiff = archive.ingest_bytes(_with_preamble(data, TIFF_LITTLE))  # same data set, other file bytes
    assert tiff.status is StoreStatus.ALREADY_PRESENT
    assert _blob_count(archive) == 1
    changed = archive.ingest_bytes(_with_preamble(ct_bytes(SeriesDescription="CHANGED"), EXECUTABLE))
    assert changed.status is StoreStatus.REJECTED  # different data set under the same UID: default policy


def test_reconcile_never_rewrites_a_blob_in_place(archive: Archive) -> None:
    """An orphan blob written before preambles were zeroed: indexed zeroed, the old bytes left untouched."""
    data = _with_preamble(ct_bytes(SOPInstanceUID="1.2.3.4.77"), EXECUTABLE)
    fh, temp = archive.blobs.new_temp()
    with fh:
        fh.write(data)
    digest = hash_file(temp)
    path = archive.blobs.commit_temp(temp, digest)
    seen: list[bytes] = []
    original_unlink = Path.unlink

    def remember_unlink(self: Path, missing_ok: bool = False) -> None:
        if self == path:
            seen.append(self.read_bytes())  # what the orphan held when it was dropped
        original_unlink(self, missing_ok=missing_ok)

    Path.unlink = remember_unlink  # type: ignore[method-assign]
    try:
        archive.reconcile(repair=True, temp_older_than_seconds=0)
    finally:
        Path.unlink = original_unlink  # type: ignore[method-assign]
    assert seen == [data], "the orphan was modified before it was dropped"
    assert _stored(archive, "1.2.3.4.77")[:128] == bytes(128)
    with archive.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
    assert archive.reconcile().clean and _blob_count(archive) == 1
