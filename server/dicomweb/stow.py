"""STOW-RS: store instances from a streamed multipart/related body (PS3.18 10.5)."""

from __future__ import annotations

import logging
import re
from typing import Any

from tornado.http1connection import HTTP1Connection
from tornado.web import stream_request_body

from server.archive.archive import StoreOutcome, StoreStatus
from server.archive.dicomfile import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from server.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    SingleBodyReader,
    boundary_of,
)
from server.security.service import security_of
from server.web.base import BaseHandler, ProblemError

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
SOP_UNSUPPORTED_MEDIA = 0x0122  # "Refused: SOP class not supported" used for non-DICOM parts
FEED_BYTES = 1024 * 1024
NOT_AUTHORIZED = 0x0124  # "Refused: Not Authorized" (PS3.7 C.4.2.1.x): outside the user's study groups


@stream_request_body
class StowHandler(BaseHandler):
    """POST /studies[/{study}]: each part is stored through the archive's one ingest path.

    The body streams to temp files (written in the executor, never on the event loop);
    nothing is held whole in memory and nothing is stored before the body is complete.
    """

    body: MultipartReader | SingleBodyReader | None = None
    problem: tuple[int, str] | None = None
    received = 0
    pending: list[bytes]  # received chunks not yet handed to the reader
    pending_bytes = 0

    async def prepare(self) -> None:
        await self.authorize()  # before anything of the body is read or stored
        if self.request.method != "POST":
            return
        limit = self.ctx.settings.max_upload_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProblemError(
                413, f"the request body of {declared} bytes exceeds the limit of {limit} bytes"
            )
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            # Room above the limit so an oversize chunked body still gets a 413 answer, not a cut connection.
            connection.set_max_body_size(limit + 64 * 1024 * 1024)
        content_type = self.request.headers.get("Content-Type", "")
        main = content_type.split(";", 1)[0].strip().lower()
        if main == "multipart/related":
            part_type = _parameter(content_type, "type")
            if part_type is not None and part_type.lower() != "application/dicom":
                raise ProblemError(415, 'STOW-RS accepts multipart/related; type="application/dicom" only')
            try:
                self.body = MultipartReader(boundary_of(content_type), self.ctx.archive.blobs.new_temp)
            except MultipartError as exc:
                raise ProblemError(400, str(exc)) from exc
        elif main == "application/dicom":
            self.body = SingleBodyReader(self.ctx.archive.blobs.new_temp)
        else:
            raise ProblemError(
                415, f'Content-Type {main or "(none)"} is not multipart/related; type="application/dicom"'
            )

    async def data_received(self, chunk: bytes) -> None:
        if self.body is None or self.problem is not None:
            return
        self.received += len(chunk)
        limit = self.ctx.settings.max_upload_bytes
        if self.received > limit:
            self.problem = (413, f"the request body exceeds the limit of {limit} bytes")
            await self.run_blocking(self.body.discard)
            return
        # Chunks arrive at 64 KiB: one executor hop per MiB rather than per chunk (each hop costs
        # the event loop more than writing the chunk); at most FEED_BYTES wait in memory.
        if self.pending_bytes == 0:
            self.pending = []
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.pending_bytes >= FEED_BYTES:
            await self._feed_pending()

    async def _feed_pending(self) -> None:
        """Hand the buffered chunks to the reader (temp files are written in the executor)."""
        if self.body is None or self.problem is not None or not self.pending_bytes:
            return
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        try:
            await self.run_blocking(self.body.feed, data)
            return
        except MultipartError as exc:
            self.problem = (400, f"malformed multipart body: {exc}")
        except OSError as exc:  # disk full while receiving: nothing is kept, the client may retry
            log.warning("STOW body could not be written: %s", exc)
            self.problem = (503, f"the archive cannot store the upload now: {exc.strerror or exc}")
        await self.run_blocking(self.body.discard)

    def on_connection_close(self) -> None:
        if self.body is not None:
            self.body.discard()
            self.body = None

    async def post(self, study: str | None = None) -> None:
        await self._feed_pending()
        if self.problem is not None:
            raise ProblemError(*self.problem)
        assert self.body is not None
        try:
            parts = self.body.finish()
        except MultipartError as exc:
            raise ProblemError(400, str(exc)) from exc
        finally:
            self.body = None
        if not parts:
            raise ProblemError(400, "the multipart body has no parts")
        outcomes: list[StoreOutcome | None] = [None] * len(parts)
        dicom_parts: list[int] = []
        for position, part in enumerate(parts):
            if part.content_type in ("application/dicom", ""):
                dicom_parts.append(position)
            else:
                part.path.unlink(missing_ok=True)
                outcomes[position] = StoreOutcome(
                    StoreStatus.REJECTED,
                    failure_status=SOP_UNSUPPORTED_MEDIA,
                    reason=f"part of type {part.content_type} is not application/dicom",
                )
        scope = self.identity.scope if self.identity is not None else None
        if scope is not None:  # a user limited to study groups stores only into them
            allowed = await self.run_blocking(
                security_of(self.ctx).may_store_files, scope, [parts[i].path for i in dicom_parts]
            )
            for position, (ok, sop_class, sop_instance) in zip(list(dicom_parts), allowed, strict=True):
                if not ok:
                    parts[position].path.unlink(missing_ok=True)
                    dicom_parts.remove(position)
                    outcomes[position] = StoreOutcome(
                        StoreStatus.REJECTED,
                        sop_class_uid=sop_class,
                        sop_instance_uid=sop_instance,
                        failure_status=NOT_AUTHORIZED,
                        reason="outside the study groups of this account",
                    )
        # One index transaction for the request; files made durable in parallel (archive.ingest_batch).
        stored = (
            await self.run_blocking(
                self.ctx.archive.ingest_batch,
                [(parts[i].path, parts[i].sha256 or None) for i in dicom_parts],
                study,
            )
            if dicom_parts
            else []
        )
        for position, outcome in zip(dicom_parts, stored, strict=True):
            outcomes[position] = outcome
        self._respond([o for o in outcomes if o is not None])

    def _respond(self, outcomes: list[StoreOutcome]) -> None:
        self.note_audit(studies=[o.study_instance_uid for o in outcomes if o.ok and o.study_instance_uid])
        base = f"{self.request.protocol}://{self.request.host}/dicom-web"
        referenced: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for outcome in outcomes:
            item: dict[str, Any] = {
                "00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]}
                if outcome.sop_class_uid
                else {"vr": "UI"},
                "00081155": {"vr": "UI", "Value": [outcome.sop_instance_uid]}
                if outcome.sop_instance_uid
                else {"vr": "UI"},
            }
            if outcome.ok:
                item["00081190"] = {
                    "vr": "UR",
                    "Value": [
                        f"{base}/studies/{outcome.study_instance_uid}/series/{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
                    ],
                }
                referenced.append(item)
            else:
                item["00081197"] = {"vr": "US", "Value": [outcome.failure_status or CANNOT_UNDERSTAND]}
                if outcome.reason:
                    item["00090010"] = {"vr": "LO", "Value": ["TESSERA"]}
                    item["00091001"] = {"vr": "LT", "Value": [outcome.reason[:10240]]}
                failed.append(item)
                log.info(
                    "STOW rejected %s: %s", outcome.sop_instance_uid or "(unidentified part)", outcome.reason
                )
        body: dict[str, Any] = {}
        study = next((o.study_instance_uid for o in outcomes if o.ok), None)
        if study:
            body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        if referenced:
            body["00081199"] = {"vr": "SQ", "Value": referenced}
        if failed and not referenced and all(_temporary(o) for o in outcomes):
            status = 503  # out of storage or database: PS3.18 8.5 Service Unavailable, try again later
            self.set_header("Retry-After", "30")
        elif failed and not referenced:
            status = 409
        elif failed:
            status = 202
        else:
            status = 200
        self.write_json(body, "application/dicom+json", status)


def _temporary(outcome: StoreOutcome) -> bool:
    """Refused for lack of disk space or database (0xA700 from the archive), not for the instance itself."""
    return outcome.failure_status == OUT_OF_RESOURCES and outcome.reason.startswith(
        ("storage error", "database unavailable")
    )


def _parameter(content_type: str, name: str) -> str | None:
    """A parameter of a Content-Type value, unquoted (None when absent)."""
    match = re.search(rf';\s*{name}\s*=\s*(?:"([^"]*)"|([^;\s]+))', content_type, re.IGNORECASE)
    if not match:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)
