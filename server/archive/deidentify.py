"""De-identified export of a study: PS3.15 Annex E, Basic Application Level Confidentiality Profile.

Each attribute of Table E.1-1 gets its Basic Profile action, read from the table the installed
dicom-anonymizer package ships for edition ``ANNEX_E_EDITION`` (only the table: this module
applies it). UIDs are replaced consistently (the same original UID gives the same new UID
within one export, so references between the exported instances still resolve) by a keyed hash, so nobody without the export's key can map
a new UID back. Private attributes, curves and overlays go; every date and time the table
does not list goes too (Longitudinal Temporal Information: REMOVED). Pixel data is copied
byte for byte, so an instance with burned-in annotation is refused (or left out on request):
its pixels may show the patient's name. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

if TYPE_CHECKING:
    from server.archive.archive import Archive

# PS3.15 Table E.1-1, column "Basic Prof.", as the installed dicom-anonymizer package ships it
# (one module per edition of the standard; the package follows new editions). Actions:
# D dummy value, Z zero length (or dummy), X remove, U consistent new UID, and the
# combinations "A unless B is needed for the IOD" resolved as in ``ACTION_OF_COMBINATION``.
ANNEX_E_EDITION = "dicomfields_2026c"
# The package's category of each action code (its ALL_TAGS is the union of these).
_CATEGORY_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# Which single action a combined code takes. Tessera does not know each IOD's Type 1/2/3 rules
# per attribute, so it takes the choice that never breaks conformance: empty for X/Z (valid for
# Type 2 and 3), a dummy where D is an alternative (valid for Type 1).
ACTION_OF_COMBINATION = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}


@dataclass(frozen=True)
class RepeatingRule:
    """A row of the table for a repeating group: (50xx,eeee), (60xx,3000)... as a mask and value."""

    mask: int
    value: int
    action: str

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.value


def _load_table(edition: str) -> tuple[dict[int, str], tuple[RepeatingRule, ...]]:
    """Single tags and repeating-group rules of one edition, each with its resolved action.

    The package writes a single tag as ``(group, element)`` and a repeating group as
    ``(group, element, group_mask, element_mask)``; a tag matches when its masked group and
    element equal the masked ones of the row.
    """
    database = dicom_anonymization_database_selector(edition)
    unknown = set(database) - set(_CATEGORY_ACTIONS) - {"ALL_TAGS"}
    if unknown:
        raise ValueError(f"{edition}: action categories Tessera does not map: {sorted(unknown)}")
    single: dict[int, str] = {}
    repeating: list[RepeatingRule] = []
    for category, code in _CATEGORY_ACTIONS.items():
        action = ACTION_OF_COMBINATION.get(code, code)
        for row in database[category]:
            if len(row) == 4:
                group, element, group_mask, element_mask = row
                mask = (group_mask << 16) | element_mask
                repeating.append(RepeatingRule(mask, ((group << 16) | element) & mask, action))
                continue
            group, element = row
            tag = (group << 16) | element
            if single.setdefault(tag, action) != action:
                raise ValueError(f"{edition}: ({group:04X},{element:04X}) has two actions")
    if not single:
        raise ValueError(f"{edition}: the Annex E table is empty")
    return single, tuple(repeating)


BASIC_PROFILE, REPEATING_RULES = _load_table(ANNEX_E_EDITION)
# A repeating group from which the table removes an element is removed whole: Curve Data
# (50xx,xxxx) is all of a curve, and an overlay plane (60xx) without its Overlay Data (Type 1)
# is no longer a valid plane.
_REMOVED_GROUPS = frozenset(
    (rule.mask & 0xFFFF0000, rule.value & 0xFFFF0000) for rule in REPEATING_RULES if rule.action == "X"
)

# UIDs that name vocabularies and encodings, not patients or studies: never replaced.
_KEPT_UID_KEYWORDS = frozenset(
    {
        "SOPClassUID",
        "ReferencedSOPClassUID",
        "ReferencedSOPClassUIDInFile",
        "MediaStorageSOPClassUID",
        "TransferSyntaxUID",
        "ReferencedTransferSyntaxUIDInFile",
        "RelatedGeneralSOPClassUID",
        "OriginalSpecializedSOPClassUID",
        "SOPClassesInStudy",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "ImplementationClassUID",
        "PrivateInformationCreatorUID",
        "ReferencedColorPaletteInstanceUID",
    }
)
_KEPT_UIDS = frozenset(tag_for_keyword(k) for k in _KEPT_UID_KEYWORDS)
_DICOM_ROOT = "1.2.840.10008."
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
# Sequences whose action includes D (or U*) that are kept and cleaned item by item, because they
# carry the structure other objects need: SR content, presentation-state annotations, image
# references, the verifying observer. Their free text is dummied (``_FREE_TEXT``); every other
# attribute inside goes through the table like anywhere else. Any other D sequence is emptied:
# its items (codes naming an institution, a person, a device) are the identifying content.
_KEPT_SEQUENCES = frozenset(
    tag_for_keyword(k)
    for k in (
        "ContentSequence",
        "GraphicAnnotationSequence",
        "VerifyingObserverSequence",
        "ReferencedPerformedProcedureStepSequence",
        "ReferencedImageSequence",
        "SourceImageSequence",
    )
)
_CONTENT_SEQUENCES = frozenset(tag_for_keyword(k) for k in ("ContentSequence", "GraphicAnnotationSequence"))
# Free text of an SR TEXT item and of a presentation-state text object: may name anyone.
_FREE_TEXT = frozenset(tag_for_keyword(k) for k in ("TextValue", "UnformattedTextValue"))
BURNED_IN_ANNOTATION = 0x00280301

# Dummy values (action D) by value representation.
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UR": "",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "UN": b"\x00\x00",
}

# What the export says about itself (PS3.16 CID 7050 De-identification Method).
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
DEIDENTIFICATION_METHOD = [
    "PS3.15 E.1 Basic Profile (Tessera)",
    "UIDs replaced consistently",
    "dates and times removed",
    "private attributes removed",
]


class BurnedInAnnotationError(Exception):
    """Instances whose pixels may show identifying text: the export is refused."""

    def __init__(self, sop_instance_uids: list[str]) -> None:
        self.sop_instance_uids = sop_instance_uids
        shown = ", ".join(sop_instance_uids[:5]) + (" ..." if len(sop_instance_uids) > 5 else "")
        super().__init__(
            f"{len(sop_instance_uids)} instance(s) have BurnedInAnnotation=YES (identifying text may be "
            f"in the pixels, which are exported unchanged): {shown}; leave them out to export the rest"
        )


class Pseudonyms:
    """Consistent replacements within one export, keyed by a secret that is not stored.

    New UIDs are ``2.25.<128-bit integer>`` (PS3.5 B.2) from HMAC-SHA256(secret, original UID):
    the same UID always gives the same new UID with the same key, and different keys give
    unrelated ones, so two exports cannot be linked unless the caller reuses a key on purpose.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key if key is not None else secrets.token_bytes(32)
        self._uids: dict[str, str] = {}

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        original = original.strip("\0 ")
        if not original:
            return original
        new = self._uids.get(original)
        if new is None:
            new = "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))
            self._uids[original] = new
        return new

    def patient_id(self, original: str) -> str:
        return "ANON-" + self._digest("patient", original.strip()).hex()[:12].upper()

    @property
    def uid_map(self) -> dict[str, str]:
        return dict(self._uids)


