"""De-identified export (PS3.15 Annex E Basic Profile): every profile action applied, nothing of the
original identity left in the bytes, references between instances remapped consistently, pixels
unchanged, the result importable again; the CLI and the HTTP door, each audited as an export."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

from sample_data.radiology import Patient, Study, ct_series
from server.archive.archive import Archive, StoreStatus
from server.archive.deidentify import (
    _DUMMY,
    ANNEX_E_EDITION,
    BASIC_PROFILE,
    REPEATING_RULES,
    BurnedInAnnotationError,
    Pseudonyms,
    archived_study_files,
    directory_writer,
    export_study,
    profile_action,
)
from server.cli import main
from server.security.audit import AuditFilter
from server.security.service import SecurityService, security_of
from server.serve import BackgroundServer
from tests.conftest import make_settings
from tests.test_security_access import quick_argon2, start_secure

__all__ = ["quick_argon2"]

PATIENT = Patient(name="Quixote^Alonso", id="PID-7788991", birth_date="19470212", sex="M")
STUDY = Study(
    date="20240917",
    time="101530",
    accession_number="ACC-556677",
    referring_physician_name="Carrasco^Sanson",
    description="CT THORAX",
)
SECRETS = [b"Quixote", b"Alonso", b"PID-7788991", b"19470212", b"20240917", b"ACC-556677", b"Carrasco"]
SECRETS += [b"La Mancha General", b"Panza^Sancho", b"Dulcinea", b"OTHER-ID-42", b"ELTOBOSO"]


def _private(ds: Dataset) -> None:
    block = ds.private_block(0x0029, "ELTOBOSO", create=True)
    block.add_new(0x10, "LO", "Dulcinea private note")


def make_study() -> list[FileDataset]:
    """Three CT slices and an SR that points at them, with identity in every hiding place."""
    slices = ct_series(3, patient=PATIENT, study=STUDY, size=32)
    for ds in slices:
        ds.InstitutionName = "La Mancha General"
        ds.OperatorsName = "Panza^Sancho"
        ds.OtherPatientIDs = "OTHER-ID-42"
        ds.PatientAddress = "Calle Dulcinea 1"
        ds.InstanceCreationDate = STUDY.date
        ds.AcquisitionDateTime = STUDY.date + "101600"
        ds.DeviceSerialNumber = "SN-123"
        ds.StudyID = "STUDY-77"
        ds.SecondaryCaptureDeviceID = "ELTOBOSO-SC1"  # in Table E.1-1 since 2026c only
        ds.add_new(0x00100012, "LO", "Alonso")  # Name to Use: 2026c, unknown to pydicom's dictionary
        _private(ds)
        item = Dataset()
        item.RequestedProcedureID = "RP-9"
        item.ScheduledProcedureStepID = "SPS-9"
        item.ScheduledProcedureStepStartDate = STUDY.date
        _private(item)
        ds.RequestAttributesSequence = Sequence([item])
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "LMG", "99LOCAL", "La Mancha General"
        ds.InstitutionCodeSequence = Sequence([code])
        ds.add_new(0x60000010, "US", 32)  # an overlay plane: removed with its data
        ds.add_new(0x60000011, "US", 32)
        ds.add_new(0x60000100, "US", 1)
        ds.add_new(0x60003000, "OW", b"\x00" * 128)
    source = Dataset()
    source.ReferencedSOPClassUID = slices[0].SOPClassUID
    source.ReferencedSOPInstanceUID = slices[0].SOPInstanceUID
    slices[1].SourceImageSequence = Sequence([source])
    return [*slices, _report(slices)]


def _report(slices: list[FileDataset]) -> FileDataset:
    first = slices[0]
    ds = FileDataset("", Dataset(), file_meta=first.file_meta.__class__(), preamble=b"\0" * 128)
    ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
        setattr(ds, keyword, first.get(keyword))
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        setattr(ds, keyword, first.get(keyword))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SR", generate_uid(), 99, 1
    ds.ContentDate, ds.ContentTime = STUDY.date, "110000"
    ds.VerifyingObserverSequence = Sequence([Dataset()])
    ds.VerifyingObserverSequence[0].VerifyingObserverName = "Panza^Sancho"
    ds.VerifyingObserverSequence[0].VerifyingOrganization = "La Mancha General"
    ds.VerifyingObserverSequence[0].VerificationDateTime = STUDY.date + "120000"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "VERIFIED"
    image = Dataset()
    image.RelationshipType, image.ValueType = "CONTAINS", "IMAGE"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = first.SOPClassUID, first.SOPInstanceUID
    image.ReferencedSOPSequence = Sequence([ref])
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.TextValue = "Mr Quixote, seen with Dulcinea"
    name = Dataset()
    name.RelationshipType, name.ValueType, name.PersonName = "HAS OBS CONTEXT", "PNAME", "Panza^Sancho"
    ds.ContentSequence = Sequence([name, image, text])
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ReferencedSOPSequence = Sequence([ref.__class__(ref)])
    study_ref = Dataset()
    study_ref.StudyInstanceUID = first.StudyInstanceUID
    study_ref.ReferencedSeriesSequence = Sequence([series_ref])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study_ref])
    return ds


def to_bytes(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Archive, list[FileDataset]]]:
    archive = Archive(make_settings(tmp_path / "data"))
    originals = make_study()
    for ds in originals:
        assert archive.ingest_bytes(to_bytes(ds)).status is StoreStatus.STORED
    yield archive, originals
    archive.close()


def export(archive: Archive, study: str, **kwargs: object) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    export_study(
        archived_study_files(archive, study),
        lambda name, data: out.__setitem__(name, data),
        **kwargs,  # type: ignore[arg-type]
    )
    return out


def walk_elements(ds: Dataset) -> Iterator[tuple[Dataset, int]]:
    for element in ds:
        yield ds, int(element.tag)
        if element.VR == "SQ":
            for item in element.value:
                yield from walk_elements(item)


def test_profile_actions_nothing_identifying_left_references_resolve(
    stored: tuple[Archive, list[FileDataset]],
) -> None:
    archive, originals = stored
    files = export(archive, str(originals[0].StudyInstanceUID))
    assert len(files) == 4
    out = [dcmread(io.BytesIO(data)) for data in files.values()]

    # The original identity is nowhere in the bytes: no UID, name, ID, date, private value.
    original_uids = {
        str(e.value)
        for ds in originals
        for e in [*ds.iterall(), *ds.file_meta]
        if e.VR == "UI" and e.value and not str(e.value).startswith("1.2.840.10008.")
    }
    assert len(original_uids) >= 8
    for name, data in files.items():
        for secret in [*SECRETS, *(uid.encode() for uid in original_uids)]:
            assert secret not in data, (name, secret)

    # Every attribute the profile names, wherever it was: removed, emptied or dummied.
    by_sop = {str(ds.SOPInstanceUID): ds for ds in out}
    pseudonyms_seen = {str(ds.PatientID) for ds in out}
    assert len(pseudonyms_seen) == 1 and pseudonyms_seen != {PATIENT.id}
    checked = {"X": 0, "Z": 0, "D": 0}
    for original, ds in zip(originals, _match(originals, out, by_sop), strict=True):
        for parent, tag in walk_elements(original):
            action = profile_action(tag)
            if action not in checked or (tag >> 16) % 2:
                continue
            path_found = _find_same_place(original, ds, parent)
            if path_found is None:
                continue  # the enclosing sequence itself was removed or emptied
            if action == "X":
                assert tag not in path_found, hex(tag)
            elif tag in (0x00100010, 0x00100020):  # Z with a consistent pseudonym
                assert str(path_found[tag].value).startswith("ANON-")
            elif action == "Z":
                assert path_found[tag].is_empty, hex(tag)
            elif path_found[tag].VR != "SQ":
                assert path_found[tag].value == _DUMMY[path_found[tag].VR], hex(tag)
            checked[action] += 1
        for element in ds.iterall():
            assert not element.tag.is_private
            assert element.tag.group & 0xFF00 != 0x6000, "overlay kept"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        method = ds.DeidentificationMethodCodeSequence[0]
        assert (method.CodeValue, method.CodingSchemeDesignator) == ("113100", "DCM")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.preamble == b"\0" * 128
    assert all(checked.values()), checked

    # References between instances resolve to the remapped UIDs.
    ct = sorted((ds for ds in out if ds.Modality == "CT"), key=lambda d: int(d.InstanceNumber))
    sr = next(ds for ds in out if ds.Modality == "SR")
    assert len({str(ds.StudyInstanceUID) for ds in out}) == 1
    assert len({str(ds.SeriesInstanceUID) for ds in ct}) == 1
    assert len({str(ds.FrameOfReferenceUID) for ds in ct}) == 1
    assert ct[1].SourceImageSequence[0].ReferencedSOPInstanceUID == ct[0].SOPInstanceUID
    image_item = next(i for i in sr.ContentSequence if i.ValueType == "IMAGE")
    assert image_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ct[0].SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == sr.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == ct[0].SeriesInstanceUID
    text_item = next(i for i in sr.ContentSequence if i.ValueType == "TEXT")
    assert text_item.TextValue == "ANONYMIZED"
    assert all(str(ds.SOPClassUID).startswith("1.2.840.10008.") for ds in out)  # classes kept

    # Pixels byte for byte.
    originals_by_instance = {int(ds.InstanceNumber): ds for ds in originals if ds.Modality == "CT"}
    for ds in ct:
        assert ds.PixelData == originals_by_instance[int(ds.InstanceNumber)].PixelData


def _match(originals: list[FileDataset], out: list[Dataset], by_sop: dict[str, Dataset]) -> list[Dataset]:
    """The exported instance of each original (by modality and instance number)."""
    return [
        next(d for d in out if d.Modality == o.Modality and int(d.InstanceNumber) == int(o.InstanceNumber))
        for o in originals
    ]


def _find_same_place(original: Dataset, exported: Dataset, parent: Dataset) -> Dataset | None:
    """The exported data set at the position ``parent`` has in ``original`` (first items followed)."""
    if parent is original:
        return exported
    for element in original:
        if element.VR != "SQ":
            continue
        for index, item in enumerate(element.value):
            if element.tag not in exported or len(exported[element.tag].value) <= index:
                if _contains(item, parent):
                    return None
                continue
            found = _find_same_place(item, exported[element.tag].value[index], parent)
            if found is not None:
                return found
    return None


def _contains(ds: Dataset, target: Dataset) -> bool:
    return ds is target or any(_contains(item, target) for e in ds if e.VR == "SQ" for item in e.value)


def test_uids_are_consistent_within_an_export_and_unlinkable_across(
    stored: tuple[Archive, list[FileDataset]],
) -> None:
    archive, originals = stored
    study = str(originals[0].StudyInstanceUID)

    def study_uid(files: dict[str, bytes]) -> str:
        return str(dcmread(io.BytesIO(next(iter(files.values())))).StudyInstanceUID)

    first, second = export(archive, study), export(archive, study)
    assert study_uid(first) != study_uid(second)  # a new key per export
    assert study_uid(export(archive, study, key=b"k" * 32)) == study_uid(
        export(archive, study, key=b"k" * 32)
    )
    uid = Pseudonyms(b"x").uid("1.2.3.4")
    assert uid.startswith("2.25.") and len(uid) <= 64 and int(uid[5:]) < 2**128


def test_export_reimports_into_a_fresh_archive(
    stored: tuple[Archive, list[FileDataset]], tmp_path: Path
) -> None:
    archive, originals = stored
    out = tmp_path / "export"
    report = export_study(
        archived_study_files(archive, str(originals[0].StudyInstanceUID)), directory_writer(out)
    )
    assert (report.instances, report.series) == (4, 2)
    fresh = Archive(make_settings(tmp_path / "fresh"))
    try:
        outcomes = [fresh.ingest_path(p) for p in sorted(out.rglob("*.dcm"))]
        assert [o.status for o in outcomes] == [StoreStatus.STORED] * 4, [o.reason for o in outcomes]
        assert len(fresh.stored_instances(report.study_uid)) == 4
    finally:
        fresh.close()


def test_burned_in_annotation_refuses_or_is_left_out(tmp_path: Path) -> None:
    archive = Archive(make_settings(tmp_path / "data"))
    try:
        slices = ct_series(2, patient=PATIENT, study=STUDY, size=32)
        slices[1].BurnedInAnnotation = "YES"
        for ds in slices:
            archive.ingest_bytes(to_bytes(ds))
        study = str(slices[0].StudyInstanceUID)
        written: list[str] = []
        with pytest.raises(BurnedInAnnotationError) as refused:
            export_study(archived_study_files(archive, study), lambda name, _data: written.append(name))
        assert refused.value.sop_instance_uids == [str(slices[1].SOPInstanceUID)]
        assert written == []  # checked before anything is written
        report = export_study(
            archived_study_files(archive, study),
            lambda name, _data: written.append(name),
            leave_out_burned_in=True,
        )
        assert (report.instances, report.left_out) == (1, [str(slices[1].SOPInstanceUID)])
    finally:
        archive.close()


def test_cli_writes_a_zip_and_records_the_export(
    stored: tuple[Archive, list[FileDataset]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, originals = stored
    study = str(originals[0].StudyInstanceUID)
    data_dir = str(archive.settings.data_dir)
    out = tmp_path / "teaching.zip"
    assert main(["export-deidentified", study, "--out", str(out), "--data-dir", data_dir]) == 0
    assert "4 instances in 2 series" in capsys.readouterr().out
    with zipfile.ZipFile(out) as bundle:
        assert len(bundle.namelist()) == 4
        for name in bundle.namelist():
            assert b"Quixote" not in bundle.read(name)
    assert not (tmp_path / ".teaching.zip.part").exists()
    assert main(["export-deidentified", study, "--out", str(out), "--data-dir", data_dir]) == 2  # exists
    folder = tmp_path / "teaching"
    assert main(["export-deidentified", study, "--out", str(folder), "--data-dir", data_dir]) == 0
    assert sorted(p.name for p in folder.rglob("*.dcm")) == [
        "I00001.dcm",
        "I00001.dcm",
        "I00002.dcm",
        "I00003.dcm",
    ]
    assert main(["export-deidentified", "1.2.3", "--out", str(tmp_path / "x"), "--data-dir", data_dir]) == 1
    security = SecurityService(archive.settings)
    try:
        records = [r for r in security.audit.iterate(AuditFilter(event_id="110106"))]
    finally:
        security.close()
    assert len(records) == 2
    assert records[0]["study_uids"] == [study] and records[0]["patient_ids"] == [PATIENT.id]
    assert records[0]["objects"]["deidentified"] == ["yes"] and records[0]["auth_method"] == "cli"


def test_http_export_needs_write_and_is_audited(
    tessera_server_factory: Callable[..., BackgroundServer],
) -> None:
    secure = start_secure(tessera_server_factory)
    server: BackgroundServer = secure.server
    originals = make_study()
    for ds in originals:
        assert server.ctx.archive.ingest_bytes(to_bytes(ds)).ok
    study = str(originals[0].StudyInstanceUID)
    url = f"{secure.url}/api/studies/{study}/deidentified-export"
    assert requests.post(url, timeout=30).status_code == 401
    assert requests.post(url, headers=secure.bearer("viewer"), timeout=30).status_code == 403
    assert requests.post(url, headers=secure.bearer("auditor"), timeout=30).status_code == 403
    response = requests.post(url, headers=secure.bearer("clinician"), timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["X-Tessera-Instances"] == "4"
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        assert len(bundle.namelist()) == 4
        assert all(b"Quixote" not in bundle.read(n) for n in bundle.namelist())
    bad = requests.post(url, params={"burned_in": "maybe"}, headers=secure.bearer("clinician"), timeout=30)
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"
    missing = requests.post(
        f"{secure.url}/api/studies/1.2.3/deidentified-export",
        headers=secure.bearer("administrator"),
        timeout=30,
    )
    assert missing.status_code == 404
    records = list(security_of(server.ctx).audit.iterate(AuditFilter(event_id="110106")))
    ok = [r for r in records if r["outcome"] == 0]
    assert len(ok) == 1 and ok[0]["username"] == "clinician" and ok[0]["study_uids"] == [study]
    assert ok[0]["patient_ids"] == [PATIENT.id] and "deidentified-export" in ok[0]["resource"]


def test_http_export_refuses_burned_in(tessera_server_factory: Callable[..., BackgroundServer]) -> None:
    server = tessera_server_factory()
    slices = ct_series(2, patient=PATIENT, study=STUDY, size=32)
    slices[0].BurnedInAnnotation = "YES"
    for ds in slices:
        assert server.ctx.archive.ingest_bytes(to_bytes(ds)).ok
    url = f"{server.url}/api/studies/{slices[0].StudyInstanceUID}/deidentified-export"
    refused = requests.post(url, timeout=30)
    assert refused.status_code == 409
    assert refused.json()["burned_in_instances"] == [str(slices[0].SOPInstanceUID)]
    assert "Content-Disposition" not in refused.headers
    partial = requests.post(url, params={"burned_in": "leave-out"}, timeout=30)
    assert partial.status_code == 200 and partial.headers["X-Tessera-Left-Out"] == "1"


def test_actions_come_from_the_installed_annex_e_table() -> None:
    """The profile is the package's 2026c table: a few rows by category, resolved, and not empty."""
    assert ANNEX_E_EDITION == "dicomfields_2026c"
    installed = dicom_anonymization_database_selector(ANNEX_E_EDITION)
    rows = {
        # tag: (package category, resolved action)
        0x00100010: ("Z_TAGS", "Z"),  # Patient's Name
        0x00100020: ("Z_D_TAGS", "D"),  # Patient ID (Z in 2023, Z/D since 2024b)
        0x0020000D: ("U_TAGS", "U"),  # Study Instance UID
        0x00080080: ("X_Z_D_TAGS", "D"),  # Institution Name
        0x00080050: ("Z_TAGS", "Z"),  # Accession Number
        0x00081010: ("X_Z_D_TAGS", "D"),  # Station Name
        0x00081140: ("X_Z_U_STAR_TAGS", "U*"),  # Referenced Image Sequence
        0x300A0054: ("U_TAGS", "U"),  # Table Top Position Alignment UID: 2026c only
        0x00181010: ("X_TAGS", "X"),  # Secondary Capture Device ID: 2026c only
        0x00100012: ("X_TAGS", "X"),  # Name to Use: 2026c only
    }
    for tag, (category, action) in rows.items():
        assert (tag >> 16, tag & 0xFFFF) in installed[category], hex(tag)
        assert profile_action(tag) == action, hex(tag)
    older = dicom_anonymization_database_selector("dicomfields_2023")["ALL_TAGS"]
    assert {(0x300A, 0x0054), (0x0018, 0x1010), (0x0010, 0x0012)}.isdisjoint(older)
    assert len(BASIC_PROFILE) == len({t for t in installed["ALL_TAGS"] if len(t) == 2}) >= 650
    assert profile_action(0x00280010) is None  # Rows: not in the table, kept

    # Repeating groups by mask: every curve group whole, Overlay Data/Comments of every plane,
    # and the rest of a plane whose data goes.
    assert len(REPEATING_RULES) == 3
    for tag in (0x50000000, 0x501E3000, 0x60003000, 0x601E4000, 0x60020010, 0x601E0102):
        assert profile_action(tag) == "X", hex(tag)
    for tag in (0x00603000, 0x70003000, 0x40003000):
        assert profile_action(tag) is None, hex(tag)
