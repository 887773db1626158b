"""Reading what the archive needs from a DICOM Part 10 file without loading its pixel data."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from server.archive.dicomjson import dataset_json
from server.archive.pixeldata import (
    FrameIndex,
    PixelDataError,
    index_pixel_data,
    native_frame_bytes,
)
from server.archive.structure import StructureError, check_structure

BULK_THRESHOLD = 1024  # larger top-level binary values are served as bulk data, not inlined
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Whole across a process boundary (parsing runs in worker processes): status and UIDs too."""
        return _rejected, (self.reason, self.status, self.sop_class_uid, self.sop_instance_uid)


def _rejected(reason: str, status: int, sop_class_uid: str, sop_instance_uid: str) -> RejectedInstance:
    exc = RejectedInstance(reason, status)
    exc.sop_class_uid, exc.sop_instance_uid = sop_class_uid, sop_instance_uid
    return exc


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
    preamble_zeroed: bool = False  # the file's bytes changed: a digest of what arrived is stale
    _header: str | None = field(default=None, repr=False, compare=False)
    _document: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    def header_json(self) -> str:
        """DICOM JSON without bulk data; large top-level binaries become relative BulkDataURIs.

        Made once, by ``parse_instance``: pydicom converts values lazily, so this is where a value it
        cannot read shows up, and that must be a refusal, not an error while indexing.
        """
        if self._header is not None:
            return self._header
        document = dict(self.document())
        if self.has_pixel_data:
            vr = "OB" if self.frame_index is None or self.frame_index.layout != 1 else _pixel_vr(self.dataset)
            document["7FE00010"] = {"vr": vr, "BulkDataURI": "bulk/7FE00010"}
        self._header = json.dumps(document, separators=(",", ":"))
        return self._header

    def document(self) -> dict[str, Any]:
        """The data set's DICOM JSON (without Pixel Data), made once."""
        if self._document is None:
            self._document = dataset_json(self.dataset, BULK_THRESHOLD)
        return self._document

    def text(self, keyword: str, limit: int = 324) -> str:
        """A top-level value as index text: values joined by backslashes, stripped, cut to ``limit``.

        Read from the DICOM JSON already made for the header, which costs far less than pydicom's
        attribute access; a value whose JSON form is not plain text or integers is read by pydicom.
        """
        entry = self.document().get(_json_key(keyword))
        if entry is None:
            return ""
        values = entry.get("Value")
        if values is None:
            return "" if "vr" in entry and len(entry) == 1 else _dataset_text(self.dataset, keyword, limit)
        if entry["vr"] in ("IS", "DS"):  # the text of a number string is as written, not as parsed
            return _dataset_text(self.dataset, keyword, limit)
        parts: list[str] = []
        for value in values:
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, int):
                parts.append(str(value))
            elif isinstance(value, dict) and entry["vr"] == "PN":
                parts.append("=".join(value.get(g, "") for g in _PN_GROUPS if g in value))
            else:
                return _dataset_text(self.dataset, keyword, limit)
        return _index_text("\\".join(parts), limit)

    def integer(self, keyword: str) -> int | None:
        """A single integer value (IS, US, UL...), None when absent, empty, multi-valued or not a number."""
        entry = self.document().get(_json_key(keyword))
        values = entry.get("Value") if entry is not None else None
        if not values or len(values) != 1:
            return None
        value = values[0]
        if isinstance(value, int):
            return value
        try:
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None


_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


@lru_cache(maxsize=512)
def _json_key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def _dataset_text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return _index_text(text, limit)


def _index_text(text: str, limit: int) -> str:
    """NUL is not text (PostgreSQL refuses it in text columns): index values leave it out."""
    return text.replace("\x00", "").strip()[:limit]


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
        zeroed = needs_zeroed_preamble(preamble[:128])
        _check_structure(fh, size, limits)
        fh.seek(0)
        try:
            ds = dcmread(fh, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, OverflowError, OSError) as exc:
            raise RejectedInstance(f"cannot parse the data set: {exc}") from exc
        except Exception as exc:  # pydicom raises assorted errors on hostile input
            raise RejectedInstance(f"cannot parse the data set: {type(exc).__name__}: {exc}") from exc
        try:
            parsed = _validate_converting(fh, ds, limits, size)
            try:
                parsed.header_json()
            except Exception as exc:  # a value pydicom cannot convert (bad VR, unreadable number, ...)
                raise RejectedInstance(f"cannot convert the data set: {type(exc).__name__}: {exc}") from exc
        except RejectedInstance as exc:
            exc.sop_class_uid = _uid_or_empty(ds, "SOPClassUID")
            exc.sop_instance_uid = _uid_or_empty(ds, "SOPInstanceUID")
            raise
    if zeroed:
        zero_preamble(path)
        parsed.preamble_zeroed = True
    return parsed


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_ZERO_PREAMBLE = bytes(128)


def needs_zeroed_preamble(preamble: bytes) -> bool:
    """Whether a stored file's 128-byte preamble must be replaced by zeros (PS3.10 7.5).

    The preamble is free for applications, which makes it a place to hide an executable
    header (a file that is both valid DICOM and, say, a Windows program). The archive
    serves stored files as they are, so anything there is wiped; the one exception is a
    TIFF header: dual-personality whole-slide images (PS3.10 7.5.1, Sup 222) are also
    TIFF files and must keep it.
    """
    return preamble != _ZERO_PREAMBLE and preamble[:4] not in _TIFF_MAGIC


def zero_preamble(path: Path) -> None:
    """Overwrite the preamble with zeros, without touching any other link to the same bytes.

    A temp file may be a hard link to a stored blob (reconcile indexes orphan blobs that
    way); writing in place would change the blob under its content address, so a linked
    file is first replaced by a private copy.
    """
    with open(path, "r+b") as fh:
        if os.fstat(fh.fileno()).st_nlink == 1:
            fh.write(_ZERO_PREAMBLE)
            return
    private = path.with_suffix(".copy.part")  # a leftover is cleaned up like any temp file
    with open(path, "rb") as source, open(private, "wb") as target:
        source.seek(128)
        target.write(_ZERO_PREAMBLE)
        while chunk := source.read(1 << 20):
            target.write(chunk)
    os.replace(private, path)


def _validate_converting(fh: BinaryIO, ds: Dataset, limits: GeometryLimits, size: int) -> ParsedInstance:
    """``_validate``, with a value pydicom cannot convert on access (an unknown VR in the file
    meta, an unreadable number) refused with its reason instead of escaping as an exception."""
    try:
        return _validate(fh, ds, limits, size)
    except RejectedInstance:
        raise
    except Exception as exc:
        raise RejectedInstance(f"cannot convert the data set: {type(exc).__name__}: {exc}") from exc


def _uid_or_empty(ds: Dataset, keyword: str) -> str:
    """A UID for a failure report, or "" when even reading it fails."""
    try:
        return str(ds.get(keyword, "") or "")[:64]
    except Exception:
        return ""


def _check_structure(fh: BinaryIO, size: int, limits: GeometryLimits) -> None:
    """Lengths, nesting depth and inflated size from the raw bytes, before pydicom allocates any."""
    try:
        check_structure(fh, size, limits.max_pixel_bytes)
    except StructureError as exc:
        raise RejectedInstance(str(exc)) from exc


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
