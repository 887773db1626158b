"""Functions the hostile-input tests run inside decoder worker processes.

Kept apart from the test modules: a worker imports the module of every function it runs, and
this one needs nothing heavier than the codec module the workers preload.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

from server.imaging import codecs

CRASHING_ROWS = 48


def crash_on_marked_frames(syntax: str, data: bytes, options: dict[str, Any]) -> np.ndarray:
    """A decoder with a memory-safety bug: frames of CRASHING_ROWS rows kill its process."""
    if options["rows"] == CRASHING_ROWS:
        os.kill(os.getpid(), signal.SIGSEGV)
    return codecs.decode_compressed(syntax, data, options)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def pid() -> int:
    return os.getpid()


def crashing_video_build(stream: bytes, container_format: str, timing: object, path: str) -> None:
    """FFmpeg meeting a stream that corrupts its memory."""
    os.kill(os.getpid(), signal.SIGSEGV)
