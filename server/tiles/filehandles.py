"""Open file descriptors kept in a small LRU, so a tile costs one ``pread`` and no ``open``.

A descriptor closes when its ``OpenFile`` is garbage: eviction only drops the cache's
reference, so a thread still reading through it is never handed a closed or reused fd.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from pathlib import Path


class OpenFile:
    """A read-only descriptor owned by whoever still references this object."""

    __slots__ = ("fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def __del__(self) -> None:
        fd = getattr(self, "fd", -1)
        if fd >= 0:
            os.close(fd)
            self.fd = -1


class FileHandleCache:
    """At most ``capacity`` open files, least recently used closed first."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._files: OrderedDict[Path, OpenFile] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, path: Path) -> OpenFile | None:
        """The already-open file, or None: never opens (safe on the event loop)."""
        with self._lock:
            handle = self._files.get(path)
            if handle is not None:
                self._files.move_to_end(path)
            return handle

    def get(self, path: Path) -> OpenFile:
        with self._lock:
            handle = self._files.get(path)
            if handle is not None:
                self._files.move_to_end(path)
                return handle
        handle = OpenFile(path)  # outside the lock: opening may block on the disk
        with self._lock:
            existing = self._files.get(path)
            if existing is not None:
                return existing
            self._files[path] = handle
            while len(self._files) > self.capacity:
                self._files.popitem(last=False)
        return handle


_NOWAIT = getattr(os, "RWF_NOWAIT", None)


def pread_if_cached(fd: int, length: int, offset: int) -> bytes | None:
    """The bytes if the OS page cache holds all of them, else None: never waits for the disk.

    Lets the event loop serve a stored tile itself (no executor hop) when that costs no
    more than a memory copy; anything not cached goes to the executor as usual.
    """
    if _NOWAIT is None or length <= 0:
        return None
    buffer = bytearray(length)
    try:
        read = os.preadv(fd, [buffer], offset, _NOWAIT)
    except OSError as exc:  # EAGAIN: not cached; EOPNOTSUPP: the filesystem cannot tell
        if exc.errno not in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return None
    return bytes(buffer) if read == length else None
