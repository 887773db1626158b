"""C-FIND identifiers to and from the archive's one matcher (``server.archive.query``).

An identifier's elements become ``QuerySpec.matches`` as value strings, exactly as
QIDO-RS query parameters do (wildcards, ranges and backslash lists untouched; an
empty value asks for the attribute back), so C-FIND and QIDO-RS match identically.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.jsonrep import JSON_VALUE_KEYS, convert_to_python_number
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

    @functools.cached_property
    def answer_tags(self) -> dict[str, str]:
        """Tag (as in DICOM JSON) -> keyword of every key an answer carries, worked out once per request."""
        wanted = {*self.requested, UNIQUE_KEYS[self.spec.level]}
        tags = ((tag_for_keyword(k), k) for k in wanted)
        return {f"{tag:08X}": keyword for tag, keyword in tags if tag is not None}


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


# VRs whose DICOM JSON values (strings or numbers) are the element's values as pydicom takes them.
_PLAIN_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
    | {"IS", "DS", "US", "UL", "SL", "SS", "SV", "UV", "FL", "FD"}
)
_LEVEL_NAMES = {level: name for name, level in QUERY_RETRIEVE_LEVELS.items()}


def _ascii(values: list[Any]) -> bool:
    """Whether a DICOM JSON value list has only ASCII text (else the answer is sent as UTF-8)."""
    for value in values:
        if type(value) is str:
            if not value.isascii():
                return False
        elif type(value) is dict and all(type(group) is str for group in value.values()):  # a person name
            if not all(group.isascii() for group in value.values()):
                return False
        elif not isinstance(value, int | float) and not json.dumps(value, ensure_ascii=False).isascii():
            return False
    return True


def _person_name(value: dict[str, str]) -> str:
    """A DICOM JSON person name as PN text, exactly as pydicom's JSON reader makes it."""
    components = ["", "", ""] if "Phonetic" in value else ["", ""] if "Ideographic" in value else [""]
    for index, group in enumerate(("Alphabetic", "Ideographic", "Phonetic")):
        if group in value:
            components[index] = value[group]
    return "=".join(components)


def data_element(tag: str, element: dict[str, Any]) -> DataElement:
    """``DataElement.from_json`` of one DICOM JSON element, the same element, built directly for the
    plain values an index answer holds (pydicom's reader costs more than the query per match);
    sequences, binaries and anything unusual go through pydicom's reader. Values are not validated
    again: they are the archive's own, and validation here would only log warnings."""
    vr = element["vr"]
    values = element.get("Value")
    if len(element) == 1:
        return DataElement(int(tag, 16), vr, empty_value_for_VR(vr), validation_mode=config.IGNORE)
    if len(element) == 2 and type(values) is list and values:
        if vr in _PLAIN_VRS and all(type(v) in (str, int, float) for v in values):
            value = convert_to_python_number(values[0] if len(values) == 1 else values, vr)
            return DataElement(int(tag, 16), vr, value, validation_mode=config.IGNORE)
        if vr == "PN" and all(type(v) is dict for v in values):
            names = [_person_name(v) for v in values]
            value = names[0] if len(names) == 1 else names
            return DataElement(int(tag, 16), vr, value, validation_mode=config.IGNORE)
    key = next((k for k in JSON_VALUE_KEYS if k in element), None)
    return DataElement.from_json(Dataset, tag, vr, element[key] if key else [""], key)


def response_identifier(result: QueryResult, request: FindRequest, retrieve_ae_title: str) -> Dataset:
    """One C-FIND match: the requested keys and the level's unique key, nothing else."""
    tags = request.answer_tags
    ds = Dataset()
    ascii_only = True
    for tag, element in result.dataset.items():
        if tag not in tags:
            continue
        if "BulkDataURI" in element or "InlineBinary" in element:
            element = {"vr": element["vr"]}
        elif ascii_only and "Value" in element:
            ascii_only = _ascii(element["Value"])
        ds.add(data_element(tag, element))
    for tag, keyword in tags.items():
        if keyword not in ds and keyword not in _ANSWERED_HERE:
            ds.add_new(int(tag, 16), dictionary_VR(keyword), None)
    ds.QueryRetrieveLevel = _LEVEL_NAMES[request.spec.level]
    if "RetrieveAETitle" in tags.values():
        ds.RetrieveAETitle = retrieve_ae_title
    if "InstanceAvailability" in tags.values():
        ds.InstanceAvailability = "ONLINE"
    if not ascii_only:
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
