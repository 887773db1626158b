"""The archive: one ingest path, content-addressed durable blobs, duplicates, reconciliation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from server.archive.archive import Archive, StoreStatus
from server.archive.dicomfile import DUPLICATE_SOP_INSTANCE
from server.archive.models import Instance, Patient, Series, Study
from server.imaging.frames import decode_frame, read_frame_bytes
from tests.dicom_cases import bad_inputs, ct_bytes, to_bytes


def _counts(archive: Archive) -> tuple[int, int, int, int]:
    with archive.sessions() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(model))
            for model in (Patient, Study, Series, Instance)
        )


def _blob_count(archive: Archive) -> int:
    return sum(1 for _ in archive.blobs.iter_hashes())


def test_ingest_varied_set_indexes_every_instance(archive: Archive, varied_files: list[Path]) -> None:
    outcomes = [archive.ingest_path(p) for p in varied_files]
    assert all(o.status is StoreStatus.STORED for o in outcomes), [o.reason for o in outcomes if not o.ok]
    patients, studies, series, instances = _counts(archive)
    assert instances == len(varied_files) == _blob_count(archive)
    assert patients == 4 and studies == 4 and series == 9
    with archive.sessions() as session:
        ct_study = session.scalars(select(Study).where(Study.accession_number == "ACC-1001")).one()
        assert ct_study.modalities_in_study == "CT\\OT"
        assert ct_study.number_of_instances == 16 and ct_study.number_of_series == 4
        names = set(session.scalars(select(Patient.patient_name)))
    assert "Müller^Anna" in names and "O'Brien^<b>Sean</b>" in names


def test_blob_is_content_addressed_and_bytes_kept(archive: Archive, varied_files: list[Path]) -> None:
    path = varied_files[0]
    outcome = archive.ingest_path(path)
    (stored,) = archive.stored_instances(outcome.study_instance_uid, sop_uid=outcome.sop_instance_uid)
    assert stored.path.read_bytes() == path.read_bytes()
    assert stored.path.name == stored.sha256 and stored.path.parent.name == stored.sha256[:2]
    assert not any(archive.blobs.tmp_dir.iterdir()), "no temp file is left behind"


def test_every_frame_index_reads_the_frames_pydicom_decodes(
    archive: Archive, varied_files: list[Path]
) -> None:
    for path in varied_files:
        outcome = archive.ingest_path(path)
        (stored,) = archive.stored_instances(
            outcome.study_instance_uid, sop_uid=outcome.sop_instance_uid, with_frame_index=True
        )
        reference = dcmread(path)
        expected = reference.pixel_array
        header = dcmread(path, stop_before_pixels=True)
        for frame in range(stored.number_of_frames):
            array = decode_frame(stored, header, frame)
            want = expected[frame] if stored.number_of_frames > 1 else expected
            if reference.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50":
                assert np.abs(array.astype(int) - want.astype(int)).mean() < 2
            else:
                assert np.array_equal(array, want), f"{path.name} frame {frame}"
        if stored.frame_index is not None and reference.file_meta.TransferSyntaxUID.is_encapsulated:
            from pydicom.encaps import generate_frames

            frames = list(generate_frames(reference.PixelData, number_of_frames=stored.number_of_frames))
            for i, data in enumerate(frames):
                mine = read_frame_bytes(stored, i)
                assert data.startswith(mine) and len(data) - len(mine) <= 1  # at most the pad byte dropped


def test_identical_duplicate_is_idempotent(archive: Archive) -> None:
    data = ct_bytes()
    assert archive.ingest_bytes(data).status is StoreStatus.STORED
    before = _counts(archive)
    assert archive.ingest_bytes(data).status is StoreStatus.ALREADY_PRESENT
    assert _counts(archive) == before and _blob_count(archive) == 1


def test_different_content_under_same_uid_is_rejected_by_default(archive: Archive) -> None:
    first = archive.ingest_bytes(ct_bytes())
    changed = archive.ingest_bytes(ct_bytes(SeriesDescription="CHANGED"))
    assert changed.status is StoreStatus.REJECTED and changed.failure_status == DUPLICATE_SOP_INSTANCE
    (stored,) = archive.stored_instances(first.study_instance_uid)
    assert dcmread(stored.path).SeriesDescription != "CHANGED"
    assert _blob_count(archive) == 1


def test_replace_policy_swaps_content_and_drops_the_old_blob(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    archive = Archive(make_settings(tmp_path / "d", duplicate_policy="replace"))
    try:
        first = archive.ingest_bytes(ct_bytes())
        second = archive.ingest_bytes(ct_bytes(SeriesDescription="CHANGED"))
        assert second.status is StoreStatus.REPLACED
        (stored,) = archive.stored_instances(first.study_instance_uid)
        assert dcmread(stored.path).SeriesDescription == "CHANGED"
        assert _blob_count(archive) == 1 and _counts(archive)[3] == 1
    finally:
        archive.close()


@pytest.mark.parametrize("case", sorted(bad_inputs()))
def test_bad_input_is_rejected_with_a_reason_and_nothing_stored(archive: Archive, case: str) -> None:
    archive.ingest_bytes(ct_bytes(SOPInstanceUID="1.2.3.4.5.6.7"))  # something already stored
    before, blobs = _counts(archive), _blob_count(archive)
    outcome = archive.ingest_bytes(bad_inputs()[case])
    assert outcome.status is StoreStatus.REJECTED
    assert outcome.reason and outcome.failure_status >= 0xA700
    assert _counts(archive) == before and _blob_count(archive) == blobs
    assert not any(archive.blobs.tmp_dir.iterdir())


def test_geometry_limit_applies_before_storing(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    archive = Archive(make_settings(tmp_path / "d", max_pixel_bytes=1000))
    try:
        outcome = archive.ingest_bytes(ct_bytes())
        assert outcome.status is StoreStatus.REJECTED and outcome.failure_status == 0xA700
        assert "limit" in outcome.reason
    finally:
        archive.close()


def test_reconcile_finds_missing_files_and_indexes_orphans(archive: Archive) -> None:
    kept = archive.ingest_bytes(ct_bytes())
    lost = archive.ingest_bytes(ct_bytes(SOPInstanceUID="1.2.3.4.99"))
    (lost_stored,) = archive.stored_instances(lost.study_instance_uid, sop_uid=lost.sop_instance_uid)
    os.unlink(lost_stored.path)
    # A blob written durably whose index row never committed (crash between the two):
    orphan = ct_bytes(SOPInstanceUID="1.2.3.4.100")
    fh, temp = archive.blobs.new_temp()
    fh.write(orphan)
    fh.close()
    from server.archive.blobs import hash_file

    archive.blobs.commit_temp(temp, hash_file(temp))
    (archive.blobs.tmp_dir / "in-crashed.part").write_bytes(b"half an upload")
    report = archive.reconcile(repair=True, temp_older_than_seconds=0)
    assert report.missing_files == [lost.sop_instance_uid]
    assert len(report.orphan_files) == 1 and report.removed_temp_files == 1
    assert archive.stored_instances(kept.study_instance_uid, sop_uid="1.2.3.4.100")
    assert archive.reconcile().orphan_files == []


def test_header_json_keeps_bulk_data_out(archive: Archive, varied_files: list[Path]) -> None:
    import json

    palette = next(
        p
        for p in varied_files
        if dcmread(p, stop_before_pixels=True).PhotometricInterpretation == "PALETTE COLOR"
    )
    outcome = archive.ingest_path(palette)
    header = json.loads(archive.headers([outcome.sop_instance_uid])[outcome.sop_instance_uid])
    assert (
        header["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk/7FE00010"}
        or header["7FE00010"]["BulkDataURI"]
    )
    assert header["00100010"]["Value"][0]["Alphabetic"]
    assert len(json.dumps(header)) < 20_000


def test_ingest_is_safe_from_several_threads(archive: Archive) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sample_data.radiology import ct_series

    datasets = ct_series(12)
    payloads = [to_bytes(ds) for ds in datasets]
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(archive.ingest_bytes, payloads + payloads))
    assert sum(o.status is StoreStatus.STORED for o in outcomes) == 12
    assert all(o.ok for o in outcomes)
    assert _counts(archive) == (1, 1, 1, 12)
    with archive.sessions() as session:
        assert session.scalar(select(Series.number_of_instances)) == 12


def _temps(archive: Archive, payloads: list[bytes]) -> list[tuple[Path, str | None]]:
    items: list[tuple[Path, str | None]] = []
    for payload in payloads:
        fh, path = archive.blobs.new_temp()
        with fh:
            fh.write(payload)
        items.append((path, None))
    return items


def test_batch_ingest_commits_once_and_matches_one_by_one(archive: Archive) -> None:
    from sample_data.radiology import ct_series

    payloads = [to_bytes(ds) for ds in ct_series(6)]
    bad = bad_inputs()["truncated pixel data"]
    outcomes = archive.ingest_batch(_temps(archive, [*payloads, bad]))
    assert [o.status for o in outcomes] == [StoreStatus.STORED] * 6 + [StoreStatus.REJECTED]
    assert _counts(archive) == (1, 1, 1, 6) and _blob_count(archive) == 6
    # A second batch with known instances (identical, changed, new) falls back to the careful path.
    changed = ct_bytes(SOPInstanceUID=str(ct_series(6)[0].SOPInstanceUID), SeriesDescription="CHANGED")
    again = archive.ingest_batch(
        _temps(archive, [payloads[1], changed, ct_bytes(SOPInstanceUID="1.2.3.4.5")])
    )
    assert [o.status for o in again] == [
        StoreStatus.ALREADY_PRESENT,
        StoreStatus.REJECTED,
        StoreStatus.STORED,
    ]
    assert _counts(archive)[3] == 7 and _blob_count(archive) == 7  # the refused blob did not stay
    assert not any(archive.blobs.tmp_dir.iterdir())
    with archive.sessions() as session:
        assert session.scalar(select(Series.number_of_instances)) == 7


def test_batch_with_the_same_instance_twice(archive: Archive) -> None:
    payload = ct_bytes()
    outcomes = archive.ingest_batch(_temps(archive, [payload, payload]))
    assert sorted(o.status.value for o in outcomes) == ["already present", "stored"]
    assert _counts(archive)[3] == 1 and _blob_count(archive) == 1


def test_batch_across_studies_and_series_keeps_every_counter(archive: Archive) -> None:
    """One batch: a known series, a new series of a known study, and a new patient/study/series."""
    from sample_data.radiology import Patient as SamplePatient
    from sample_data.radiology import Study as SampleStudy
    from sample_data.radiology import ct_series, mr_series

    patient, study = SamplePatient("BATCH^ONE", "B1"), SampleStudy(accession_number="BATCH1")
    first = ct_series(2, patient=patient, study=study, size=16)
    archive.ingest_batch(_temps(archive, [to_bytes(ds) for ds in first[:1]]))  # the series is now known
    mixed = [
        first[1],  # known series
        *mr_series(2, patient=patient, study=study, series_number=2, size=16),  # new series, known study
        *ct_series(3, size=16),  # new patient, study and series
    ]
    outcomes = archive.ingest_batch(_temps(archive, [to_bytes(ds) for ds in mixed]))
    assert [o.status for o in outcomes] == [StoreStatus.STORED] * 6
    assert _counts(archive) == (2, 2, 3, 7)
    with archive.sessions() as session:
        studies = {s.accession_number: s for s in session.scalars(select(Study))}
        known = studies["BATCH1"]
        assert (known.number_of_series, known.number_of_instances, known.modalities_in_study) == (
            2,
            4,
            "CT\\MR",
        )
        other = next(s for a, s in studies.items() if a != "BATCH1")
        assert (other.number_of_series, other.number_of_instances, other.modalities_in_study) == (1, 3, "CT")
        per_series = sorted(session.scalars(select(Series.number_of_instances)))
    assert per_series == [2, 2, 3]