def profile_action(tag: int) -> str | None:
    """The Basic Profile action of ``tag`` (combinations resolved), or None if the table has none."""
    action = BASIC_PROFILE.get(tag)
    if action is not None:
        return action
    for rule in REPEATING_RULES:
        if rule.matches(tag):
            return rule.action
    if any(tag & mask == value for mask, value in _REMOVED_GROUPS):
        return "X"
    return None


def _replace_uids(element: DataElement, pseudonyms: Pseudonyms) -> None:
    if element.VM > 1:
        element.value = [pseudonyms.uid(str(v)) for v in element.value]
    elif element.value:
        element.value = pseudonyms.uid(str(element.value))


def _is_identifying_uid(element: DataElement) -> bool:
    """A UID not named by the table is replaced too unless it names a class, syntax or vocabulary."""
    if element.tag in _KEPT_UIDS or element.is_empty:
        return False
    values = element.value if element.VM > 1 else [element.value]
    return any(not str(v).startswith(_DICOM_ROOT) for v in values)


def clean_dataset(ds: Dataset, pseudonyms: Pseudonyms, *, in_content: bool = False) -> None:
    """Apply the Basic Profile to ``ds`` and every nested item, in place."""
    ds.remove_private_tags()
    for tag in list(ds.keys()):
        element = ds[tag]
        action = profile_action(int(tag))
        if action is None and in_content and int(tag) in _FREE_TEXT:
            action = "D"
        vr = element.VR
        if action is None:
            if vr == "SQ":
                _clean_items(element, pseudonyms, in_content)
            elif vr == "UI" and _is_identifying_uid(element):
                _replace_uids(element, pseudonyms)
            elif vr in _TEMPORAL_VRS:
                del ds[tag]  # Longitudinal Temporal Information: removed
            continue
        if action == "X":
            del ds[tag]
        elif action == "Z":
            element.value = [] if vr == "SQ" else None
        elif vr == "SQ":  # D or U*: keep the structure and clean what it holds, or empty it
            if int(tag) in _KEPT_SEQUENCES:
                _clean_items(element, pseudonyms, in_content or int(tag) in _CONTENT_SEQUENCES)
            else:
                element.value = []
        elif action in ("U", "U*"):
            if vr == "UI":
                _replace_uids(element, pseudonyms)
            else:
                element.value = None
        elif action == "D":
            if vr == "UI":
                _replace_uids(element, pseudonyms)
            else:
                element.value = _DUMMY.get(vr)


