"""Where each frame of a stored instance lies in its file, found once at ingest.

Serving a frame or a slide tile then costs one ``pread`` at a known offset: no
re-parsing of the file and no general-purpose reader on the hot path. The index
also proves the Pixel Data element is complete (a truncated file is rejected at
ingest instead of failing later on a viewer's request).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
ITEM_TAG = 0xE000FFFE  # (FFFE,E000) read as little-endian uint32 of group|element<<16
SEQUENCE_DELIMITER = 0xE0DDFFFE
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}

# Compressed syntaxes whose frames end in an EOI/EOC marker (0xFFD9) that DICOM may pad to even length.
_MARKER_CODECS = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
# Encapsulated video: one compressed stream for all frames (PS3.5 8.2.5-8.2.8).
MPEG2_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.100.1",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.101.1",
    }
)
H264_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.103.1", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.104.1",
        "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1", "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.106.1",
    }
)  # fmt: skip
HEVC_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"})
VIDEO_SYNTAXES = MPEG2_SYNTAXES | H264_SYNTAXES | HEVC_SYNTAXES


class PixelDataError(ValueError):
    """The Pixel Data element is truncated, malformed or inconsistent with the image geometry."""


class FrameLayout(IntEnum):
    NATIVE = 1  # uncompressed, frames back to back
    ENCAPSULATED = 2  # one or more fragments per frame
    VIDEO = 3  # one compressed stream for all frames


@dataclass(frozen=True)
class FrameIndex:
    """Byte ranges in the file: ``fragments[frame_starts[i]:frame_starts[i+1]]`` make frame i."""

    layout: FrameLayout
    fragments: np.ndarray  # shape (n, 2), uint64: absolute file offset, length
    frame_starts: np.ndarray  # shape (frames + 1,), uint32

    @property
    def number_of_frames(self) -> int:
        return len(self.frame_starts) - 1

    def frame_ranges(self, frame: int) -> list[tuple[int, int]]:
        """Byte ranges of a 0-based frame."""
        if not 0 <= frame < self.number_of_frames:
            raise IndexError(frame)
        start, stop = int(self.frame_starts[frame]), int(self.frame_starts[frame + 1])
        return [(int(o), int(n)) for o, n in self.fragments[start:stop]]

    def read_frame(self, fd: int, frame: int) -> bytes:
        """The frame's bytes, read with ``pread`` (safe to share one descriptor across threads)."""
        parts = [os.pread(fd, length, offset) for offset, length in self.frame_ranges(frame)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def to_bytes(self) -> bytes:
        head = struct.pack("<BII", int(self.layout), len(self.fragments), len(self.frame_starts))
        return (
            head
            + self.fragments.astype("<u8", copy=False).tobytes()
            + self.frame_starts.astype("<u4", copy=False).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameIndex:
        layout, n_fragments, n_starts = struct.unpack_from("<BII", data)
        offset = struct.calcsize("<BII")
        fragments = np.frombuffer(data, "<u8", n_fragments * 2, offset).reshape(-1, 2)
        offset += n_fragments * 16
        starts = np.frombuffer(data, "<u4", n_starts, offset)
        return cls(FrameLayout(layout), fragments, starts)


def native_frame_bytes(ds: Dataset) -> int | None:
    """Bytes per uncompressed frame, or None where frames are not byte-aligned (1-bit images)."""
    bits = int(ds.get("BitsAllocated", 0) or 0)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    if bits == 1:
        return pixels // 8 if pixels % 8 == 0 else None
    return pixels * bits // 8


def index_pixel_data(fh: BinaryIO, ds: Dataset, transfer_syntax: UID, file_size: int) -> FrameIndex | None:
    """Index the Pixel Data element that starts at ``fh.tell()`` (as left by stop_before_pixels).

    Returns None when there is no Pixel Data or its frames cannot be addressed in the file
    (deflated or big-endian syntaxes: those are decoded from the whole data set instead).
    """
    if transfer_syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        return None
    start = fh.tell()
    head = fh.read(8)
    if len(head) < 8:
        return None
    group, element = struct.unpack("<HH", head[:4])
    if (group, element) != PIXEL_DATA_TAG:
        return None
    if transfer_syntax == ImplicitVRLittleEndian:
        (length,) = struct.unpack("<I", head[4:8])
        value_offset = start + 8
    elif head[4:6] in _LONG_VRS:
        extra = fh.read(4)
        if len(extra) < 4:
            raise PixelDataError("Pixel Data element header is truncated")
        (length,) = struct.unpack("<I", extra)
        value_offset = start + 12
    else:
        (length,) = struct.unpack("<H", head[6:8])
        value_offset = start + 8
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if length != 0xFFFFFFFF:
        return _index_native(ds, value_offset, length, frames, file_size)
    return _index_encapsulated(fh, ds, transfer_syntax, value_offset, frames, file_size)


def _index_native(
    ds: Dataset, value_offset: int, length: int, frames: int, file_size: int
) -> FrameIndex | None:
    if value_offset + length > file_size:
        raise PixelDataError(
            f"Pixel Data declares {length} bytes but only {file_size - value_offset} remain in the file (file truncated)"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise PixelDataError("Pixel Data present without Rows/Columns")
    frame_bytes = native_frame_bytes(ds)
    if frame_bytes is None:
        return None
    if length < frame_bytes * frames:
        raise PixelDataError(
            f"Pixel Data holds {length} bytes; {frames} frame(s) of {ds.Rows}x{ds.Columns} need {frame_bytes * frames}"
        )
    offsets = value_offset + np.arange(frames, dtype=np.uint64) * np.uint64(frame_bytes)
    fragments = np.stack([offsets, np.full(frames, frame_bytes, dtype=np.uint64)], axis=1)
    return FrameIndex(FrameLayout.NATIVE, fragments, np.arange(frames + 1, dtype=np.uint32))


def _index_encapsulated(
    fh: BinaryIO, ds: Dataset, transfer_syntax: UID, value_offset: int, frames: int, file_size: int
) -> FrameIndex:
    items: list[tuple[int, int]] = []  # (value offset, length), the Basic Offset Table first
    position = value_offset
    while True:
        fh.seek(position)
        head = fh.read(8)
        if len(head) < 8:
            raise PixelDataError("encapsulated Pixel Data ends without a sequence delimiter (file truncated)")
        tag, length = struct.unpack("<II", head)
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM_TAG or length == 0xFFFFFFFF:
            raise PixelDataError(f"unexpected tag {tag:#010x} inside encapsulated Pixel Data")
        if position + 8 + length > file_size:
            raise PixelDataError("a Pixel Data fragment runs past the end of the file (file truncated)")
        items.append((position + 8, length))
        position += 8 + length
    if not items:
        raise PixelDataError("encapsulated Pixel Data has no Basic Offset Table item")
    (bot_offset, bot_length), fragments = items[0], items[1:]
    if not fragments:
        raise PixelDataError("encapsulated Pixel Data has no fragments")
    frag = np.array(fragments, dtype=np.uint64)
    if transfer_syntax in VIDEO_SYNTAXES:
        return FrameIndex(FrameLayout.VIDEO, frag, np.array([0, len(frag)], dtype=np.uint32))
    first_item = int(frag[0, 0]) - 8  # offsets in BOT/EOT count from the first fragment's item tag
    item_starts = frag[:, 0].astype(np.int64) - 8 - first_item
    starts = _frame_starts(fh, ds, transfer_syntax, frag, item_starts, bot_offset, bot_length, frames)
    if transfer_syntax in _MARKER_CODECS:
        last = starts[1:] - 1
        for i in last:
            offset, length = int(frag[i, 0]), int(frag[i, 1])
            if length >= 3:
                fh.seek(offset + length - 3)
                if fh.read(3) == b"\xff\xd9\x00":
                    frag[i, 1] = length - 1  # the pad byte is not part of the codestream
    return FrameIndex(FrameLayout.ENCAPSULATED, frag, starts.astype(np.uint32))


def _frame_starts(
    fh: BinaryIO,
    ds: Dataset,
    transfer_syntax: UID,
    frag: np.ndarray,
    item_starts: np.ndarray,
    bot_offset: int,
    bot_length: int,
    frames: int,
) -> np.ndarray:
    """First fragment of each frame (plus a final end marker), by the rules of PS3.5 A.4."""
    n = len(frag)
    offsets: np.ndarray | None = None
    if "ExtendedOffsetTable" in ds:
        eot = np.frombuffer(ds.ExtendedOffsetTable, "<u8").astype(np.int64)
        if len(eot) == frames:
            offsets = eot
    if offsets is None and bot_length:
        if bot_length != 4 * frames:
            raise PixelDataError(f"Basic Offset Table has {bot_length // 4} entries for {frames} frames")
        fh.seek(bot_offset)
        offsets = np.frombuffer(fh.read(bot_length), "<u4").astype(np.int64)
    if offsets is not None:
        positions = np.searchsorted(item_starts, offsets)
        if np.any(positions >= n) or np.any(item_starts[np.minimum(positions, n - 1)] != offsets):
            raise PixelDataError("offset table does not point at fragment boundaries")
        return np.append(positions, n)
    if n == frames:
        return np.arange(n + 1)
    if frames == 1:
        return np.array([0, n])
    # No table and several fragments per frame: a frame starts where a codestream starts.
    starters = []
    for i in range(n):
        fh.seek(int(frag[i, 0]))
        magic = fh.read(4)
        if magic[:2] in (b"\xff\xd8", b"\xff\x4f") or magic == b"\x00\x00\x00\x0c":
            starters.append(i)
    if len(starters) != frames or starters[0] != 0:
        raise PixelDataError(
            f"cannot tell where each of {frames} frames starts among {n} fragments (no offset table)"
        )
    return np.append(np.array(starters), n)
