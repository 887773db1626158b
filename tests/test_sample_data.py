"""The radiology sample data: every file reads, decodes and says what it claims to be."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.pixels import apply_color_lut, apply_voi_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from sample_data import radiology
from sample_data.demo import write_demo_archive

# series folder -> (transfer syntax, files, pixel_array shape, dtype)
EXPECTED: dict[str, tuple[UID, int, tuple[int, ...], type]] = {
    "TES-0001/ACC-1001/01-CT": (ExplicitVRLittleEndian, 5, (128, 128), np.int16),
    "TES-0001/ACC-1001/02-CT": (JPEG2000Lossless, 5, (128, 128), np.int16),
    "TES-0001/ACC-1001/03-CT": (RLELossless, 5, (128, 128), np.int16),
    "TES-0001/ACC-1001/04-OT": (ExplicitVRLittleEndian, 1, (128, 128, 3), np.uint8),
    "TES-0002/ACC-1002/01-MR": (ImplicitVRLittleEndian, 3, (128, 128), np.uint16),
    "TES-0002/ACC-1002/02-MR": (JPEGLosslessSV1, 3, (128, 128), np.uint16),
    "TES-0003/ACC-1003/01-CR": (DeflatedExplicitVRLittleEndian, 1, (256, 208), np.uint16),
    "TES-0004/ACC-1004/01-US": (JPEGBaseline8Bit, 1, (10, 120, 160, 3), np.uint8),
    "TES-0004/ACC-1004/02-US": (ExplicitVRLittleEndian, 1, (120, 160), np.uint8),
}

COMMON_ATTRIBUTES = [
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "StudyID", "SeriesInstanceUID", "Modality", "SeriesNumber",
    "SeriesDescription", "BodyPartExamined", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
    "ContentDate", "ContentTime", "ImageType", "SamplesPerPixel", "PhotometricInterpretation",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PixelData",
]  # fmt: skip
CROSS_SECTIONAL_ATTRIBUTES = [
    "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "PatientPosition", "WindowCenter", "WindowWidth",
]  # fmt: skip
META_ATTRIBUTES = [
    "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID",
    "ImplementationClassUID",
]  # fmt: skip

CASES: dict[str, Callable[[], FileDataset]] = {
    "ct": lambda: radiology.ct_series(1)[0],
    "mr": lambda: radiology.mr_series(1)[0],
    "cr": radiology.cr_image,
    "us": lambda: radiology.us_multiframe(4, transfer_syntax_uid=ExplicitVRLittleEndian),
    "sc": radiology.rgb_secondary_capture,
    "palette": radiology.palette_color_image,
}
ALL_SYNTAXES = [
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    RLELossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGBaseline8Bit,
]  # fmt: skip
VALID = {
    "ct": set(ALL_SYNTAXES) - {JPEGBaseline8Bit},
    "mr": set(ALL_SYNTAXES) - {JPEGBaseline8Bit},
    "cr": set(ALL_SYNTAXES) - {JPEGBaseline8Bit},
    "us": set(ALL_SYNTAXES) - {JPEGLosslessSV1},
    "sc": set(ALL_SYNTAXES) - {JPEGLosslessSV1},
    "palette": set(ALL_SYNTAXES) - {JPEGBaseline8Bit},
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("varied")
    return root, radiology.varied_set(root)


def _round_trip(ds: FileDataset) -> FileDataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def test_files_are_where_and_what_they_claim(archive: tuple[Path, list[Path]]) -> None:
    root, paths = archive
    by_series: dict[str, list[Path]] = {}
    for path in paths:
        by_series.setdefault(path.parent.relative_to(root).as_posix(), []).append(path)
    assert set(by_series) == set(EXPECTED)
    for series, (syntax, count, shape, dtype) in EXPECTED.items():
        assert len(by_series[series]) == count, series
        for path in by_series[series]:
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == syntax, path
            pixels = ds.pixel_array
            assert pixels.shape == shape, path
            assert pixels.dtype == dtype, path
            assert np.ptp(pixels) > 0, f"{path} is blank"


def test_required_attributes_present(archive: tuple[Path, list[Path]]) -> None:
    _, paths = archive
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.preamble == b"\0" * 128
        for keyword in META_ATTRIBUTES:
            assert keyword in ds.file_meta, (path, keyword)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        missing = [k for k in COMMON_ATTRIBUTES if k not in ds]
        if ds.Modality in ("CT", "MR"):
            missing += [k for k in CROSS_SECTIONAL_ATTRIBUTES if k not in ds]
        assert not missing, (path, missing)
        if ds.Modality == "CT":
            assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
            assert len(ds.WindowCenter) == len(ds.WindowWidth) == 2
            assert list(ds.WindowCenterWidthExplanation) == ["SOFT TISSUE", "LUNG"]
            assert ds.PixelRepresentation == 1
        if ds.Modality == "US":
            assert ds.Laterality == "R"
            region = ds.SequenceOfUltrasoundRegions[0]
            assert region.PhysicalUnitsXDirection == region.PhysicalUnitsYDirection == 3
            assert region.PhysicalDeltaX > 0 and region.PhysicalDeltaY > 0


def test_sop_instance_uids_unique_and_studies_grouped(archive: tuple[Path, list[Path]]) -> None:
    _, paths = archive
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    studies = {(ds.PatientID, ds.StudyInstanceUID) for ds in datasets}
    assert len(studies) == len({ds.PatientID for ds in datasets}) == 4


def test_character_sets_round_trip(archive: tuple[Path, list[Path]]) -> None:
    _, paths = archive
    names = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        names[str(ds.PatientName)] = ds.SpecificCharacterSet
    assert names["Müller^Anna"] == "ISO_IR 192"
    assert names["O'Brien^<b>Sean</b>"] == "ISO_IR 100"


def test_us_jpeg_baseline_frames_match_the_phantom(archive: tuple[Path, list[Path]]) -> None:
    root, _ = archive
    ds = pydicom.dcmread(root / "TES-0004/ACC-1004/01-US/0001.dcm")
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.LossyImageCompression == "01"
    assert (ds.FrameTime, ds.CineRate, ds.NumberOfFrames) == (40, 25, 10)
    assert ds.FrameIncrementPointer == 0x00181063

    buffer = io.BytesIO(ds.PixelData)
    offsets = parse_basic_offsets(buffer)
    fragments = list(generate_fragments(buffer))
    assert len(offsets) == len(fragments) == 10  # a Basic Offset Table, one fragment a frame
    for fragment in fragments:
        sof = fragment.find(b"\xff\xc0")  # baseline DCT
        assert sof > 0
        sampling = (fragment[sof + 11], fragment[sof + 14], fragment[sof + 17])
        assert sampling == (0x21, 0x11, 0x11)  # 4:2:2 chroma

    source = radiology.us_multiframe(transfer_syntax_uid=ExplicitVRLittleEndian).pixel_array
    decoded = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    error = np.abs(decoded.astype(int) - source.astype(int)).mean()
    assert error < 3.0, error


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=lambda uid: UID(uid).keyword)
def test_encode_round_trips(case: str, syntax: UID) -> None:
    native = CASES[case]()
    assert set(radiology.valid_transfer_syntaxes(native)) == VALID[case]
    if syntax not in VALID[case]:
        with pytest.raises(ValueError):
            radiology.encode(native, syntax)
        return
    read = _round_trip(radiology.encode(native, syntax))
    assert read.file_meta.TransferSyntaxUID == syntax
    assert read.SOPInstanceUID == native.SOPInstanceUID
    expected, actual = native.pixel_array, read.pixel_array
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if syntax == JPEGBaseline8Bit:
        assert np.abs(actual.astype(int) - expected.astype(int)).mean() < 3.0
    else:
        np.testing.assert_array_equal(actual, expected)


def test_cr_grey_levels_come_from_a_voi_lut() -> None:
    ds = _round_trip(radiology.cr_image(transfer_syntax_uid=DeflatedExplicitVRLittleEndian))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert (ds.BitsAllocated, ds.BitsStored) == (16, 12)
    assert "WindowCenter" not in ds and "WindowWidth" not in ds
    assert list(ds.VOILUTSequence[0].LUTDescriptor) == [4096, 0, 12]
    shown = apply_voi_lut(ds.pixel_array, ds)
    assert 0 <= shown.min() < shown.max() <= 4095
    assert np.ptp(shown) > 2000  # the LUT spreads the exposure range


def test_palette_colour_has_real_lookup_tables() -> None:
    ds = _round_trip(radiology.palette_color_image())
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    for colour in ("Red", "Green", "Blue"):
        assert list(ds[f"{colour}PaletteColorLookupTableDescriptor"].value) == [256, 0, 16]
    rgb = apply_color_lut(ds.pixel_array, ds)
    assert rgb.shape == (120, 160, 3)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert ((red > green) & (red > blue)).any()  # the colour-flow part is coloured
    assert ((red == green) & (green == blue) & (red > 0)).any()  # the B-mode part is grey


def test_reruns_give_identical_files(archive: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, paths = archive
    again = radiology.varied_set(tmp_path)
    assert [p.relative_to(tmp_path) for p in again] == [p.relative_to(root) for p in paths]
    for first, second in zip(paths, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first


def test_whole_set_is_small(archive: tuple[Path, list[Path]]) -> None:
    _, paths = archive
    assert sum(p.stat().st_size for p in paths) < 5 * 1024 * 1024


def test_demo_archive_has_a_patient_with_two_studies(tmp_path: Path) -> None:
    paths = write_demo_archive(tmp_path, specialties=False)
    studies: dict[str, set[str]] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        studies.setdefault(ds.PatientID, set()).add(ds.StudyInstanceUID)
    assert len(studies["TES-0001"]) == 2


def test_encode_decodes_compressed_input_first() -> None:
    stored = radiology.us_multiframe(3)  # JPEG baseline YBR_FULL_422
    native = radiology.encode(stored, ExplicitVRLittleEndian)
    assert native.PhotometricInterpretation == "RGB"
    assert native.LossyImageCompression == "01"  # once lossy, always lossy
    rle = _round_trip(radiology.encode(stored, RLELossless))
    np.testing.assert_array_equal(rle.pixel_array, native.pixel_array)
