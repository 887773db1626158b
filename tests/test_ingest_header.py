"""The ingest-time DICOM JSON header: identical to pydicom's ``to_json_dict``, whatever the input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from sample_data.radiology import ct_series
from server.archive.dicomfile import BULK_THRESHOLD
from server.archive.dicomjson import dataset_json
from tests.dicom_cases import to_bytes


def _reference(ds: Dataset) -> dict[str, object]:
    """What the archive stored before: pydicom's JSON, large top-level binaries as BulkDataURIs."""
    document = ds.to_json_dict(bulk_data_threshold=1 << 62)
    for element in ds:
        binary = element.VR in {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
        if binary and element.value is not None and len(element.value) > BULK_THRESHOLD:
            key = f"{element.tag:08X}"
            document[key] = {"vr": element.VR, "BulkDataURI": f"bulk/{key}"}
    return document


def _same_as_pydicom(data: bytes) -> dict[str, object]:
    """Both JSONs from separately parsed copies (conversion caches values in the data set)."""
    ours = dataset_json(dcmread(io.BytesIO(data), stop_before_pixels=True), BULK_THRESHOLD)
    theirs = _reference(dcmread(io.BytesIO(data), stop_before_pixels=True))
    assert json.dumps(ours, separators=(",", ":")) == json.dumps(theirs, separators=(",", ":"))
    return ours


def _file(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    out = FileDataset("", ds, file_meta=meta, preamble=b"\0" * 128)
    out.SOPClassUID = meta.MediaStorageSOPClassUID
    out.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


def test_generated_set_matches_pydicom(varied_files: list[Path]) -> None:
    for path in varied_files:
        _same_as_pydicom(path.read_bytes())


def _awkward() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Anna=ミュラー^アンナ=myura^anna\\Doe^J"
    ds.ReferringPhysicianName = ""
    ds.PatientID = "  padded  "
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.StudyDescription = "Bücher \\ zwei"
    ds.ImageComments = "Text with a backslash \\ kept, trailing spaces   "
    ds.PixelSpacing = ["0.5", "1e-3"]
    ds.SliceLocation = "-12.50"
    ds.InstanceNumber = "+007"
    ds.ReferencedFrameNumber = ["1", "2"]
    ds.Rows, ds.Columns = 2, 2
    ds.WindowCenter = ""
    ds.add_new(0x00181310, "US", [0, 2, 3, 0])  # AcquisitionMatrix
    ds.add_new(0x00186011, "SQ", Sequence([Dataset()]))
    ds.add_new(0x00280106, "US", 0)
    ds.add_new(0x00189089, "FD", [0.1, -0.0, 1e300])
    ds.add_new(0x00181060, "DS", "  ")
    ds.add_new(0x00540081, "US", 3)
    ds.add_new(0x00720002, "SH", "A\\")
    ds.add_new(0x00091010, "LO", "private")
    ds.add_new(0x00090010, "LO", "VENDOR")
    ds.add_new(0x00091011, "OB", b"\x01\x02\x03")
    ds.add_new(0x00282000, "OB", bytes(range(256)) * 8)  # ICC profile: bulk data at the top level
    ds.add_new(0x00081140, "SQ", Sequence([Dataset()]))
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence[0].add_new(0x00282000, "OB", b"\0" * 2000)  # nested: inlined
    ds.add_new(0x00209165, "AT", [0x00100010, 0x00200013])
    ds.add_new(0x00080054, "AE", " ARCHIVE ")
    ds.add_new(0x00081190, "UR", "http://example.com/x  ")
    ds.add_new(0x00189219, "SS", -5)
    ds.add_new(0x00181020, "UN", b"V1.0")  # SoftwareVersions sent as UN
    ds.add_new(0x00091012, "UN", b"\x00\x01")
    ds.StudyInstanceUID = "1.2.3.4\0"
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_awkward_values_match_pydicom(syntax: str) -> None:
    document = _same_as_pydicom(_file(_awkward(), syntax))
    assert document["00100010"]["Value"][0]["Ideographic"] == "ミュラー^アンナ"  # type: ignore[index]
    assert document["00282000"] == {"vr": "OB", "BulkDataURI": "bulk/00282000"}


@pytest.mark.parametrize(
    "charset",
    ["", "ISO_IR 100", "ISO_IR 192", "GB18030", "\\ISO 2022 IR 87", "ISO 2022 IR 6\\ISO 2022 IR 100"],
)
def test_character_sets_match_pydicom(charset: str) -> None:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう" if "87" in charset else "Gérard^Ève"
    ds.InstitutionName = "Hôpital"
    if charset in ("", "ISO_IR 100"):
        ds.PatientName, ds.InstitutionName = "Gerard^Eve", "Hopital"
    _same_as_pydicom(_file(ds))


def test_odd_numbers_fall_back_to_pydicom() -> None:
    ds = Dataset()
    ds.add_new(0x00200013, "IS", "1.0")  # pydicom accepts a decimal integer string
    ds.add_new(0x00201041, "DS", "-1.5e+2\\.5")
    _same_as_pydicom(_file(ds))
    ds.add_new(0x00201041, "DS", "1\\\\2")  # an empty number among several: pydicom refuses, so do we
    data = _file(ds)
    with pytest.raises(ValueError):
        _reference(dcmread(io.BytesIO(data), stop_before_pixels=True))
    with pytest.raises(ValueError):
        dataset_json(dcmread(io.BytesIO(data), stop_before_pixels=True), BULK_THRESHOLD)


def test_ct_series_matches_pydicom() -> None:
    for ds in ct_series(3):
        _same_as_pydicom(to_bytes(ds))


def test_plain_elements_are_not_converted_by_pydicom() -> None:
    """The point of the module: common elements go from bytes to JSON without a DataElement."""
    from pydicom.dataelem import RawDataElement

    ds = dcmread(io.BytesIO(to_bytes(ct_series(1)[0])), stop_before_pixels=True)
    raw_before = {tag for tag, element in ds._dict.items() if isinstance(element, RawDataElement)}
    dataset_json(ds, BULK_THRESHOLD)
    converted = {tag for tag in raw_before if not isinstance(ds._dict[tag], RawDataElement)}
    assert len(raw_before) > 30
    assert all(ds._dict[tag].VR == "SQ" for tag in converted), sorted(converted)


INDEXED_TEXT = [
    "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
    "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription", "Modality",
    "SeriesDescription", "BodyPartExamined", "Laterality", "SeriesDate", "SeriesTime",
    "PerformedProcedureStepStartDate", "PhotometricInterpretation", "ImageType", "ImageLaterality",
    "ViewPosition", "ContentDate", "ContentTime", "InstanceNumber", "PixelSpacing",
]  # fmt: skip
INDEXED_NUMBERS = ["InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated",
                   "SeriesNumber", "ReferencedFrameNumber", "PixelSpacing", "PatientID"]  # fmt: skip


def _pydicom_number(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _index_values_match_pydicom(data: bytes) -> None:
    from server.archive.dicomfile import ParsedInstance, _dataset_text

    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    parsed = ParsedInstance(dcmread(io.BytesIO(data), stop_before_pixels=True), "", None, False)
    for keyword in INDEXED_TEXT:
        for limit in (324, 8):
            assert parsed.text(keyword, limit) == _dataset_text(ds, keyword, limit), keyword
    for keyword in INDEXED_NUMBERS:
        assert parsed.integer(keyword) == _pydicom_number(ds, keyword), keyword


def test_index_values_read_from_json_match_pydicom(varied_files: list[Path]) -> None:
    for path in varied_files:
        _index_values_match_pydicom(path.read_bytes())
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        _index_values_match_pydicom(_file(_awkward(), syntax))
