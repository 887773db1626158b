"""HTTP handlers of the cardiology module (mounted under /cardiology/)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

from tornado.iostream import StreamClosedError

from modules.cardiology.loops import LoopError, LoopLibrary
from modules.cardiology.measurements import MeasurementBook, MeasurementError
from modules.cardiology.video import VideoError
from server.context import ServerContext
from server.imaging.frames import FrameDecodeError
from server.security.policy import Permission
from server.web.app import FrontendFile
from server.web.base import BaseHandler, ProblemError

CHUNK = 256 * 1024
FRAMES_PER_BATCH = 8
BOUNDARY = "tessera-cardiology-frame"


class CardiologyHandler(BaseHandler):
    library: LoopLibrary

    def initialize(self, ctx: ServerContext, library: LoopLibrary, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.library = library

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run blocking library work in the executor; library errors become problem+json."""
        try:
            return await self.run_blocking(fn, *args)
        except LoopError as exc:
            raise ProblemError(exc.status, exc.detail) from exc
        except FrameDecodeError as exc:
            raise ProblemError(422, str(exc)) from exc


class LoopHandler(CardiologyHandler):
    async def get(self, sop: str) -> None:
        self.write_json(await self.call(self.library.loop_info, sop))


class EcgHandler(CardiologyHandler):
    async def get(self, sop: str) -> None:
        self.set_header("Cache-Control", "private, max-age=3600")
        self.write_json(await self.call(self.library.ecg_info, sop))


class WaveformHandler(CardiologyHandler):
    async def get(self, sop: str) -> None:
        self.write_json(await self.call(self.library.waveform_info, sop))


class StudyIndexHandler(CardiologyHandler):
    async def get(self, study: str) -> None:
        series = self.get_query_argument("series", "")
        self.write_json(await self.call(self.library.study_index, study, series))


UID = re.compile(r"[0-9][0-9.]{0,63}")


class ViewerPageHandler(FrontendFile):
    """viewer.html as the static file it is, plus Link preload headers for what frame 1 needs
    (the study index and frame 1 of the series, as boot.js asks for them): the browser starts
    both as the page's response arrives, not a round trip later when boot.js has loaded."""

    def initialize(self, ctx: ServerContext, path: str) -> None:  # type: ignore[override]
        super().initialize(path)

    def set_extra_headers(self, path: str) -> None:
        study = self.get_query_argument("study", "")
        series = self.get_query_argument("series", "")
        if not UID.fullmatch(study) or (series and not UID.fullmatch(series)):
            return  # the page shows the problem; nothing to ask for early
        self.add_header(
            "Link", f"</cardiology/studies/{study}/loops?series={series}>; rel=preload; as=fetch; crossorigin"
        )
        if series:
            self.add_header(
                "Link",
                f"</cardiology/studies/{study}/series/{series}/first-frame.jpg>; rel=preload; as=image",
            )


class FirstFrameHandler(CardiologyHandler):
    """Frame 1 of the loop the viewer shows first for a study and series, named in X-Loop-Id.

    The viewer page is static and knows only the study and series from its URL; this lets it
    ask for frame 1 at the same time as the study index instead of after it."""

    async def get(self, study: str, series: str) -> None:
        def work() -> tuple[str, bytes]:
            loop_id = self.library.first_loop_id(study, series)
            _count, jpeg = self.library.frame_source(loop_id)
            return loop_id, jpeg(0)

        loop_id, data = await self.call(work)
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", "private, no-cache")  # which loop is first may change
        self.set_header("X-Loop-Id", loop_id)
        self.finish(data)


class FrameHandler(CardiologyHandler):
    """One frame as JPEG, 1-based like DICOMweb frame numbers."""

    async def get(self, sop: str, number: str) -> None:
        def work() -> bytes:
            _count, jpeg = self.library.frame_source(sop)
            return jpeg(int(number) - 1)

        data = await self.call(work)
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", "private, max-age=86400")
        self.finish(data)


