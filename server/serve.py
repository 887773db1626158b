"""Starting a Tessera process: the archive, the modules, HTTP and the DICOM services."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.process import fork_processes, task_id

from server.archive.archive import Archive, start_parser_workers
from server.config import Settings
from server.context import ServerContext
from server.isolation import decoder_pool, media_pool
from server.jobs import attach_job_queue, job_runner_of
from server.modules import ModuleRegistry
from server.security.audit import APPLICATION_ACTIVITY, APPLICATION_START, APPLICATION_STOP, AuditRecord
from server.security.policy import check_startup
from server.security.service import SecurityService, close_security
from server.security.transport import server_ssl_context
from server.web.app import make_app

log = logging.getLogger(__name__)


def build_context(
    settings: Settings, registry: ModuleRegistry | None = None, *, migrate: bool = True
) -> ServerContext:
    """Open the archive, load the modules, and connect ingest events to them."""
    archive = Archive(settings, run_migrations=migrate)
    executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="tessera")
    archive.set_notify_executor(ThreadPoolExecutor(2, thread_name_prefix="tessera-derive"))
    ctx = ServerContext(settings=settings, archive=archive, executor=executor)
    ctx.registry = registry if registry is not None else ModuleRegistry.discover()
    ctx.registry.setup(ctx)
    archive.add_listener(ctx.registry.dispatch)
    attach_job_queue(ctx)  # derived work is queued with each instance; serving processes run it
    return ctx


def make_http_server(ctx: ServerContext) -> HTTPServer:
    return HTTPServer(
        make_app(ctx),
        ssl_options=server_ssl_context(ctx.settings),
        xheaders=ctx.settings.proxy_headers,
        max_body_size=ctx.settings.max_upload_bytes,
        max_buffer_size=64 * 1024 * 1024,  # non-streamed bodies; STOW-RS streams
        chunk_size=1024 * 1024,  # a streamed body is handed over in up to 1 MiB pieces, not 64 KiB
        max_header_size=ctx.settings.http_max_header_bytes,
        # Tornado uses this both for idle keep-alive connections and as the deadline for the
        # request headers, so a client trickling headers byte by byte is closed after it.
        idle_connection_timeout=ctx.settings.http_idle_timeout,
        body_timeout=ctx.settings.http_body_timeout,
    )


def start_dimse(ctx: ServerContext) -> Any:
    """The DICOM network services, if this build has them and they are enabled."""
    if not ctx.settings.dicom_enabled:
        return None
    try:
        from server.dimse.service import start_dimse as start
    except ImportError:
        log.warning("DICOM networking is not available in this build")
        return None
    return start(ctx)


def freeze_startup_heap() -> None:
    """Put what start-up allocated (modules, routes, libraries: ~200,000 objects) out of the cyclic
    garbage collector's reach. A full collection walks every tracked object: 100 ms of CPU or more
    on the event loop for this heap, a stall for every request in flight (tiles included); frozen,
    it walks only what came later. Frozen objects are never collected: run once, after start-up."""
    gc.collect()
    gc.freeze()


def _end_with_parent() -> None:
    """A child gets SIGTERM when the supervising parent dies, so stopping the parent stops all."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.warning("cannot tie worker %d to its parent's lifetime", os.getpid())


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM. With processes != 1, forks children that share the port."""
    archive = Archive(settings)  # migrate and reconcile once, before any worker serves
    try:
        security = SecurityService(settings)
        try:
            check_startup(settings, security.accounts.count_active_users())  # raises StartupRefused
        finally:
            security.close()
        server_ssl_context(settings)  # a bad certificate or key stops here, with the setting named
        report = archive.reconcile(repair=True, temp_older_than_seconds=0)
    finally:
        archive.close()
    if not report.clean:
        log.warning(
            "reconcile: %d indexed instances have no file; %d unindexed files were indexed",
            len(report.missing_files),
            len(report.orphan_files),
        )
    sockets = bind_sockets(settings.port, settings.host, reuse_port=settings.processes != 1)
    processes = settings.processes if settings.processes > 0 else (os.cpu_count() or 1)
    if processes > 1:
        fork_processes(processes)  # the parent stays here, restarting children that die
        _end_with_parent()
    ctx = build_context(settings, migrate=False)
    ctx.executor.submit(decoder_pool.warm)  # the first JPEG 2000/RLE frame need not wait for a worker
    ctx.executor.submit(media_pool.warm)  # nor the first cine MP4 (~0.1-2 s to start a worker)
    start_parser_workers()  # nor the first STOW batch for the parser workers
    first = task_id() in (None, 0)
    dimse = start_dimse(ctx) if first else None
    if first:
        _record_application(ctx, APPLICATION_START)
    jobs = job_runner_of(ctx)
    if jobs is not None:
        jobs.start()  # every process takes its share of derived work, including what a crash left

    async def main() -> None:
        server = make_http_server(ctx)  # created inside the running loop it will serve on
        freeze_startup_heap()
        server.add_sockets(sockets)
        scheme = "https" if settings.tls_enabled else "http"
        log.info("Tessera serving %s://%s:%d (pid %d)", scheme, settings.host, settings.port, os.getpid())
        if not settings.authentication_required:
            log.warning("authentication is off: anyone who can reach %s has full access", settings.host)
        if dimse is not None:
            log.info("DICOM services: AE %s on port %d", settings.ae_title, settings.dicom_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()

    try:
        asyncio.run(main())
    finally:
        if jobs is not None:
            jobs.stop()
        if dimse is not None:
            dimse.shutdown()
        if first:
            _record_application(ctx, APPLICATION_STOP)
        ctx.executor.shutdown(wait=False, cancel_futures=True)
        close_security(ctx)
        ctx.archive.close()


def _record_application(ctx: ServerContext, event_type: str) -> None:
    """Application Start/Stop in the audit trail (PS3.15 A.5.3.1)."""
    from server.security.service import security_of

    try:
        security_of(ctx).record(
            AuditRecord(
                APPLICATION_ACTIVITY,
                "E",
                event_type=event_type,
                auth_method="process",
                client_address=ctx.settings.host,
                resource=f"pid {os.getpid()}",
            )
        )
    except Exception:
        log.exception("cannot record application %s in the audit trail", event_type)


@dataclass
class BackgroundServer:
    """A whole Tessera server on its own event loop in a thread (for tests and benchmarks)."""

    ctx: ServerContext
    port: int
    dimse: Any
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _server: HTTPServer

    @property
    def url(self) -> str:
        scheme = "https" if self.ctx.settings.tls_enabled else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def dicom_port(self) -> int:
        return int(self.dimse.port) if self.dimse is not None else self.ctx.settings.dicom_port

    @classmethod
    def start(cls, settings: Settings, registry: ModuleRegistry | None = None) -> BackgroundServer:
        ctx = build_context(settings, registry)
        sockets = bind_sockets(settings.port, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder: dict[str, HTTPServer] = {}

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def setup() -> None:
                server = make_http_server(ctx)
                server.add_sockets(sockets)
                holder["server"] = server
                ready.set()

            loop.run_until_complete(setup())
            loop.run_forever()

        thread = threading.Thread(target=run, name="tessera-http", daemon=True)
        thread.start()
        ready.wait(10)
        dimse = start_dimse(ctx)
        jobs = job_runner_of(ctx)
        if jobs is not None:
            jobs.start()
        return cls(ctx, port, dimse, loop, thread, holder["server"])

    def stop(self) -> None:
        jobs = job_runner_of(self.ctx)
        if jobs is not None:
            jobs.stop()
        if self.dimse is not None:
            self.dimse.shutdown()

        async def shutdown() -> None:
            self._server.stop()
            await self._server.close_all_connections()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.ctx.executor.shutdown(wait=False, cancel_futures=True)
        close_security(self.ctx)
        self.ctx.archive.close()
