"""WADO-RS: retrieve instances, metadata, frames and bulk data (PS3.18 10.4)."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from server.archive.archive import StoredInstance
from server.dicomweb.media import (
    EXPLICIT_VR_LE,
    FrameChoice,
    choose_frame_encoding,
    choose_instance_syntax,
    parse_accept,
)
from server.dicomweb.multipart import closing, new_boundary, part_header
from server.imaging.frames import FrameDecodeError, decode_frame, native_bytes, read_frame_bytes
from server.web.base import BaseHandler, ProblemError

CHUNK = 1024 * 1024
_FRAME_LIST = re.compile(r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*$")


class WadoBase(BaseHandler):
    async def instances(
        self, study: str, series: str | None = None, sop: str | None = None, *, with_index: bool = False
    ) -> list[StoredInstance]:
        found = await self.run_blocking(
            lambda: self.ctx.archive.stored_instances(study, series, sop, with_frame_index=with_index)
        )
        if not found:
            what = "instance" if sop else "series" if series else "study"
            raise ProblemError(404, f"no {what} with that UID in the archive")
        return found

    def base_url(self) -> str:
        return f"{self.request.protocol}://{self.request.host}/dicom-web"


class RetrieveHandler(WadoBase):
    """GET a study, series or instance as multipart/related; type="application/dicom"."""

    async def get(self, study: str, series: str | None = None, sop: str | None = None) -> None:
        found = await self.instances(study, series, sop)
        ranges = parse_accept(self.request.headers.get("Accept"))
        syntaxes = [choose_instance_syntax(ranges, i.transfer_syntax_uid) for i in found]
        if any(s is None for s in syntaxes):
            raise ProblemError(
                406,
                "instances are available as stored (transfer-syntax=*) or as Explicit VR Little Endian "
                f"({EXPLICIT_VR_LE}); the Accept header allows neither",
            )
        # Decided before the first byte is sent: a multipart answer cannot turn into a 406 halfway.
        for instance, syntax in zip(found, syntaxes, strict=True):
            if syntax != instance.transfer_syntax_uid and not _can_decode(instance.transfer_syntax_uid):
                raise ProblemError(
                    406,
                    f"instance {instance.sop_instance_uid} is stored as {instance.transfer_syntax_uid}, which this server cannot decompress; ask for transfer-syntax=*",
                )
        boundary = new_boundary()
        self.set_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
        for instance, syntax in zip(found, syntaxes, strict=True):
            assert syntax is not None
            location = f"{self.base_url()}/studies/{instance.study_instance_uid}/series/{instance.series_instance_uid}/instances/{instance.sop_instance_uid}"
            self.write(part_header(boundary, f"application/dicom; transfer-syntax={syntax}", location))
            if syntax == instance.transfer_syntax_uid:
                await self._stream_file(instance)
            else:
                self.write(await self.run_blocking(_transcode_to_explicit, instance))
            self.write(b"\r\n")
            await self.flush()
        self.write(closing(boundary))
        await self.finish()

    async def _stream_file(self, instance: StoredInstance) -> None:
        with open(instance.path, "rb") as fh:
            while True:
                chunk = await self.run_blocking(fh.read, CHUNK)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()


def _can_decode(syntax: str) -> bool:
    uid = UID(syntax)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def _transcode_to_explicit(instance: StoredInstance) -> bytes:
    ds = dcmread(instance.path)
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except Exception as exc:
        raise ProblemError(
            406, f"instance {instance.sop_instance_uid} cannot be decompressed: {exc}"
        ) from exc
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class MetadataHandler(WadoBase):
    """GET .../metadata: DICOM JSON from the index, bulk data as BulkDataURIs."""

    async def get(self, study: str, series: str | None = None, sop: str | None = None) -> None:
        found = await self.instances(study, series, sop)
        headers = await self.run_blocking(self.ctx.archive.headers, [i.sop_instance_uid for i in found])
        documents = []
        for instance in found:
            prefix = f"{self.base_url()}/studies/{instance.study_instance_uid}/series/{instance.series_instance_uid}/instances/{instance.sop_instance_uid}/"
            document: dict[str, Any] = json.loads(headers[instance.sop_instance_uid])
            for element in document.values():
                uri = element.get("BulkDataURI") if isinstance(element, dict) else None
                if uri and not uri.startswith("http"):
                    element["BulkDataURI"] = prefix + uri
            documents.append(document)
        self.write_json(documents, "application/dicom+json")


class FramesHandler(WadoBase):
    """GET .../frames/{list}: stored frames passed through untouched when the client accepts them."""

    async def get(self, study: str, series: str, sop: str, frames: str) -> None:
        frame_list = frames
        if not _FRAME_LIST.match(frame_list):
            raise ProblemError(
                400, f"frame list {frame_list[:64]!r} is not comma-separated frame numbers from 1"
            )
        (instance,) = await self.instances(study, series, sop, with_index=True)
        await self.send_frames(
            instance, [int(n) for n in frame_list.split(",")], self.request.headers.get("Accept")
        )

    async def send_frames(self, instance: StoredInstance, frames: list[int], accept: str | None) -> None:
        if instance.rows is None:
            raise ProblemError(404, "this instance has no pixel data")
        for number in frames:
            if number > instance.number_of_frames:
                raise ProblemError(
                    404, f"frame {number} is beyond the instance's {instance.number_of_frames} frames"
                )
        choice = choose_frame_encoding(parse_accept(accept), instance.transfer_syntax_uid)
        if choice is None:
            raise ProblemError(
                406,
                f"frames are stored as {instance.transfer_syntax_uid}; ask for that syntax, transfer-syntax=*, "
                "or application/octet-stream (uncompressed)",
            )
        if instance.frame_index is None and not choice.transcode:
            choice = FrameChoice("application/octet-stream", EXPLICIT_VR_LE, True)
        header = await self.run_blocking(self.ctx.headers.get, instance) if choice.transcode else None
        parts: list[bytes] = []
        for number in frames:
            try:
                if header is not None:
                    data = await self.run_blocking(_native_frame, instance, header, number - 1)
                else:
                    data = await self.run_blocking(read_frame_bytes, instance, number - 1)
            except FrameDecodeError as exc:
                raise ProblemError(422, str(exc)) from exc
            parts.append(data)
        boundary = new_boundary()
        self.set_header("Content-Type", f'multipart/related; type="{choice.media_type}"; boundary={boundary}')
        for data in parts:
            self.write(
                part_header(boundary, f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}")
            )
            self.write(data)
            self.write(b"\r\n")
        self.write(closing(boundary))
        await self.finish()


def _native_frame(instance: StoredInstance, header: Dataset, frame: int) -> bytes:
    return native_bytes(decode_frame(instance, header, frame), header)


class BulkDataHandler(FramesHandler):
    """GET .../bulk/{tag}: the value of a top-level bulk-data element as octet-stream."""

    async def get(self, study: str, series: str, sop: str, tag: str) -> None:
        (instance,) = await self.instances(study, series, sop, with_index=True)
        if tag.upper() == "7FE00010":
            frames = list(range(1, instance.number_of_frames + 1))
            accept = self.request.headers.get("Accept") or "*/*"
            await self.send_frames(instance, frames, accept)
            return
        value = await self.run_blocking(_element_value, instance, int(tag, 16))
        if value is None:
            raise ProblemError(404, f"instance has no bulk data element {tag.upper()}")
        boundary = new_boundary()
        self.set_header(
            "Content-Type", f'multipart/related; type="application/octet-stream"; boundary={boundary}'
        )
        self.write(part_header(boundary, "application/octet-stream"))
        self.write(value)
        self.write(b"\r\n" + closing(boundary))
        await self.finish()


def _element_value(instance: StoredInstance, tag: int) -> bytes | None:
    ds = dcmread(instance.path, stop_before_pixels=True)
    element = ds.get(tag)
    if element is None or not isinstance(element.value, bytes | bytearray):
        return None
    return bytes(element.value)
