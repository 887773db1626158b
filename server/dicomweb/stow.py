"""STOW-RS: store instances from a streamed multipart/related body (PS3.18 10.5)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado.http1connection import HTTP1Connection
from tornado.web import stream_request_body

from server.archive.archive import StoreOutcome, StoreStatus
from server.archive.blobs import hash_file
from server.archive.dicomfile import CANNOT_UNDERSTAND
from server.dicomweb.multipart import MultipartError, MultipartReader, ReceivedPart, boundary_of
from server.web.base import BaseHandler, ProblemError

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
SOP_UNSUPPORTED_MEDIA = 0x0122  # "Refused: SOP class not supported" used for non-DICOM parts


@stream_request_body
class StowHandler(BaseHandler):
    """POST /studies[/{study}]: each part is stored through the archive's one ingest path."""

    reader: MultipartReader | None
    single: ReceivedPart | None

    def prepare(self) -> None:
        self.reader, self.single = None, None
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
            connection.set_max_body_size(limit)
        content_type = self.request.headers.get("Content-Type", "")
        main = content_type.split(";", 1)[0].strip().lower()
        if main == "multipart/related":
            params = content_type.lower()
            if "type=" in params and "application/dicom" not in params:
                raise ProblemError(415, 'STOW-RS accepts multipart/related; type="application/dicom" only')
            try:
                self.reader = MultipartReader(boundary_of(content_type), self.ctx.archive.blobs.new_temp)
            except MultipartError as exc:
                raise ProblemError(400, str(exc)) from exc
        elif main == "application/dicom":
            fh, path = self.ctx.archive.blobs.new_temp()
            fh.close()
            self.single = ReceivedPart(path, {"content-type": "application/dicom"})
            self._single_fh = open(path, "wb")  # noqa: SIM115 - closed in post() / on_connection_close()
        else:
            raise ProblemError(
                415, f'Content-Type {main or "(none)"} is not multipart/related; type="application/dicom"'
            )

    def data_received(self, chunk: bytes) -> None:
        if self.reader is not None:
            try:
                self.reader.feed(chunk)
            except MultipartError as exc:
                self.reader.discard()
                self.reader = None
                self._bad_body = str(exc)
        elif self.single is not None:
            self._single_fh.write(chunk)

    def on_connection_close(self) -> None:
        if self.reader is not None:
            self.reader.discard()
        if self.single is not None:
            self._single_fh.close()
            self.single.path.unlink(missing_ok=True)

    async def post(self, study: str | None = None) -> None:
        study_uid = study
        bad = getattr(self, "_bad_body", None)
        if bad:
            raise ProblemError(400, f"malformed multipart body: {bad}")
        if self.single is not None:
            self._single_fh.close()
            parts = [self.single]
            self.single = None
        else:
            assert self.reader is not None
            try:
                parts = self.reader.finish()
            except MultipartError as exc:
                raise ProblemError(400, str(exc)) from exc
            self.reader = None
        if not parts:
            raise ProblemError(400, "the multipart body has no parts")
        # Parts are stored concurrently: fsync waits overlap and the event loop stays free.
        outcomes = list(await asyncio.gather(*(self._store_part(part, study_uid) for part in parts)))
        self._respond(outcomes, study_uid)

    async def _store_part(self, part: ReceivedPart, study_uid: str | None) -> StoreOutcome:
        if part.content_type not in ("application/dicom", ""):
            part.path.unlink(missing_ok=True)
            return StoreOutcome(
                StoreStatus.REJECTED,
                failure_status=SOP_UNSUPPORTED_MEDIA,
                reason=f"part of type {part.content_type} is not application/dicom",
            )
        return await self.run_blocking(self._ingest, part, study_uid)

    def _ingest(self, part: ReceivedPart, study_uid: str | None) -> StoreOutcome:
        digest = part.sha256 or hash_file(part.path)
        return self.ctx.archive.ingest_temp(part.path, digest, expected_study=study_uid)

    def _respond(self, outcomes: list[StoreOutcome], study_uid: str | None) -> None:
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
                if outcome.status is StoreStatus.KEPT_EXISTING:
                    item["00081196"] = {"vr": "US", "Value": [0xB007]}
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
        study = study_uid or next((o.study_instance_uid for o in outcomes if o.ok), None)
        if study:
            body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        if referenced:
            body["00081199"] = {"vr": "SQ", "Value": referenced}
        if failed and not referenced:
            status = 409
        elif failed:
            status = 202
        else:
            status = 200
        self.write_json(body, "application/dicom+json", status)
