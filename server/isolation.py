"""Native code that reads untrusted bytes runs in worker processes: a crash fails one request.

Image codecs (OpenJPEG, libjpeg, CharLS, RLE), FFmpeg and OpenSlide are C/C++ libraries fed
with whatever a modality or an attacker sent. A segmentation fault in the server process would
take every connection with it; in a worker it breaks only that worker's pool, which is
replaced. The work is retried once on a fresh pool (another request's crash may have broken
the pool under an innocent job), so only the job that crashes twice fails.

Workers come from a ``forkserver``: never forked from the threaded server (fork copies locks
held by other threads), and started from a small preloaded parent, so they start in tens of ms.
A worker ends when the server that started it ends, however it ends (see ``_end_with``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def _end_with(server_pid: int) -> None:
    """Worker initializer: exit when the server process is gone.

    Nothing else would end the worker: it holds both ends of its task queue, so it never sees
    end-of-file, and it holds the forkserver's "alive" pipe, so the forkserver waits for it in
    turn. Both would outlive a server killed with SIGKILL. A pidfd becomes readable when the
    process exits; without pidfd support (Linux < 5.3) the worker polls once a second.
    """

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(server_pid)
        except ProcessLookupError:
            os._exit(0)
        except OSError:
            while True:
                try:
                    os.kill(server_pid, 0)
                except ProcessLookupError:
                    os._exit(0)
                time.sleep(1.0)
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=watch, name="end-with-server", daemon=True).start()


class NativeWorkerFailed(RuntimeError):
    """The worker process running native code died (a crash) or overran its time limit."""


class IsolatedPool:
    """A small, lazily started process pool, recreated whenever a worker dies."""

    def __init__(self, name: str, workers: int = 2, preload: Sequence[str] = ()) -> None:
        self.name = name
        self.workers = workers
        self.preload = list(preload)
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(self.preload)
                self._executor = ProcessPoolExecutor(
                    self.workers, mp_context=context, initializer=_end_with, initargs=(os.getpid(),)
                )
            return self._executor

    def _discard(self, executor: ProcessPoolExecutor, kill: bool = False) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
                self.restarts += 1
        if kill:  # a hung worker never returns on its own
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``fn(*args)`` in a worker; its exceptions propagate, a crash raises NativeWorkerFailed."""
        for attempt in (1, 2):
            executor = self._current()
            try:
                return executor.submit(fn, *args).result(timeout)
            except BrokenProcessPool as exc:
                self._discard(executor)
                log.warning("%s worker died (attempt %d): %s", self.name, attempt, exc)
                if attempt == 2:
                    raise NativeWorkerFailed(f"the {self.name} worker process crashed") from exc
            except FutureTimeout as exc:
                self._discard(executor, kill=True)
                raise NativeWorkerFailed(f"the {self.name} worker took longer than {timeout} s") from exc
        raise AssertionError("unreachable")

    def warm(self) -> None:
        """Start the forkserver and a first worker now, so no request waits for them."""
        try:
            self.run(os.getpid, timeout=120)
        except NativeWorkerFailed:
            log.exception("%s workers cannot start", self.name)

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


# One forkserver serves every pool. It preloads the codec module and the main script: every
# worker re-runs the main script as ``__mp_main__``, cheap only when its imports are loaded.
# A main script run as a module (``python -m server.cli``) is preloaded by its name: the
# forkserver skips "__main__" then, and each worker would import the whole server (~1 s of CPU).
# A package's ``__main__`` is left out, as multiprocessing itself never re-runs one.
_MAIN_NAME = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None) or ""
_PRELOAD = [
    "__main__",
    *([_MAIN_NAME] if _MAIN_NAME and not _MAIN_NAME.endswith("__main__") else []),
    "server.imaging.codecs",
]
# Frame decoding for every compressed syntax except baseline JPEG through Pillow (see frames.py).
decoder_pool = IsolatedPool("image decoder", workers=2, preload=_PRELOAD)
# Long jobs (FFmpeg building a cine MP4) get their own worker so they never queue frame decodes.
media_pool = IsolatedPool("media", workers=1, preload=_PRELOAD)