def _clean_items(element: DataElement, pseudonyms: Pseudonyms, in_content: bool) -> None:
    for item in element.value or []:
        clean_dataset(item, pseudonyms, in_content=in_content)


def deidentify(ds: Dataset, pseudonyms: Pseudonyms) -> Dataset:
    """De-identify one instance (in place) and mark it as such; returns ``ds``."""
    patient_id = str(ds.get("PatientID", "") or "")
    clean_dataset(ds, pseudonyms)
    pseudonym = pseudonyms.patient_id(patient_id)  # Z allows a dummy: keeps one patient per export
    ds.PatientID = pseudonym
    ds.PatientName = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    meta = FileMetaDataset()
    old = getattr(ds, "file_meta", None)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = old.TransferSyntaxUID if old is not None else "1.2.840.10008.1.2.1"
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    return ds


def has_burned_in_annotation(ds: Dataset) -> bool:
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


@dataclass
class ExportReport:
    """What an export wrote: counts, the instances left out, and the new study UID."""

    instances: int = 0
    series: int = 0
    study_uid: str = ""
    left_out: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def export_study(
    paths: Iterable[tuple[str, Path]],
    write: Callable[[str, bytes], None],
    *,
    key: bytes | None = None,
    leave_out_burned_in: bool = False,
) -> ExportReport:
    """De-identify the stored files ``(sop_instance_uid, path)`` of one study; ``write(name, bytes)``.

    Burned-in annotation is checked on every instance before anything is written, so a
    refused export writes nothing.
    """
    items = list(paths)
    burned = []
    for sop_uid, path in items:
        header = dcmread(path, stop_before_pixels=True, specific_tags=[BURNED_IN_ANNOTATION])
        if has_burned_in_annotation(header):
            burned.append(sop_uid)
    if burned and not leave_out_burned_in:
        raise BurnedInAnnotationError(burned)
    pseudonyms = Pseudonyms(key)
    report = ExportReport(left_out=burned)
    series_numbers: dict[str, int] = {}
    counts: dict[str, int] = {}
    for sop_uid, path in items:
        if sop_uid in burned:
            continue
        ds = deidentify(dcmread(path), pseudonyms)
        series_uid = str(ds.SeriesInstanceUID)
        folder = series_numbers.setdefault(series_uid, len(series_numbers) + 1)
        counts[series_uid] = counts.get(series_uid, 0) + 1
        name = f"S{folder:03d}/I{counts[series_uid]:05d}.dcm"  # never a path built from a DICOM value
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        write(name, buffer.getvalue())
        report.files.append(name)
        report.instances += 1
        report.study_uid = str(ds.StudyInstanceUID)
    report.series = len(series_numbers)
    return report


def directory_writer(folder: Path) -> Callable[[str, bytes], None]:
    """Write export files under ``folder`` (created; names come from ``export_study`` only)."""

    def write(name: str, data: bytes) -> None:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    return write


def zip_writer(archive: zipfile.ZipFile) -> Callable[[str, bytes], None]:
    def write(name: str, data: bytes) -> None:
        archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)

    return write


def archived_study_files(archive: Archive, study_uid: str) -> list[tuple[str, Path]]:
    """The stored files of one study, in series and instance order of the index."""
    return [(i.sop_instance_uid, i.path) for i in archive.stored_instances(study_uid)]


def study_patient_ids(archive: Archive, study_uid: str) -> list[str]:
    """The original Patient ID of a study, for the audit record of its export."""
    from sqlalchemy import select

    from server.archive.models import Patient, Study

    with archive.sessions() as session:
        found = session.scalar(
            select(Patient.patient_id)
            .join(Study, Study.patient_pk == Patient.id)
            .where(Study.study_instance_uid == study_uid)
        )
    return [found] if found else []
