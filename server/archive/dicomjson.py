"""DICOM JSON (PS3.18 F.2) of a parsed header, written from the raw element bytes.

Every instance's header is stored as DICOM JSON at ingest, so this runs once per
instance on the ingest path. pydicom's ``Dataset.to_json_dict`` first turns every raw
element into a ``DataElement`` (hooks, validation, value objects) and costs more than
parsing the file; here the common elements (little endian text, numbers, binaries) go
straight from bytes to JSON values. The output is exactly what ``to_json_dict`` gives,
element by element: anything this module does not reproduce exactly (sequences,
ambiguous or unknown VRs, code extensions, undecodable text, numbers outside the plain
syntax) is handed to pydicom for that element.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SPLIT_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})  # pydicom keeps DA/DT/TM as str
_TEXT_VRS = frozenset({"LO", "SH", "UC"})  # charset-decoded, multi-valued
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT"})  # charset-decoded, one value
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_NUMBER_SIZES = {vr: struct.calcsize("=" + fmt) for vr, fmt in _NUMBER_FORMATS.items()}
_IS = re.compile(r" *[+-]?[0-9]+ *")
_DS = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")
_ISO_2022 = "iso2022"
_DEFAULT_ENCODING = "iso8859"  # pydicom's default_encoding (latin-1) for non-text VRs


class _Fallback(Exception):
    """This element is left to pydicom."""


def dataset_json(
    ds: Dataset, bulk_threshold: int | None = None, bulk_uri: str = "bulk/{tag}"
) -> dict[str, Any]:
    """``ds.to_json_dict()`` with every binary inlined, except top-level binaries above ``bulk_threshold``.

    Those become ``{"vr": ..., "BulkDataURI": bulk_uri.format(tag=...)}`` instead (never base64-encoded).
    """
    encodings = _encodings(ds)
    document: dict[str, Any] = {}
    for tag, element in ds._dict.items():
        key = f"{tag:08X}"
        entry: dict[str, Any] | None = None
        if isinstance(element, RawDataElement):
            try:
                entry = _raw_json(element, encodings, bulk_threshold)
            except (_Fallback, UnicodeError, LookupError, struct.error, ValueError):
                entry = None
        if entry is None:
            converted = ds[tag]
            if (
                bulk_threshold is not None
                and converted.VR in _BINARY_VRS
                and converted.value is not None
                and len(converted.value) > bulk_threshold
            ):
                entry = {"vr": converted.VR}
            else:
                entry = converted.to_json_dict(None, 1 << 62)
        if "BulkDataURI" not in entry and len(entry) == 1 and entry["vr"] in _BINARY_VRS:
            value = ds._dict[tag].value
            if value and bulk_threshold is not None and len(value) > bulk_threshold:
                entry["BulkDataURI"] = bulk_uri.format(tag=key)
        document[key] = entry
    return document


def _encodings(ds: Dataset) -> str | None:
    """The one Python codec of the data set's text, or None when pydicom must decode it."""
    try:
        codecs = ds._character_set  # as pydicom decodes this data set's text
    except Exception:
        return None
    if isinstance(codecs, str):
        codecs = [codecs]
    if len(codecs) != 1 or str(codecs[0]).startswith(_ISO_2022):
        return None
    return str(codecs[0])


def _raw_json(raw: RawDataElement, encoding: str | None, bulk_threshold: int | None) -> dict[str, Any] | None:
    """The DICOM JSON of one raw element, or None to let pydicom convert it."""
    if not raw.is_little_endian:
        return None
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's, when it is unambiguous
        if raw.tag >> 16 & 1:
            return None
        entry = DicomDictionary.get(raw.tag)
        if entry is None or " " in entry[0]:
            return None
        vr = entry[0]
    value: bytes | None = raw.value
    if vr in ("SQ", "UN", "AT") or vr.startswith(("US or", "OB or")):
        return None
    if not value:
        return {"vr": vr}
    if vr in _BINARY_VRS:
        if bulk_threshold is not None and len(value) > bulk_threshold:
            return {"vr": vr}  # the caller adds the BulkDataURI
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        size = _NUMBER_SIZES[vr]
        if len(value) % size:
            return None
        return {"vr": vr, "Value": list(struct.unpack(f"<{len(value) // size}{fmt}", value))}
    values: list[Any]
    if vr in _SPLIT_STRING_VRS:
        values = value.decode(_DEFAULT_ENCODING).rstrip(" \x00").split("\\")
    elif vr == "UI":
        values = value.decode(_DEFAULT_ENCODING).rstrip("\x00 ").split("\\")
    elif vr == "AE":
        values = [s.strip() for s in value.decode(_DEFAULT_ENCODING).split("\\")]
    elif vr in _TEXT_VRS:
        values = [s.rstrip("\x00 ") for s in _decode(value, encoding).split("\\")]
    elif vr in _SINGLE_TEXT_VRS:
        values = [_decode(value, encoding).rstrip("\x00 ")]
    elif vr == "UR":
        values = [value.decode(_DEFAULT_ENCODING).rstrip()]
    elif vr == "PN":
        return _person_names(value, encoding)
    elif vr == "IS":
        items = value.decode(_DEFAULT_ENCODING).rstrip(" \x00").split("\\")
        if not all(_IS.fullmatch(item) for item in items):
            return None
        values = [int(item) for item in items]
    elif vr == "DS":
        items = value.decode(_DEFAULT_ENCODING).strip().rstrip(" \x00").split("\\")
        if not all(_DS.fullmatch(item) for item in items):
            return None
        values = [float(item) for item in items]
    else:
        return None
    if len(values) == 1 and values[0] == "":
        return {"vr": vr}  # an empty single value has no "Value"
    return {"vr": vr, "Value": values}


def _decode(value: bytes, encoding: str | None) -> str:
    if encoding is None or b"\x1b" in value:  # ISO 2022 escape sequences: pydicom switches character sets
        raise _Fallback
    return value.decode(encoding)


def _person_names(value: bytes, encoding: str | None) -> dict[str, Any] | None:
    text = _decode(value.rstrip(b"\x00 "), encoding)
    if not text:
        return {"vr": "PN"}
    names = []
    for name in text.split("\\"):
        groups = name.split("=")
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            return None  # pydicom's to_json_dict fails on an empty name among several: leave it that
        item = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            item["Ideographic"] = groups[1]
        if len(groups) > 2:
            item["Phonetic"] = groups[2]
        names.append(item)
    return {"vr": "PN", "Value": names}
