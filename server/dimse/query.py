"""C-FIND identifiers to and from the archive's one matcher (``server.archive.query``).

An identifier's elements become ``QuerySpec.matches`` as value strings, exactly as
QIDO-RS query parameters do (wildcards, ranges and backslash lists untouched; an
empty value asks for the attribute back), so C-FIND and QIDO-RS match identically.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
)

from server.archive.archive import Archive
from server.archive.query import QueryError, QueryLevel, QueryResult, QuerySpec, run_query
from server.dimse.access import NOT_AUTHORIZED, DimseOperation, PeerDirectory, remote_ae_title
from server.dimse.audit import AuditUnavailable, DimseAudit
from server.dimse.storage import status_dataset

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

QUERY_RETRIEVE_LEVELS: dict[str, QueryLevel] = {
    "PATIENT": QueryLevel.PATIENT,
    "STUDY": QueryLevel.STUDY,
    "SERIES": QueryLevel.SERIES,
    "IMAGE": QueryLevel.INSTANCE,
}
UNIQUE_KEYS: dict[QueryLevel, str] = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.INSTANCE: "SOPInstanceUID",
}
_PATIENT_ROOT = {
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
}
# Keys this SCP fills itself rather than from the index.
_ANSWERED_HERE = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}


class IdentifierError(Exception):
    """An identifier this SCP cannot act on; ``status`` is the DIMSE failure to answer."""

    def __init__(self, reason: str, status: int = IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def query_level(identifier: Dataset, information_model: str) -> QueryLevel:
    """The QueryRetrieveLevel, checked against the information model (Study Root has no PATIENT)."""
    text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    level = QUERY_RETRIEVE_LEVELS.get(text)
    if level is None:
        raise IdentifierError(f"QueryRetrieveLevel {text!r} is not PATIENT, STUDY, SERIES or IMAGE")
    if level is QueryLevel.PATIENT and information_model not in _PATIENT_ROOT:
        raise IdentifierError("the Study Root information model has no PATIENT level")
    return level


def value_string(element: DataElement) -> str:
    """An identifier value as the matcher takes it: DICOM text, multiple values joined by backslash."""
    value = element.value
    if value is None or element.VR == "SQ" or isinstance(value, bytes | bytearray):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


@dataclass
class FindRequest:
    """A C-FIND identifier, parsed: the query, and the keys the SCU asked to get back."""

    spec: QuerySpec
    requested: list[str]


def find_request(identifier: Dataset, information_model: str, limit: int) -> FindRequest:
    level = query_level(identifier, information_model)
    spec = QuerySpec(level=level, limit=limit)
    requested: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or element.tag.group in (0x0000, 0x0002) or element.tag.is_private:
            continue
        requested.append(keyword)
        if keyword in _ANSWERED_HERE:
            continue
        spec.matches[keyword] = value_string(element)
    unique = UNIQUE_KEYS[level]
    spec.matches.setdefault(unique, "")
    return FindRequest(spec, requested)


def response_identifier(result: QueryResult, request: FindRequest, retrieve_ae_title: str) -> Dataset:
    """One C-FIND match: the requested keys and the level's unique key, nothing else."""
    wanted = {*request.requested, UNIQUE_KEYS[request.spec.level]}
    tags = {f"{tag_for_keyword(k):08X}": k for k in wanted if tag_for_keyword(k) is not None}
    document = {
        tag: {"vr": element["vr"]} if "BulkDataURI" in element or "InlineBinary" in element else element
        for tag, element in result.dataset.items()
        if tag in tags
    }
    ds = Dataset.from_json(document)
    for tag, keyword in tags.items():
        if keyword not in ds and keyword not in _ANSWERED_HERE:
            ds.add_new(int(tag, 16), dictionary_VR(keyword), None)
    level_name = next(n for n, lv in QUERY_RETRIEVE_LEVELS.items() if lv is request.spec.level)
    ds.QueryRetrieveLevel = level_name
    if "RetrieveAETitle" in wanted:
        ds.RetrieveAETitle = retrieve_ae_title
    if "InstanceAvailability" in wanted:
        ds.InstanceAvailability = "ONLINE"
    if not json.dumps(document).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


class QuerySCP:
    """Answers C-FIND (Patient Root and Study Root) from the archive index."""

    def __init__(
        self,
        archive: Archive,
        access: PeerDirectory,
        ae_title: str,
        limit: int,
        audit: DimseAudit | None = None,
    ) -> None:
        self.archive = archive
        self.access = access
        self.ae_title = ae_title
        self.limit = limit
        self.audit = audit

    def handle_find(self, event: Event) -> Iterator[tuple[Dataset | int, Dataset | None]]:
        calling_ae = remote_ae_title(event.assoc)
        if not self.access.permits(calling_ae, DimseOperation.FIND):
            log.warning("C-FIND from unknown AE %r refused", calling_ae)
            reason = self.access.refusal(calling_ae, DimseOperation.FIND)
            if self.audit is not None:
                with contextlib.suppress(AuditUnavailable):
                    self.audit.refused(event, "C-FIND", reason)
            yield status_dataset(NOT_AUTHORIZED, reason), None
            return
        try:
            request = find_request(event.identifier, str(event.request.AffectedSOPClassUID), self.limit)
            scope = self.access.scope(calling_ae)
            if scope is not None:  # the AE's account is limited to study groups
                request.spec.scope = scope.condition()
            with self.archive.sessions() as session:
                results = run_query(session, request.spec)
        except IdentifierError as exc:
            yield status_dataset(exc.status, exc.reason), None
            return
        except QueryError as exc:
            yield status_dataset(UNABLE_TO_PROCESS, str(exc)), None
            return
        except Exception as exc:
            log.exception("C-FIND from %r failed", calling_ae)
            yield status_dataset(UNABLE_TO_PROCESS, f"cannot decode or run the query: {exc}"), None
            return
        if self.audit is not None:
            try:
                self.audit.queried(event, request.spec.level.name, dict(request.spec.matches), len(results))
            except AuditUnavailable:
                yield status_dataset(UNABLE_TO_PROCESS, "the audit trail cannot be written"), None
                return
        if len(results) >= self.limit:
            log.warning("C-FIND from %r: answer cut at %d matches", calling_ae, self.limit)
        for result in results:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, response_identifier(result, request, self.ae_title)
