"""Media types and Accept-header negotiation for WADO-RS (PS3.18 8.7)."""

from __future__ import annotations

import re
from dataclasses import dataclass

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

# Media type of a frame (PS3.18 Table 8.7.3-5) by the transfer syntax it is encoded in.
FRAME_MEDIA_TYPES: dict[str, str] = {
    IMPLICIT_VR_LE: "application/octet-stream",
    EXPLICIT_VR_LE: "application/octet-stream",
    "1.2.840.10008.1.2.1.99": "application/octet-stream",
    "1.2.840.10008.1.2.2": "application/octet-stream",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
NATIVE_SYNTAXES = {IMPLICIT_VR_LE, EXPLICIT_VR_LE}


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header, multipart/related unwrapped to its ``type`` parameter."""

    media_type: str  # e.g. application/dicom, image/jpeg, */*
    transfer_syntax: str | None  # None: not given; "*": any
    multipart: bool
    quality: float

    def accepts_type(self, media_type: str) -> bool:
        if self.media_type in ("*/*", "*"):
            return True
        major, _, minor = self.media_type.partition("/")
        return self.media_type == media_type or (minor == "*" and media_type.startswith(major + "/"))


_PARAM = re.compile(r';\s*([A-Za-z0-9_-]+)\s*=\s*("([^"]*)"|[^;,]*)')


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse Accept into media ranges, best first; an absent header accepts anything."""
    if not header or not header.strip():
        return [MediaRange("*/*", None, True, 1.0)]
    ranges: list[MediaRange] = []
    for part in _split_outside_quotes(header):
        part = part.strip()
        if not part:
            continue
        main = part.split(";", 1)[0].strip().lower()
        params = {
            m.group(1).lower(): (m.group(3) if m.group(3) is not None else m.group(2).strip())
            for m in _PARAM.finditer(part)
        }
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        syntax = params.get("transfer-syntax")
        if main == "multipart/related":
            inner = (params.get("type") or "*/*").lower()
            ranges.append(MediaRange(inner, syntax, True, quality))
        else:
            ranges.append(MediaRange(main, syntax, False, quality))
    ranges.sort(key=lambda r: -r.quality)
    return [r for r in ranges if r.quality > 0]


def _split_outside_quotes(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class FrameChoice:
    media_type: str
    transfer_syntax: str
    transcode: bool  # decode to native (Explicit VR Little Endian) before sending


def choose_frame_encoding(ranges: list[MediaRange], stored_syntax: str) -> FrameChoice | None:
    """Pass frames through when the client accepts how they are stored; else decode to native."""
    stored_media = FRAME_MEDIA_TYPES.get(stored_syntax, "application/octet-stream")
    stored_native = stored_syntax in NATIVE_SYNTAXES
    for r in ranges:
        wants_any_syntax = (
            r.transfer_syntax in (None, "*")
            if r.media_type != "application/octet-stream"
            else r.transfer_syntax == "*"
        )
        if r.accepts_type(stored_media) and (
            r.transfer_syntax == stored_syntax
            or wants_any_syntax
            or (stored_native and r.transfer_syntax in (None, EXPLICIT_VR_LE))
        ):
            syntax = EXPLICIT_VR_LE if stored_native else stored_syntax
            return FrameChoice(stored_media, syntax, False)
        if r.accepts_type("application/octet-stream") and r.transfer_syntax in (None, "*", EXPLICIT_VR_LE):
            return FrameChoice("application/octet-stream", EXPLICIT_VR_LE, not stored_native)
    return None


def choose_instance_syntax(ranges: list[MediaRange], stored_syntax: str) -> str | None:
    """The transfer syntax to send an instance in, or None if nothing acceptable can be made.

    Without a transfer-syntax parameter the instance is sent as stored (as other archives do,
    so retrieved bytes equal stored bytes); Explicit VR Little Endian on request by transcoding.
    """
    for r in ranges:
        if not r.accepts_type("application/dicom"):
            continue
        if r.transfer_syntax in (None, "*", stored_syntax):
            return stored_syntax
        if r.transfer_syntax == EXPLICIT_VR_LE:
            return EXPLICIT_VR_LE
    return None
