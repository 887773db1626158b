"""Content-addressed blob store: a stored instance's bytes live at a path made from their SHA-256.

Layout: ``root/ab/<sha256>`` where ``ab`` are the hash's first two hex digits. The 256
folders are made (and made durable) once, so storing a blob never creates a directory
and costs exactly two fsyncs: the file, then its folder after the rename.

Paths are generated here only, from the hash; nothing from a DICOM value or a URL
ever becomes part of a filesystem path. Writes are durable before they are
acknowledged: temp file -> fsync -> rename -> fsync of the directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from server.archive.objectstore import BlobMirror

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


class BlobStore:
    """Immutable blobs under ``root/ab/<sha256>``; a temp area on the same filesystem."""

    def __init__(self, root: Path, tmp_dir: Path, mirror: BlobMirror | None = None) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        self.mirror = mirror  # an object store holding every blob; root is then a local cache of it
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if not (root / "ff").is_dir():
            root.mkdir(parents=True, exist_ok=True)
            for prefix in range(256):
                (root / f"{prefix:02x}").mkdir(exist_ok=True)
            _fsync_dir(root)
            _fsync_dir(root.parent)

    def path_for(self, sha256: str) -> Path:
        if not _HEX64.match(sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def new_temp(self) -> tuple[BinaryIO, Path]:
        """A fresh temp file in the store's own filesystem, so the final rename is atomic."""
        fd, name = tempfile.mkstemp(prefix="in-", suffix=".part", dir=self.tmp_dir)
        return os.fdopen(fd, "w+b"), Path(name)

    def commit_temp(self, temp: Path, sha256: str) -> Path:
        """Move a fully written, hashed temp file into place durably; returns the final path."""
        final = self.path_for(sha256)
        if final.exists():
            # Same hash means same bytes: keep the existing file, drop the temp copy.
            temp.unlink(missing_ok=True)
            return final
        with open(temp, "rb") as fh:
            os.fsync(fh.fileno())
        if self.mirror is not None:
            self.mirror.put(sha256, temp)  # before the rename: a local blob is always in the store too
        os.replace(temp, final)
        _fsync_dir(final.parent)
        return final

    def local_path(self, sha256: str) -> Path:
        """The blob's local path, fetched from the object store first if this machine lacks it."""
        path = self.path_for(sha256)
        if self.mirror is None or path.exists():
            return path
        fd, name = tempfile.mkstemp(prefix="get-", suffix=".part", dir=self.tmp_dir)
        os.close(fd)
        try:
            if self.mirror.fetch(sha256, Path(name)):
                os.replace(name, path)
        finally:
            Path(name).unlink(missing_ok=True)
        return path

    def delete(self, sha256: str) -> None:
        path = self.path_for(sha256)
        path.unlink(missing_ok=True)
        if self.mirror is not None:
            self.mirror.delete(sha256)

    def iter_hashes(self) -> Iterator[str]:
        """Every blob on disk, and in the object store if there is one (for reconciliation with the index)."""
        local = set()
        for path in self.root.glob("??/*"):
            if _HEX64.match(path.name):
                local.add(path.name)
                yield path.name
        if self.mirror is not None:
            yield from (digest for digest in self.mirror.iter_hashes() if digest not in local)

    def clean_temp(self, older_than_seconds: float = 0) -> int:
        """Remove leftovers of interrupted writes (never acknowledged).

        A running server may be receiving into tmp/ right now: callers that are not sure
        nothing is (e.g. ``tessera reconcile`` next to a live server) pass an age.
        """
        removed = 0
        cutoff = time.time() - older_than_seconds
        for path in self.tmp_dir.glob("*.part"):
            try:
                if older_than_seconds and path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_sha256(path: Path) -> str:
    """Hash of the data set without its File Meta Information.

    The same instance received through different doors carries different file meta
    (C-STORE records the sending AE, STOW-RS keeps the client's), so "identical" means
    identical data set bytes.
    """
    with open(path, "rb") as fh:
        fh.seek(132)
        head = fh.read(12)
        offset = 132
        if len(head) == 12 and head[:4] == b"\x02\x00\x00\x00" and head[4:6] == b"UL":
            offset = 144 + int.from_bytes(head[8:12], "little")
        fh.seek(offset)
        digest = hashlib.sha256()
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
