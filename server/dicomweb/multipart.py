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
        self._buffer += chunk
        while True:
            if self._state == "preamble":
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    self._buffer = self._buffer[-len(self._delimiter) :]
                    return
                self._buffer = self._buffer[index + len(self._delimiter) :]
                self._state = "after-boundary"
            elif self._state == "after-boundary":
                if len(self._buffer) < 2:
                    return
                if self._buffer.startswith(b"--"):
                    self._state = "epilogue"
                    self._buffer = b""
                    return
                # At most MAX_BOUNDARY_PADDING bytes between a boundary and its CRLF, however the
                # body was cut into chunks (with no CRLF yet, the last byte may be its CR).
                end = self._buffer.find(b"\r\n")
                if end > MAX_BOUNDARY_PADDING or (end < 0 and len(self._buffer) > MAX_BOUNDARY_PADDING + 1):
                    raise MultipartError("garbage after a multipart boundary")
                if end < 0:
                    return
                self._buffer = self._buffer[end + 2 :]
                self._state = "headers"
            elif self._state == "headers":
                end = self._buffer.find(b"\r\n\r\n")
                if self._buffer.startswith(b"\r\n"):
                    end, header_block = 0, b""
                    self._buffer = self._buffer[2:]
                # The same limit whatever the chunking: with no blank line yet, the last 3 bytes
                # may be its start.
                elif end > MAX_PART_HEADER_BYTES or (
                    end < 0 and len(self._buffer) > MAX_PART_HEADER_BYTES + 3
                ):
                    raise MultipartError("multipart part headers are too long")
                elif end < 0:
                    return
                else:
                    header_block = self._buffer[:end]
                    self._buffer = self._buffer[end + 4 :]
                self._start_part(header_block)
                self._state = "body"
            elif self._state == "body":
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    keep = len(self._delimiter) - 1
                    if len(self._buffer) > keep:
                        self._write(self._buffer[:-keep])
                        self._buffer = self._buffer[-keep:]
                    return
                self._write(self._buffer[:index])
                self._buffer = self._buffer[index + len(self._delimiter) :]
                self._end_part()
                self._state = "after-boundary"
            else:  # epilogue: ignored
                self._buffer = b""
                return

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

    def _write(self, data: bytes) -> None:
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
