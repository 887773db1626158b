"""What a compressed frame says about itself, checked against the data set before decoding.

A codestream carries its own dimensions (JPEG SOF, JPEG 2000 SIZ, the RLE segment header), and
decoders allocate by those, not by the data set's Rows and Columns: a 20 KB JPEG declaring
60000 x 60000 makes a decoder ask for gigabytes. The header is read here (microseconds, no
allocation) and a frame whose declared geometry differs from the data set is refused.

This module is also what decoder worker processes import (``decode_compressed``): it stays
light so a fresh worker starts quickly.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# Pillow's own bomb guard, set explicitly rather than inherited: an encoded image over this many
# pixels warns, over twice as many raises DecompressionBombError. 2^28 pixels (16384^2) covers
# every single frame Tessera renders; whole-slide levels are read tile by tile.
MAX_IMAGE_PIXELS = 1 << 28
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",  # JPEG-LS: SOF55
    "1.2.840.10008.1.2.4.81",
}
_J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# Start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 and JPEG-LS SOF55 (not DHT C4, JPG C8, DAC CC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_STANDALONE = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


class CodestreamMismatch(ValueError):
    """The frame's codestream declares a geometry the data set does not have, or is unreadable."""


@dataclass(frozen=True)
class FrameGeometry:
    """What the data set says one frame is."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int

    @property
    def decoded_bytes(self) -> int:
        return self.rows * self.columns * self.samples * max(self.bits_allocated, 8) // 8


def _declared(
    kind: str, width: int, height: int, components: int, precision: int, expected: FrameGeometry
) -> None:
    if (width, height) != (expected.columns, expected.rows):
        raise CodestreamMismatch(
            f"the {kind} codestream declares {width}x{height} pixels; the data set says "
            f"{expected.columns}x{expected.rows} ({expected.decoded_bytes} bytes a frame)"
        )
    if components != expected.samples:
        raise CodestreamMismatch(
            f"the {kind} codestream declares {components} components; the data set says "
            f"{expected.samples} samples per pixel"
        )
    if not 0 < precision <= max(expected.bits_allocated, 8):
        raise CodestreamMismatch(
            f"the {kind} codestream declares {precision}-bit samples in {expected.bits_allocated}-bit pixels"
        )


def _check_jpeg(data: bytes, expected: FrameGeometry) -> None:
    if data[:2] != b"\xff\xd8":
        raise CodestreamMismatch("the JPEG frame does not start with an SOI marker")
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            raise CodestreamMismatch(f"the JPEG frame has no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker in _SOF_MARKERS:
            if position + 10 > end:
                break
            precision = data[position + 4]
            height, width = struct.unpack_from(">HH", data, position + 5)
            _declared("JPEG", width, height, data[position + 9], precision, expected)
            return
        if marker == 0xDA:
            raise CodestreamMismatch("the JPEG frame has scan data before any start-of-frame marker")
        position += 2 + length
    raise CodestreamMismatch("the JPEG frame has no start-of-frame header")


def _check_j2k(data: bytes, expected: FrameGeometry) -> None:
    start = 0 if data[:4] == b"\xff\x4f\xff\x51" else data.find(b"\xff\x4f\xff\x51", 0, 4096)
    if start < 0:  # a JP2 file wraps the codestream in boxes; the SIZ follows SOC
        raise CodestreamMismatch("the JPEG 2000 frame has no SIZ header")
    siz = start + 2
    if siz + 40 > len(data):
        raise CodestreamMismatch("the JPEG 2000 SIZ header is cut off")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, siz + 6)
    (components,) = struct.unpack_from(">H", data, siz + 38)
    precision = (data[siz + 40] & 0x7F) + 1 if siz + 41 <= len(data) else 0
    _declared("JPEG 2000", xsiz - xosiz, ysiz - yosiz, components, precision, expected)


def _check_rle(data: bytes, expected: FrameGeometry) -> None:
    if len(data) < 64:
        raise CodestreamMismatch("the RLE frame is shorter than its 64-byte header")
    header = struct.unpack_from("<16I", data)
    segments, offsets = header[0], header[1 : 1 + min(header[0], 15)]
    wanted = expected.samples * max(expected.bits_allocated // 8, 1)
    if segments != wanted:
        raise CodestreamMismatch(
            f"the RLE header declares {segments} segments; {expected.samples} samples of "
            f"{expected.bits_allocated} bits need {wanted}"
        )
    if offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets)) or offsets[-1] >= len(data):
        raise CodestreamMismatch("the RLE header's segment offsets do not fit the frame")


def check_codestream(syntax: str, data: bytes, expected: FrameGeometry) -> None:
    """Refuse a compressed frame whose own header disagrees with the data set's geometry."""
    if syntax in _JPEG_SYNTAXES:
        _check_jpeg(data, expected)
    elif syntax in _J2K_SYNTAXES:
        _check_j2k(data, expected)
    elif syntax == RLE_LOSSLESS:
        _check_rle(data, expected)


def decode_compressed(syntax: str, data: bytes, options: dict[str, Any]) -> np.ndarray:
    """Decode one encapsulated frame with pydicom's decoders (runs in a decoder worker)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    array, _ = get_decoder(syntax).as_array(encapsulate([data], has_bot=False), index=0, **options)
    return np.asarray(array)
