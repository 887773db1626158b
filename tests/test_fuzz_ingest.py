"""Fuzzing the one ingest path: whatever bytes arrive, the archive stores them or refuses them.

Two generators feed ``Archive.ingest_bytes``: data sets built by hypothesis from the attributes
ingest validates (UIDs, geometry, transfer syntax, text in odd character sets, nested
sequences), and byte-level mutations of valid files (bit flips, overwritten lengths,
insertions, deletions, truncation). Every answer must be a ``StoreOutcome``, never an
exception: a refusal carries a DICOM failure status and a reason, a stored instance is
readable back, and no temp file is left behind. Profiles: tests/fuzz/profiles.py.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from server.archive.archive import Archive, StoreOutcome, StoreStatus
from tests.conftest import make_settings
from tests.fuzz.profiles import examples
from tests.fuzz.seeds import seed_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on every odd value

SLOW_INGEST_SECONDS = 5.0
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def fuzz_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = Archive(make_settings(tmp_path_factory.mktemp("fuzz-ingest") / "data"))
    yield archive
    archive.close()


def check_outcome(archive: Archive, data: bytes) -> StoreOutcome:
    """Ingest ``data`` and check the answer is one of the documented ones."""
    started = time.perf_counter()
    outcome = archive.ingest_bytes(data)  # any exception fails the test
    elapsed = time.perf_counter() - started
    assert isinstance(outcome, StoreOutcome)
    if currently_in_test_context():
        event(outcome.status.value)  # shown by --hypothesis-show-statistics
    assert elapsed < SLOW_INGEST_SECONDS, f"ingest of {len(data)} bytes took {elapsed:.1f} s"
    if outcome.status is StoreStatus.REJECTED:
        assert outcome.failure_status != 0, outcome
        assert outcome.reason, outcome
    else:
        stored = archive.instance_by_uid(outcome.sop_instance_uid)
        assert stored is not None, outcome
        assert stored.path.is_file()
        header = archive.headers([outcome.sop_instance_uid])[outcome.sop_instance_uid]
        assert isinstance(json.loads(header), dict)
    assert list(archive.blobs.tmp_dir.glob("*.part")) == [], "ingest left a temp file behind"
    return outcome


# -- byte-level mutations of valid files ---------------------------------------------------------

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(seed_files()))
    data = bytearray(seed)
    header_end = min(len(data), 2048)  # most structure (meta, lengths, VRs) is in the first 2 KB
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        limit = draw(st.sampled_from([header_end, len(data)]))
        pos = draw(st.integers(0, max(0, min(limit, len(data)) - 1)))
        op = draw(st.sampled_from(["flip", "byte", "int", "insert", "delete", "truncate", "repeat"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
            data[pos : pos + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
        else:
            length = draw(st.integers(1, 128))
            data[pos:pos] = data[pos : pos + length] * draw(st.integers(2, 8))
    return bytes(data)


@settings(max_examples=examples(150))
@given(data=mutated())
def test_mutated_files_are_stored_or_refused(fuzz_archive: Archive, data: bytes) -> None:
    check_outcome(fuzz_archive, data)


@settings(max_examples=examples(40))
@given(data=st.binary(max_size=600) | st.binary(max_size=400).map(lambda b: b"\0" * 128 + b"DICM" + b))
def test_arbitrary_bytes_are_refused(fuzz_archive: Archive, data: bytes) -> None:
    assert check_outcome(fuzz_archive, data).status is StoreStatus.REJECTED


# -- data sets built from the attributes ingest validates ----------------------------------------

UIDS = st.one_of(
    st.from_regex(r"1\.2\.826\.0\.1\.3680043\.10\.[1-9][0-9]{0,20}(\.[1-9][0-9]{0,5}){0,3}", fullmatch=True),
    st.sampled_from(["", "1.2.abc", "0.0", "1." * 40, "1.2.3\\1.2.4"]),
    st.text(st.characters(max_codepoint=0x7F, exclude_categories=["Cs"]), max_size=70),
)
UTF8_TEXT = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        ["Doe^John", "山田^太郎=ヤマダ^タロウ", "<script>alert(1)</script>", "\\" * 10, "a" * 400]
    ),
)
# With any other declared character set, text is written as its bytes allow: ASCII.
ASCII_TEXT = st.text(st.characters(max_codepoint=0x7F, exclude_categories=["Cs"]), max_size=80)
CHARSETS = st.sampled_from(
    ["", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "GB18030", "BOGUS", "\\ISO_IR 100"]
)
SYNTAXES = st.sampled_from(
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        RLELossless,
        "1.2.3.4.5",
    ]
)


def _nested(depth: int) -> Sequence:
    item = Dataset()
    item.CodeValue = "T-D0050"
    if depth > 1:
        item.ReferencedImageSequence = _nested(depth - 1)
    return Sequence([item])


@st.composite
def built_dataset(draw: st.DrawFn) -> bytes:
    syntax = draw(SYNTAXES)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = draw(st.sampled_from([CT_IMAGE, SECONDARY_CAPTURE]) | UIDS)
    meta.MediaStorageSOPInstanceUID = draw(UIDS)
    ds = FileDataset(
        "",
        Dataset(),
        file_meta=meta,
        preamble=draw(st.sampled_from([b"\0" * 128, b"II*\0" * 32, b"MZ" * 64])),
        is_implicit_VR=syntax == ImplicitVRLittleEndian,
        is_little_endian=syntax != ExplicitVRBigEndian,
    )
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = draw(st.sampled_from([meta.MediaStorageSOPInstanceUID]) | UIDS)
    ds.StudyInstanceUID = draw(UIDS)
    ds.SeriesInstanceUID = draw(UIDS)
    charset = draw(CHARSETS)
    if charset:
        ds.SpecificCharacterSet = charset
    text = UTF8_TEXT if charset == "ISO_IR 192" else ASCII_TEXT
    for keyword in (
        "PatientID",
        "StudyDescription",
        "SeriesDescription",
        "InstitutionName",
        "BodyPartExamined",
    ):
        if draw(st.booleans()):
            setattr(ds, keyword, draw(text))
    ds.PatientName = draw(text)
    ds.Modality = draw(st.sampled_from(["CT", "SM", "US", "MG", "", "??"]))
    for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
        if draw(st.booleans()):
            setattr(
                ds, keyword, draw(st.sampled_from(["20240229", "20241301", "", "1"]) | st.text(max_size=10))
            )
    if draw(st.booleans()):
        ds.ReferencedStudySequence = _nested(draw(st.sampled_from([1, 2, 5, 24])))
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 0xFFFF))
        ds.Columns = draw(st.integers(0, 0xFFFF))
        ds.BitsAllocated = draw(st.sampled_from([0, 1, 8, 12, 16, 32, 64, 255]))
        ds.BitsStored = draw(st.integers(0, 0xFFFF))
        ds.HighBit = draw(st.integers(0, 0xFFFF))
        ds.SamplesPerPixel = draw(st.sampled_from([0, 1, 3, 4, 7]))
        ds.PixelRepresentation = draw(st.integers(0, 1))
        ds.PhotometricInterpretation = draw(
            st.sampled_from(["MONOCHROME2", "RGB", "YBR_FULL_422", "PALETTE COLOR"])
        )
        if draw(st.booleans()):
            ds.NumberOfFrames = draw(st.sampled_from(["1", "0", "-3", "2147483648", "99999999"]))
        if syntax in (JPEGBaseline8Bit, RLELossless):
            fragments = draw(st.lists(st.binary(max_size=64), max_size=4))
            item = b"".join(
                b"\xfe\xff\x00\xe0" + (len(f) + len(f) % 2).to_bytes(4, "little") + f + b"\0" * (len(f) % 2)
                for f in fragments
            )
            bot = draw(st.sampled_from([b"\xfe\xff\x00\xe0\0\0\0\0", b""]))
            ds.add_new(0x7FE00010, "OB", bot + item + b"\xfe\xff\xdd\xe0\0\0\0\0")
            ds["PixelData"].is_undefined_length = True
        else:
            size = draw(st.integers(0, 4096))
            ds.add_new(0x7FE00010, "OW" if ds.BitsAllocated > 8 else "OB", b"\x5a" * (size + size % 2))
    buffer = io.BytesIO()
    try:
        ds.save_as(
            buffer,
            implicit_vr=syntax == ImplicitVRLittleEndian,
            little_endian=syntax != ExplicitVRBigEndian,
            enforce_file_format=draw(st.booleans()),
        )
    except Exception:  # pydicom refuses to write some combinations; those are not files anyone can send
        assume(False)
    return buffer.getvalue()


@settings(max_examples=examples(120), suppress_health_check=list(HealthCheck))
@given(data=built_dataset())
def test_built_data_sets_are_stored_or_refused(fuzz_archive: Archive, data: bytes) -> None:
    check_outcome(fuzz_archive, data)


def test_seeds_are_valid(tmp_path: Path) -> None:
    """The mutation seeds are themselves stored: otherwise the fuzzing above tests only refusals."""
    archive = Archive(make_settings(tmp_path / "data"))
    try:
        for data in seed_files():
            assert archive.ingest_bytes(data).status is StoreStatus.STORED
    finally:
        archive.close()


def test_text_with_nul_is_stored_or_refused_on_postgresql(postgres_database: str, tmp_path: Path) -> None:
    """Found by the built-data-set fuzzer: an embedded NUL in an indexed text attribute."""
    from pydicom.uid import generate_uid

    from tests.dicom_cases import ct_bytes

    archive = Archive(make_settings(tmp_path / "data", postgres_database))
    try:
        data = ct_bytes(
            StudyDescription="A\x00B",
            SOPInstanceUID=generate_uid(),
            StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
        )
        check_outcome(archive, data)
    finally:
        archive.close()
