"""Bounds checked before allocation: deep sequences, lying lengths, deflate and codestream bombs,
Pillow's guard and rendered region sizes (issue 8, "Hostile input and failures")."""

from __future__ import annotations

import copy
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from sample_data.radiology import ct_series, encode, rgb_secondary_capture
from server.archive.archive import Archive, StoreStatus
from server.archive.dicomfile import CANNOT_UNDERSTAND
from server.archive.structure import MAX_SEQUENCE_DEPTH
from server.config import Settings
from server.serve import BackgroundServer
from tests.conftest import make_settings
from tests.dicom_cases import to_bytes


def _nested(depth: int) -> bytes:
    ds = ct_series(1, size=32)[0]
    item = Dataset()
    item.CodeMeaning = "innermost"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ContentSequence = [item]
        item = outer
    ds.ContentSequence = [item]
    return to_bytes(ds)


@pytest.fixture
def archive(sqlite_settings: Settings) -> Iterator[Archive]:
    """These checks run before the database is touched: SQLite is enough."""
    archive = Archive(sqlite_settings)
    yield archive
    archive.close()


def test_sequences_nested_too_deep_are_refused(archive: Archive) -> None:
    fine = archive.ingest_bytes(_nested(6))
    assert fine.status is StoreStatus.STORED, fine.reason
    deep = archive.ingest_bytes(_nested(MAX_SEQUENCE_DEPTH + 4))
    assert deep.status is StoreStatus.REJECTED
    assert deep.failure_status == CANNOT_UNDERSTAND
    assert "nested more than 16 levels" in (deep.reason or "")
    assert archive.reconcile().clean


def _with_lying_element(length: int) -> bytes:
    """A CT slice with a private OB element, before Pixel Data, declaring ``length`` bytes."""
    data = to_bytes(ct_series(1, size=32)[0])
    at = data.index(b"\xe0\x7f\x10\x00")
    element = b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<I", length) + b"\0" * 64
    return data[:at] + element + data[at:]


def test_element_longer_than_the_file_is_refused_without_allocating_it(archive: Archive) -> None:
    data = _with_lying_element(0x7FFFFFF0)
    tracemalloc.start()
    try:
        outcome = archive.ingest_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status is StoreStatus.REJECTED
    assert "(0009,1010) declares 2147483632 bytes" in (outcome.reason or "")
    assert peak < 64 * 1024 * 1024, f"{peak} bytes allocated for a lying length"
    assert archive.reconcile().clean


def _deflate_bomb(inflated_bytes: int) -> bytes:
    """A valid deflated data set whose private OB element inflates to ``inflated_bytes``."""
    ds = ct_series(1, size=32)[0]
    del ds.PixelData
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    small = DicomBytesIO()
    small.is_little_endian, small.is_implicit_VR = True, False
    write_dataset(small, copy.deepcopy(ds))  # explicit VR little endian body, no meta
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(small.getvalue())
    body += compressor.compress(b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<I", inflated_bytes))
    chunk = bytes(1 << 20)
    for _ in range(inflated_bytes >> 20):
        body += compressor.compress(chunk)
    body += compressor.flush()
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, ds.file_meta, enforce_standard=True)
    return header.getvalue() + body


def test_deflate_bomb_is_refused_within_its_budget(tmp_path: Path) -> None:
    archive = Archive(make_settings(tmp_path / "data", max_pixel_bytes=1 << 20))
    try:
        bomb = _deflate_bomb(96 << 20)  # 96 MiB of zeros, about 100 KB on the wire
        assert len(bomb) < 200_000
        tracemalloc.start()
        outcome = archive.ingest_bytes(bomb)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert outcome.status is StoreStatus.REJECTED
        assert "inflates to more than" in (outcome.reason or ""), outcome.reason
        assert peak < 48 * 1024 * 1024
        honest = _deflate_bomb(1 << 20)  # 1 MiB inflated: inside the budget, stored
        assert archive.ingest_bytes(honest).status is StoreStatus.STORED
        assert archive.reconcile().clean
    finally:
        archive.close()


# -- compressed frames whose codestream lies about its size ---------------------------------------


def _patch_jpeg_sof(frame: bytes, width: int, height: int) -> bytes:
    at = frame.index(b"\xff\xc0")
    return frame[: at + 5] + struct.pack(">HH", height, width) + frame[at + 9 :]


def _patch_j2k_siz(frame: bytes, width: int, height: int) -> bytes:
    at = frame.index(b"\xff\x51")
    return frame[: at + 6] + struct.pack(">II", width, height) + frame[at + 14 :]


def _patch_rle_segments(frame: bytes, width: int, height: int) -> bytes:
    return struct.pack("<I", 3) + frame[4:]


def _lying(syntax: str, patch: Callable[[bytes, int, int], bytes]) -> FileDataset:
    from pydicom.encaps import encapsulate, generate_frames

    if syntax == JPEGBaseline8Bit:
        ds = encode(rgb_secondary_capture(size=64), syntax)
    else:
        ds = encode(ct_series(1, size=64)[0], syntax)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([patch(frame, 60000, 60000)])
    return ds


@pytest.mark.parametrize(
    ("syntax", "patch", "said"),
    [
        (JPEGBaseline8Bit, _patch_jpeg_sof, "JPEG codestream declares 60000x60000 pixels"),
        (JPEG2000Lossless, _patch_j2k_siz, "JPEG 2000 codestream declares 60000x60000 pixels"),
        (RLELossless, _patch_rle_segments, "RLE header declares 3 segments"),
    ],
)
def test_codestream_declaring_another_size_is_refused_before_decoding(
    tessera_server: BackgroundServer, syntax: str, patch: Callable[[bytes, int, int], bytes], said: str
) -> None:
    ds = _lying(syntax, patch)
    assert tessera_server.ctx.archive.ingest_bytes(to_bytes(ds)).status is StoreStatus.STORED
    base = (
        f"{tessera_server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    for url, accept in ((base + "/rendered", "image/jpeg"), (base + "/frames/1", "application/octet-stream")):
        response = requests.get(url, headers={"Accept": accept}, timeout=30)
        assert response.status_code == 422, (url, response.status_code)
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert said in response.json()["detail"], response.json()
    assert requests.get(tessera_server.url + "/api/health", timeout=10).status_code == 200


def test_pillow_bomb_guard_is_set_explicitly() -> None:
    from PIL import Image

    import server.imaging.frames  # noqa: F401  (setting the guard is part of importing the decoders)
    from server.imaging.codecs import MAX_IMAGE_PIXELS

    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 1 << 28


def test_rendered_region_is_bounded_by_the_image_before_decoding(
    tessera_server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = ct_series(1, size=64)[0]
    tessera_server.ctx.archive.ingest_bytes(to_bytes(ds))
    decoded: list[int] = []
    import server.dicomweb.rendered as rendered

    real = rendered.decode_frame

    def counting(*args: Any) -> Any:
        decoded.append(1)
        return real(*args)

    monkeypatch.setattr(rendered, "decode_frame", counting)
    url = (
        f"{tessera_server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered"
    )
    for viewport in ("32,32,0,0,100000000,100000000", "32,32,60,60,10,10", "100000,100000"):
        response = requests.get(url, params={"viewport": viewport}, timeout=30)
        assert response.status_code == 400, viewport
        assert response.headers["Content-Type"].startswith("application/problem+json")
    assert decoded == [], "a region outside the image was decoded before being refused"
    assert requests.get(url, params={"viewport": "32,32,16,16,32,32"}, timeout=30).status_code == 200
    assert decoded == [1]
