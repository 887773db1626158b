"""Reading what the archive needs from a DICOM Part 10 file without loading its pixel data."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from server.archive.pixeldata import (
    FrameIndex,
    PixelDataError,
    index_pixel_data,
    native_frame_bytes,
)

BULK_THRESHOLD = 1024  # larger top-level binary values are served as bulk data, not inlined
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Status codes shared by every door (PS3.4 Annex B, PS3.7 Annex C, PS3.18 FailureReason).
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110


class RejectedInstance(Exception):
    """An instance the archive will not store; ``status`` is the DICOM failure code to answer."""

    def __init__(self, reason: str, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.sop_class_uid = ""
        self.sop_instance_uid = ""


@dataclass(frozen=True)
class GeometryLimits:
    max_pixel_bytes: int
    max_frames: int


@dataclass
class ParsedInstance:
    """The header of one instance, validated, plus where its frames lie."""

    dataset: Dataset  # without Pixel Data
    transfer_syntax_uid: str
    frame_index: FrameIndex | None
    has_pixel_data: bool

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    def header_json(self) -> str:
        """DICOM JSON without bulk data; large top-level binaries become relative BulkDataURIs."""
        document = self.dataset.to_json_dict(bulk_data_threshold=1 << 62)
        for element in self.dataset:
            if element.VR in _BINARY_VRS and element.tag.group != 0x0002:
                value = element.value
                if value is not None and len(value) > BULK_THRESHOLD:
                    key = f"{element.tag:08X}"
                    document[key] = {"vr": element.VR, "BulkDataURI": f"bulk/{key}"}
        if self.has_pixel_data:
            vr = "OB" if self.frame_index is None or self.frame_index.layout != 1 else _pixel_vr(self.dataset)
            document["7FE00010"] = {"vr": vr, "BulkDataURI": "bulk/7FE00010"}
        return json.dumps(document, separators=(",", ":"))


def _pixel_vr(ds: Dataset) -> str:
    return "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"


def _check_uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise RejectedInstance(f"{keyword} is missing")
    if len(value) > 64 or not _UID.match(value):
        raise RejectedInstance(f"{keyword} {value[:80]!r} is not a valid UID")
    return value


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise RejectedInstance(f"{keyword} {value!r} is not a number") from exc


def check_geometry(ds: Dataset, limits: GeometryLimits) -> None:
    """Refuse absurd image sizes before anything is allocated or stored."""
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames")
    if rows is None and columns is None:
        return
    if not rows or not columns or rows < 0 or columns < 0:
        raise RejectedInstance(f"image geometry Rows={rows} Columns={columns} is not usable")
    if frames is not None and not 0 < frames <= limits.max_frames:
        raise RejectedInstance(f"NumberOfFrames={frames} is outside 1..{limits.max_frames}")
    bits = _int(ds, "BitsAllocated") or 0
    samples = _int(ds, "SamplesPerPixel") or 1
    if bits not in (1, 8, 16, 32, 64):
        raise RejectedInstance(f"BitsAllocated={bits} is not 1, 8, 16, 32 or 64")
    if samples not in (1, 3, 4):
        raise RejectedInstance(f"SamplesPerPixel={samples} is not 1, 3 or 4")
    bits_stored = _int(ds, "BitsStored")
    if bits_stored is not None and not 0 < bits_stored <= bits:
        raise RejectedInstance(f"BitsStored={bits_stored} does not fit BitsAllocated={bits}")
    total = rows * columns * (frames or 1) * samples * bits // 8
    if total > limits.max_pixel_bytes:
        raise RejectedInstance(
            f"{rows}x{columns}x{frames or 1} frames of {samples}x{bits} bits is {total} bytes, "
            f"over the limit of {limits.max_pixel_bytes}",
            OUT_OF_RESOURCES,
        )


def parse_instance(path: Path, limits: GeometryLimits) -> ParsedInstance:
    """Parse and validate a Part 10 file; raises RejectedInstance naming the problem."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        preamble = fh.read(132)
        if len(preamble) < 132 or preamble[128:132] != b"DICM":
            raise RejectedInstance("not a DICOM Part 10 file (no 'DICM' prefix after the preamble)")
        fh.seek(0)
        try:
            ds = dcmread(fh, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, OverflowError, OSError) as exc:
            raise RejectedInstance(f"cannot parse the data set: {exc}") from exc
        except Exception as exc:  # pydicom raises assorted errors on hostile input
            raise RejectedInstance(f"cannot parse the data set: {type(exc).__name__}: {exc}") from exc
        try:
            return _validate(fh, ds, limits, size)
        except RejectedInstance as exc:
            exc.sop_class_uid = str(ds.get("SOPClassUID", "") or "")[:64]
            exc.sop_instance_uid = str(ds.get("SOPInstanceUID", "") or "")[:64]
            raise


def _validate(fh: BinaryIO, ds: Dataset, limits: GeometryLimits, size: int) -> ParsedInstance:
    meta = ds.file_meta
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not syntax:
        raise RejectedInstance("file meta information has no TransferSyntaxUID")
    sop_class = _check_uid(ds, "SOPClassUID")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        _check_uid(ds, keyword)
    media_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    if media_class and media_class != sop_class:
        raise RejectedInstance(
            f"SOPClassUID {sop_class} differs from MediaStorageSOPClassUID {media_class}",
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    media_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
    if media_instance and media_instance != str(ds.SOPInstanceUID):
        raise RejectedInstance(
            "SOPInstanceUID differs from MediaStorageSOPInstanceUID",
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    check_geometry(ds, limits)
    if syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        return _validate_whole(fh, ds, syntax)
    position = fh.tell()
    has_pixel_data = fh.read(4) == b"\xe0\x7f\x10\x00"
    fh.seek(position)
    try:
        index = index_pixel_data(fh, ds, UID(syntax), size) if has_pixel_data else None
    except PixelDataError as exc:
        raise RejectedInstance(str(exc)) from exc
    if has_pixel_data and "Rows" not in ds:
        raise RejectedInstance("Pixel Data present without Rows/Columns")
    return ParsedInstance(ds, syntax, index, has_pixel_data)


def _validate_whole(fh: BinaryIO, header: Dataset, syntax: str) -> ParsedInstance:
    """Deflated and big-endian files can't be indexed by offset: read them whole once to check them."""
    fh.seek(0)
    try:
        full = dcmread(fh)
        has_pixel_data = "PixelData" in full
        if has_pixel_data:
            expected = native_frame_bytes(full)
            if expected is not None and len(full.PixelData) < expected * int(
                full.get("NumberOfFrames", 1) or 1
            ):
                raise RejectedInstance("Pixel Data is shorter than the image geometry needs")
    except RejectedInstance:
        raise
    except Exception as exc:
        raise RejectedInstance(f"cannot parse the data set: {type(exc).__name__}: {exc}") from exc
    return ParsedInstance(header, syntax, None, has_pixel_data)
