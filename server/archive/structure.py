"""Structural bounds of a Part 10 file, checked on the raw bytes before pydicom reads it.

pydicom trusts what a file declares: an element claiming 4 GiB is read with ``read(4 GiB)``
(one allocation of that size), sequences nest as deep as the file says (one Python frame per
level), and a deflated data set is inflated whole with no limit. This walk reads only element
headers, seeks over values, and refuses the file as soon as a declared length runs past its
container or the end of the file, sequences nest deeper than ``MAX_SEQUENCE_DEPTH``, or a
deflated data set inflates beyond its byte budget. It stops at the top-level Pixel Data, which
``server.archive.pixeldata`` indexes (and bounds) itself.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

MAX_SEQUENCE_DEPTH = 16  # real data nests 3-6 deep (SR content trees, WSI optical paths)
MAX_INFLATED_BYTES = 1 << 30  # deflated data sets are read whole into memory: cap them at 1 GiB
HEADER_ALLOWANCE = 64 * 1024 * 1024  # non-pixel content allowed beside the largest permitted pixels

_WINDOW = 64 * 1024
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_ITEM_END = (0xFFFE, 0xE00D)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_PIXEL_DATA = (0x7FE0, 0x0010)
_LONG_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


class StructureError(ValueError):
    """The file's declared structure is impossible or beyond the archive's bounds."""


def _is_vr(code: bytes) -> bool:
    return len(code) == 2 and 65 <= code[0] <= 90 and 65 <= code[1] <= 90


class _Walker:
    def __init__(self, fh: BinaryIO, file_size: int, little: bool, explicit: bool, max_depth: int) -> None:
        self.fh = fh
        self.file_size = file_size
        self.order = "<" if little else ">"
        self.explicit = explicit
        self.max_depth = max_depth
        self._window = b""
        self._window_start = 0

    def _read(self, position: int, count: int) -> bytes:
        """Bytes at ``position``, from a 64 KiB window: element headers are small and close."""
        offset = position - self._window_start
        if offset < 0 or offset + count > len(self._window):
            self.fh.seek(position)
            self._window = self.fh.read(max(count, _WINDOW))
            self._window_start, offset = position, 0
        return self._window[offset : offset + count]

    def _bounded(self, tag: tuple[int, int], value: int, length: int, end: int) -> int:
        if value + length > end:
            where = "the file" if end == self.file_size else "its enclosing item"
            raise StructureError(
                f"element ({tag[0]:04X},{tag[1]:04X}) declares {length} bytes but only "
                f"{max(end - value, 0)} remain in {where}"
            )
        return value + length

    def elements(self, position: int, end: int | None, depth: int, explicit: bool) -> int:
        """Walk a data set or item to ``end`` (defined) or its Item Delimitation (undefined)."""
        limit = self.file_size if end is None else end
        while position < limit:
            head = self._read(position, 8)
            if len(head) < 8:
                raise StructureError(f"element header at byte {position} is cut off (file truncated)")
            group, element = struct.unpack(self.order + "HH", head[:4])
            tag = (group, element)
            if tag == _ITEM_END:
                if end is None:
                    return position + 8
                raise StructureError(f"unexpected Item Delimitation at byte {position}")
            if depth == 0 and tag == _PIXEL_DATA:
                return position
            vr: bytes | None = None
            if explicit and group != 0xFFFE:
                vr = head[4:6]
                if vr in _LONG_VRS:
                    extra = self._read(position + 8, 4)
                    if len(extra) < 4:
                        raise StructureError(f"element header at byte {position} is cut off (file truncated)")
                    (length,) = struct.unpack(self.order + "L", extra)
                    value = position + 12
                else:
                    (length,) = struct.unpack(self.order + "H", head[6:8])
                    value = position + 8
            else:
                (length,) = struct.unpack(self.order + "L", head[4:8])
                value = position + 8
            if vr is None:
                sequence = length == _UNDEFINED or _dictionary_sq(tag)
                inner_explicit = explicit
            else:
                sequence = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
                inner_explicit = explicit and vr != b"UN"  # UN of undefined length: implicit VR inside
            if length == _UNDEFINED:
                if sequence:
                    position = self.sequence(value, None, depth + 1, inner_explicit, tag)
                elif vr in (b"OB", b"OW"):
                    position = self.sequence(value, None, depth + 1, explicit, tag, fragments=True)
                else:
                    raise StructureError(f"element ({group:04X},{element:04X}) has an undefined length")
                continue
            stop = self._bounded(tag, value, length, limit)
            if sequence and length:
                self.sequence(value, stop, depth + 1, inner_explicit, tag)
            position = stop
        if end is None:
            raise StructureError("an item of undefined length is never closed (file truncated)")
        return position

    def sequence(
        self,
        position: int,
        end: int | None,
        depth: int,
        explicit: bool,
        tag: tuple[int, int],
        fragments: bool = False,
    ) -> int:
        """Walk the items of a sequence (or the fragments of encapsulated data)."""
        if depth > self.max_depth:
            raise StructureError(
                f"sequences are nested more than {self.max_depth} levels deep "
                f"(at ({tag[0]:04X},{tag[1]:04X}))"
            )
        limit = self.file_size if end is None else end
        while position < limit:
            head = self._read(position, 8)
            if len(head) < 8:
                raise StructureError(f"sequence item at byte {position} is cut off (file truncated)")
            group, element, length = struct.unpack(self.order + "HHL", head)
            if (group, element) == _SEQUENCE_END:
                if end is None:
                    return position + 8
                raise StructureError(f"unexpected Sequence Delimitation at byte {position}")
            if (group, element) != _ITEM:
                raise StructureError(
                    f"({group:04X},{element:04X}) where an item of ({tag[0]:04X},{tag[1]:04X}) should be"
                )
            value = position + 8
            if length == _UNDEFINED:
                if fragments:
                    raise StructureError("an encapsulated fragment has an undefined length")
                position = self.elements(value, None, depth, explicit)
                continue
            stop = self._bounded(_ITEM, value, length, limit)
            if not fragments:
                self.elements(value, stop, depth, explicit)
            position = stop
        if end is None:
            raise StructureError(f"sequence ({tag[0]:04X},{tag[1]:04X}) is never closed (file truncated)")
        return position


def _dictionary_sq(tag: tuple[int, int]) -> bool:
    try:
        return dictionary_VR((tag[0] << 16) | tag[1]) == "SQ"
    except KeyError:
        return False


def _file_meta(fh: BinaryIO, file_size: int) -> tuple[int, str]:
    """Walk the group 0002 elements after the preamble: where the data set starts, and its syntax."""
    position, syntax = 132, ""
    walker = _Walker(fh, file_size, little=True, explicit=True, max_depth=0)
    while position + 8 <= file_size:
        head = walker._read(position, 8)
        group, element = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            break
        vr = head[4:6]
        if not _is_vr(vr):  # a non-conformant implicit VR meta group, which pydicom also reads
            (length,) = struct.unpack("<L", head[4:8])
            value = position + 8
        elif vr in _LONG_VRS:
            (length,) = struct.unpack("<L", walker._read(position + 8, 4).ljust(4, b"\0"))
            value = position + 12
        else:
            (length,) = struct.unpack("<H", head[6:8])
            value = position + 8
        stop = walker._bounded((group, element), value, length, file_size)
        if element == 0x0010:
            syntax = walker._read(value, min(length, 64)).decode("ascii", "replace").strip("\0 ")
        position = stop
    return position, syntax


def check_inflated_size(fh: BinaryIO, position: int, budget: int) -> int:
    """Inflate a deflated data set in chunks, keeping nothing, and refuse it beyond ``budget`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    fh.seek(position)
    total = 0
    while chunk := fh.read(1 << 20):
        data = chunk
        while data:
            try:
                out = inflater.decompress(data, 1 << 22)
            except zlib.error as exc:
                raise StructureError(f"the deflated data set cannot be inflated: {exc}") from exc
            total += len(out)
            if total > budget:
                raise StructureError(
                    f"the deflated data set inflates to more than {budget} bytes (a decompression bomb?)"
                )
            data = inflater.unconsumed_tail
        if inflater.eof:
            break
    return total


def check_structure(fh: BinaryIO, file_size: int, max_pixel_bytes: int) -> None:
    """Raise StructureError when the file declares more than it holds or more than we accept."""
    start, syntax = _file_meta(fh, file_size)
    if syntax == _DEFLATED:
        check_inflated_size(fh, start, min(max_pixel_bytes + HEADER_ALLOWANCE, MAX_INFLATED_BYTES))
        return
    first = _Walker(fh, file_size, True, True, 0)._read(start + 4, 2)
    explicit = _is_vr(first) if len(first) == 2 else syntax != _IMPLICIT  # as pydicom detects it
    walker = _Walker(fh, file_size, syntax != _BIG_ENDIAN, explicit, MAX_SEQUENCE_DEPTH)
    walker.elements(start, file_size, 0, explicit)
