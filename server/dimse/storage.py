"""C-STORE SCP: every received instance goes through the archive's one ingest path.

The data set is written to the archive's temp area exactly as it arrived (File Meta
Information in front of the encoded bytes, no decode/re-encode), and success is only
answered once ``Archive.ingest_temp`` has made it durable and indexed it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import zlib
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event

from server.archive.archive import Archive, StoreOutcome
from server.archive.dicomfile import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
)
from server.dimse.access import NOT_AUTHORIZED, DimseOperation, PduLimit, PeerDirectory, remote_ae_title
from server.dimse.audit import AuditUnavailable, DimseAudit

log = logging.getLogger(__name__)

SUCCESS = 0x0000
_ERROR_COMMENT_MAX = 64  # ErrorComment is LO


def status_dataset(status: int, comment: str = "") -> Dataset:
    """A DIMSE status, with the reason in ErrorComment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:_ERROR_COMMENT_MAX]
    return ds


def status_for_outcome(outcome: StoreOutcome) -> Dataset:
    """The C-STORE answer for what the archive did, matching STOW-RS for the same outcome.

    A duplicate kept under policy "keep" is a success: the instance is in the archive
    (PS3.4 has no warning status that means "already present").
    """
    if outcome.ok:
        return status_dataset(SUCCESS)
    return status_dataset(outcome.failure_status or CANNOT_UNDERSTAND, outcome.reason)


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HEAD_BYTES = 1 << 20  # the identifying elements of group 0008 lie well inside the first MiB


def _identify(event: Event) -> tuple[str, str]:
    """SOP Class and Instance UID of the received data set, reading only its first elements."""
    syntax = UID(event.context.transfer_syntax)
    with cast(BytesIO, event.request.DataSet).getbuffer() as view:
        if syntax.is_deflated:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(view, _HEAD_BYTES)
        else:
            head = bytes(view[:_HEAD_BYTES])
    ds = read_dataset(
        BytesIO(head),
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, vr, length: cast(BaseTag, tag) > 0x00080018,
    )
    return str(ds.get("SOPClassUID", "") or "").strip(), str(ds.get("SOPInstanceUID", "") or "").strip()


class StorageSCP:
    """Answers C-STORE requests; ``access`` None means the association was ours (C-GET as SCU)."""

    def __init__(
        self,
        archive: Archive,
        access: PeerDirectory | None,
        pdu_limit: PduLimit | None = None,
        audit: DimseAudit | None = None,
    ) -> None:
        self.archive = archive
        self.access = access
        self.pdu_limit = pdu_limit
        self.audit = audit

    def handle_store(self, event: Event) -> Dataset:
        calling_ae = remote_ae_title(event.assoc)
        if self.access is not None and not self.access.permits(calling_ae, DimseOperation.STORE):
            log.warning("C-STORE from unknown AE %r refused", calling_ae)
            reason = self.access.refusal(calling_ae, DimseOperation.STORE)
            if self.audit is not None:
                with contextlib.suppress(AuditUnavailable):
                    self.audit.refused(event, "C-STORE", reason)
            return status_dataset(NOT_AUTHORIZED, reason)
        if self.pdu_limit is not None and self.pdu_limit.breached(event.assoc):
            return status_dataset(OUT_OF_RESOURCES, "PDU over the negotiated maximum length")
        try:
            return self._store(event, calling_ae)
        except Exception as exc:  # never let an unexpected error kill the association thread silently
            log.exception("C-STORE from %r failed", calling_ae)
            return status_dataset(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")

    def _store(self, event: Event, calling_ae: str) -> Dataset:
        context_class = str(event.context.abstract_syntax)
        try:
            sop_class, sop_instance = _identify(event)
        except Exception as exc:
            log.info("C-STORE from %r: cannot parse the data set: %s", calling_ae, exc)
            return status_dataset(CANNOT_UNDERSTAND, f"cannot parse the data set: {exc}")
        # A garbled UID is left to the archive's parser, which names the problem (0xC000).
        if _UID.match(sop_class) and sop_class != context_class:
            return status_dataset(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOP Class {sop_class} sent on a {context_class} context",
            )
        if sop_instance and sop_instance != str(event.request.AffectedSOPInstanceUID):
            return status_dataset(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPInstanceUID differs from the request's"
            )
        meta = event.file_meta
        meta.SourceApplicationEntityTitle = calling_ae
        head = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
        digest = hashlib.sha256(head)
        temp_fh, temp_path = self.archive.blobs.new_temp()
        try:
            # The encoded data set exactly as received (what event.encoded_dataset() returns), from
            # pynetdicom's buffer without a copy: a whole-slide instance may be gigabytes.
            with temp_fh, cast(BytesIO, event.request.DataSet).getbuffer() as body:
                temp_fh.write(head)
                temp_fh.write(body)
                digest.update(body)
        except OSError as exc:
            temp_path.unlink(missing_ok=True)
            log.warning("C-STORE from %r: cannot write the temp file: %s", calling_ae, exc)
            return status_dataset(OUT_OF_RESOURCES, f"storage error: {exc.strerror or exc}")
        security = self.access.security if self.access is not None else None
        scope = self.access.scope(calling_ae) if self.access is not None else None
        # An AE whose account is limited to study groups stores only into them.
        if (
            scope is not None
            and security is not None
            and not security.may_store_files(scope, [temp_path])[0][0]
        ):
            temp_path.unlink(missing_ok=True)
            reason = "outside the study groups of this AE's account"
            if self.audit is not None:
                try:
                    self.audit.stored(event, "", "", False, reason)
                except AuditUnavailable:
                    return status_dataset(OUT_OF_RESOURCES, "the audit trail cannot be written")
            return status_dataset(NOT_AUTHORIZED, reason)
        outcome = self.archive.ingest_temp(temp_path, digest.hexdigest())
        if self.audit is not None:
            try:
                self.audit.stored(event, outcome.study_instance_uid, "", outcome.ok, outcome.reason)
            except AuditUnavailable:
                return status_dataset(OUT_OF_RESOURCES, "the audit trail cannot be written")
        if not outcome.ok:
            log.info(
                "C-STORE from %r rejected %s: 0x%04X %s",
                calling_ae,
                outcome.sop_instance_uid or sop_instance,
                outcome.failure_status,
                outcome.reason,
            )
        return status_for_outcome(outcome)
