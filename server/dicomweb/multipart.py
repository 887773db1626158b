"""A streaming multipart/related reader and writer (RFC 2387) for STOW-RS and WADO-RS.

The reader writes each part straight to a temp file in the archive's own filesystem
while hashing it, so an upload of any size is never held in memory.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAX_PART_HEADER_BYTES = 16 * 1024
MAX_BOUNDARY_PADDING = 1024  # bytes tolerated after a boundary line (RFC 2046 allows only whitespace)


class MultipartError(ValueError):
    """The body is not well-formed multipart/related."""


def boundary_of(content_type: str) -> str:
    match = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if not match:
        raise MultipartError("Content-Type has no boundary parameter")
    boundary = match.group(1) or match.group(2)
    if not 0 < len(boundary) <= 70:
        raise MultipartError("multipart boundary must be 1 to 70 characters")
    if not (boundary.isascii() and boundary.isprintable()):
        raise MultipartError("multipart boundary must be printable ASCII (RFC 2046)")
    return boundary


@dataclass
class ReceivedPart:
    path: Path
    headers: dict[str, str]
    size: int = 0
    sha256: str = ""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass
class MultipartReader:
    """Feed the body chunk by chunk; completed parts accumulate in ``parts``."""

    boundary: str
    new_file: Callable[[], tuple[BinaryIO, Path]]
    max_parts: int = 100_000
    parts: list[ReceivedPart] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._delimiter = b"\r\n--" + self.boundary.encode("latin-1")
        self._buffer = b"\r\n"  # lets the first boundary match the same delimiter
        self._state = "preamble"
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._current: ReceivedPart | None = None

    def feed(self, chunk: bytes) -> None:
        # One copy of the chunk (behind the few bytes kept from the last one); parts are found by
        # position and written as views, so a chunk holding many small parts is not copied per part.
        buf = self._buffer + chunk if self._buffer else chunk
        view = memoryview(buf)
        pos = 0
        try:
            pos = self._parse(buf, view)
        finally:
            view.release()
        self._buffer = buf[pos:]

    def _parse(self, buf: bytes, view: memoryview) -> int:
        """Consume ``buf`` as far as it can be; returns where the unconsumed rest starts."""
        delimiter = self._delimiter
        pos = 0
        while True:
            if self._state == "preamble":
                index = buf.find(delimiter, pos)
                if index < 0:
                    return max(pos, len(buf) - len(delimiter))
                pos = index + len(delimiter)
                self._state = "after-boundary"
            elif self._state == "after-boundary":
                if len(buf) - pos < 2:
                    return pos
                if buf.startswith(b"--", pos):
                    self._state = "epilogue"
                    return len(buf)
                # At most MAX_BOUNDARY_PADDING bytes between a boundary and its CRLF, however the
                # body was cut into chunks (with no CRLF yet, the last byte may be its CR).
                found = buf.find(b"\r\n", pos)
                end = found - pos if found >= 0 else -1
                if end > MAX_BOUNDARY_PADDING or (end < 0 and len(buf) - pos > MAX_BOUNDARY_PADDING + 1):
                    raise MultipartError("garbage after a multipart boundary")
                if end < 0:
                    return pos
                pos = found + 2
                self._state = "headers"
            elif self._state == "headers":
                if buf.startswith(b"\r\n", pos):
                    header_block = b""
                    pos += 2
                else:
                    found = buf.find(b"\r\n\r\n", pos)
                    end = found - pos if found >= 0 else -1
                    # The same limit whatever the chunking: with no blank line yet, the last 3 bytes
                    # may be its start.
                    if end > MAX_PART_HEADER_BYTES or (
                        end < 0 and len(buf) - pos > MAX_PART_HEADER_BYTES + 3
                    ):
                        raise MultipartError("multipart part headers are too long")
                    if end < 0:
                        return pos
                    header_block = buf[pos:found]
                    pos = found + 4
                self._start_part(header_block)
                self._state = "body"
            elif self._state == "body":
                index = buf.find(delimiter, pos)
                if index < 0:
                    keep = len(delimiter) - 1
                    if len(buf) - pos > keep:
                        self._write(view[pos : len(buf) - keep])
                        pos = len(buf) - keep
                    return pos
                self._write(view[pos:index])
                pos = index + len(delimiter)
                self._end_part()
                self._state = "after-boundary"
            else:  # epilogue: ignored
                return len(buf)

    def finish(self) -> list[ReceivedPart]:
        if self._state != "epilogue":
            self.discard()
            raise MultipartError("multipart body ended before its closing boundary")
        return self.parts

    def discard(self) -> None:
        """Remove every temp file (aborted or rejected request)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._current is not None:
            self._current.path.unlink(missing_ok=True)
        for part in self.parts:
            part.path.unlink(missing_ok=True)

    def _start_part(self, block: bytes) -> None:
        if len(self.parts) >= self.max_parts:
            raise MultipartError(f"more than {self.max_parts} parts")
        headers: dict[str, str] = {}
        for line in block.decode("latin-1").split("\r\n"):
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        self._file, path = self.new_file()
        self._hash = hashlib.sha256()
        self._current = ReceivedPart(path, headers)

    def _write(self, data: bytes | memoryview) -> None:
        if data and self._file is not None and self._current is not None:
            self._file.write(data)
            self._hash.update(data)
            self._current.size += len(data)

    def _end_part(self) -> None:
        assert self._file is not None and self._current is not None
        self._file.close()
        self._current.sha256 = self._hash.hexdigest()
        self.parts.append(self._current)
        self._file, self._current = None, None


class SingleBodyReader:
    """The same interface for a body that is one application/dicom instance (no multipart)."""

    def __init__(self, new_file: Callable[[], tuple[BinaryIO, Path]]) -> None:
        self._file, path = new_file()
        self._hash = hashlib.sha256()
        self._part = ReceivedPart(path, {"content-type": "application/dicom"})

    def feed(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._part.size += len(chunk)

    def finish(self) -> list[ReceivedPart]:
        self._file.close()
        self._part.sha256 = self._hash.hexdigest()
        return [self._part]

    def discard(self) -> None:
        self._file.close()
        self._part.path.unlink(missing_ok=True)


def new_boundary() -> str:
    return "tessera-" + secrets.token_hex(12)


def part_header(boundary: str, content_type: str, location: str | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("latin-1")