class FrameStreamHandler(CardiologyHandler):
    """Every frame in one multipart/related response, in order, each part with its length:
    the viewer shows frame 1 as soon as it arrives and buffers the rest from one request."""

    async def get(self, sop: str) -> None:
        count, jpeg = await self.call(self.library.frame_source, sop)

        def batch(start: int) -> list[bytes]:
            return [jpeg(i) for i in range(start, min(start + FRAMES_PER_BATCH, count))]

        def frame_one() -> list[bytes]:
            """Frame 1 alone, flushed at once: the viewer draws it while the next batch is read;
            an error here, before the first byte, is still answered as problem+json."""
            return [jpeg(0)] if count else []

        first = await self.call(frame_one)
        self.set_header("Content-Type", f'multipart/related; type="image/jpeg"; boundary={BOUNDARY}')
        self.set_header("Cache-Control", "private, max-age=86400")
        self.set_header("X-Frame-Count", str(count))
        try:
            await self._stream(sop, first, 0, count, batch)
        except StreamClosedError:  # the viewer went away (page closed, loop changed): nothing to answer
            return

    async def _stream(self, sop: str, parts: list[bytes], start: int, count: int, batch: Any) -> None:
        while True:
            for offset, data in enumerate(parts):
                head = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                    f"Content-Location: /cardiology/loops/{sop}/frames/{start + offset + 1}.jpg\r\n\r\n"
                )
                self.write(head.encode("ascii"))
                self.write(data)
                self.write(b"\r\n")
            await self.flush()
            start += len(parts)
            if start >= count:
                break
            try:
                parts = await self.run_blocking(batch, start)
            except (FrameDecodeError, LoopError) as exc:  # too late for a status: end the stream, say why
                self.write(f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\n{exc}\r\n".encode())
                break
        self.finish(f"--{BOUNDARY}--\r\n".encode("ascii"))


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class VideoHandler(CardiologyHandler):
    """The loop's MP4 (made now if the background job has not yet), with single HTTP ranges."""

    unsatisfied_size: int | None = None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 416 and self.unsatisfied_size is not None:  # send_error cleared the headers
            self.set_header("Content-Range", f"bytes */{self.unsatisfied_size}")
        super().write_error(status_code, **kwargs)

    async def get(self, sop: str) -> None:
        await self._serve(sop, include_body=True)

    async def head(self, sop: str) -> None:
        await self._serve(sop, include_body=False)

    async def _serve(self, sop: str, include_body: bool) -> None:
        await self.call(self.library.check_loop, sop)  # 404/409 before any work
        future = self.library.schedule_video(sop)
        try:
            if future.cancel():  # still queued behind other loops: a viewer waits, so make it now
                path: Path = await self.run_blocking(self.library.make_video, sop)
            else:
                path = await asyncio.wrap_future(future)
        except VideoError as exc:
            raise ProblemError(422, f"no video for {sop}: {exc}") from exc
        size = path.stat().st_size
        start, end = 0, size - 1
        header = self.request.headers.get("Range")
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Type", "video/mp4")
        self.set_header("Cache-Control", "private, max-age=86400")
        self.set_header("ETag", f'"{path.stat().st_mtime_ns:x}-{size:x}"')
        if header:
            match = _RANGE.match(header.strip())
            if match is None or (not match.group(1) and not match.group(2)):
                self.unsatisfied_size = size
                raise ProblemError(416, f"unsupported range {header!r}; one bytes=a-b range is served")
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start, end = max(0, size - int(match.group(2))), size - 1
            if start > end or start >= size:
                self.unsatisfied_size = size
                raise ProblemError(416, f"range {header!r} is outside the {size}-byte video")
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.set_header("Content-Length", str(end - start + 1))
        if not include_body:
            self.finish()
            return
        fd = await self.run_blocking(os.open, str(path), os.O_RDONLY)
        try:
            position = start
            while position <= end:
                data = await self.run_blocking(os.pread, fd, min(CHUNK, end - position + 1), position)
                if not data:
                    break
                self.write(data)
                await self.flush()
                position += len(data)
            self.finish()
        except StreamClosedError:  # the player stopped reading (seek, page closed)
            return
        finally:
            os.close(fd)


class ExportHandler(CardiologyHandler):
    """POST calipers → the loop as MP4 with them drawn on every frame (not cached). It changes
    nothing on the server, so reading is all it needs."""

    permissions = {"POST": Permission.READ}

    async def post(self, sop: str) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except json.JSONDecodeError as exc:
            raise ProblemError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ProblemError(400, "the body is a JSON object with 'measurements'")
        book: MeasurementBook = self.ctx.extras["cardiology.measurements"]
        try:
            data = await self.call(book.export_loop_video, self.library, sop, body.get("measurements", []))
        except (MeasurementError, VideoError) as exc:
            raise ProblemError(422, str(exc)) from exc
        self.set_header("Content-Type", "video/mp4")
        self.set_header("Content-Disposition", f'attachment; filename="loop-{sop.replace("/", "-")}.mp4"')
        self.finish(data)


class MeasurementsHandler(CardiologyHandler):
    """GET the study's saved measurements; PUT replaces them (values recomputed server-side)."""

    def book(self) -> MeasurementBook:
        return self.ctx.extras["cardiology.measurements"]

    async def get(self, study: str) -> None:
        document = await self.call(self.book().load, study)
        if self.get_query_argument("download", ""):
            self.set_header("Content-Disposition", f'attachment; filename="measurements-{study}.json"')
        self.write_json(document)

    async def put(self, study: str) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except json.JSONDecodeError as exc:
            raise ProblemError(400, f"the body is not JSON: {exc}") from exc
        try:
            document = await self.call(self.book().save, self.library, study, body, self.username)
        except MeasurementError as exc:
            raise ProblemError(422, str(exc)) from exc
        self.write_json(document)


class MeasurementsSRHandler(CardiologyHandler):
    """POST: store the saved measurements as a DICOM SR (TID 1500) into the archive."""

    async def post(self, study: str) -> None:
        book: MeasurementBook = self.ctx.extras["cardiology.measurements"]
        try:
            result = await self.call(book.store_sr, self.library, study)
        except MeasurementError as exc:
            raise ProblemError(422, str(exc)) from exc
        self.write_json(result, status=201)
