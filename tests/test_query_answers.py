"""How query answers are built (server/archive/query.py, server/dimse/query.py): the fast paths
give exactly what the general ones (pydicom's JSON reader, a sorted copy) would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from server.archive.archive import Archive
from server.archive.query import QueryLevel, QueryResult, run_query, spec_from_pairs
from server.dimse.query import data_element, find_request, response_identifier
from tests.conftest import make_settings
from tests.fuzz.seeds import seed_files

ELEMENTS: list[tuple[str, dict[str, Any]]] = [
    ("00100010", {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}),
    ("00100010", {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]}),
    ("00100010", {"vr": "PN", "Value": [{"Phonetic": "やまだ^たろう"}]}),
    ("00081070", {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]}),
    ("00100010", {"vr": "PN"}),
    ("00080061", {"vr": "CS", "Value": ["CT", "MR"]}),
    ("00080060", {"vr": "CS", "Value": ["CT"]}),
    ("00080060", {"vr": "CS"}),
    ("00100020", {"vr": "LO", "Value": ["Müller-1"]}),
    ("00080020", {"vr": "DA", "Value": ["20250101"]}),
    ("00080030", {"vr": "TM", "Value": ["120000.5"]}),
    ("0020000D", {"vr": "UI", "Value": ["1.2.3.4"]}),
    ("00201208", {"vr": "IS", "Value": [16]}),
    ("00201208", {"vr": "IS"}),
    ("00200011", {"vr": "IS", "Value": [1, 2]}),
    ("00280010", {"vr": "US", "Value": [512]}),
    ("00280010", {"vr": "US"}),
    ("00180050", {"vr": "DS", "Value": [2.5]}),
    ("00200032", {"vr": "DS", "Value": [-125.0, -125.0, 10.25]}),
    ("00081190", {"vr": "UR", "Value": ["http://example.org/x"]}),
    ("00181030", {"vr": "LO", "Value": [None]}),
    ("00081115", {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}]}),
    ("00081115", {"vr": "SQ"}),
    ("00091010", {"vr": "OB", "InlineBinary": "AAEC"}),
    ("00209165", {"vr": "AT", "Value": ["00100010"]}),
]


def _reference(tag: str, element: dict[str, Any]) -> DataElement:
    return Dataset.from_json({tag: element})[int(tag, 16)]


def _encoded(element: DataElement, implicit: bool, encoding: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_data_element(fp, element, encoding)
    return bytes(fp.getvalue())


@pytest.mark.parametrize(
    ("tag", "element"), ELEMENTS, ids=[f"{t}-{e['vr']}-{i}" for i, (t, e) in enumerate(ELEMENTS)]
)
def test_data_element_is_what_pydicom_reads_from_json(tag: str, element: dict[str, Any]) -> None:
    expected = _reference(tag, element)
    got = data_element(tag, element)
    assert (got.tag, got.VR) == (expected.tag, expected.VR)
    assert got.value == expected.value
    assert type(got.value) is type(expected.value)
    for implicit in (True, False):
        for encoding in ("iso8859", "utf_8"):
            assert _encoded(got, implicit, encoding) == _encoded(expected, implicit, encoding)


def _answer(dataset: dict[str, Any], *keys: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in keys:
        setattr(identifier, keyword, "")
    request = find_request(identifier, str(StudyRootQueryRetrieveInformationModelFind), 10)
    return response_identifier(QueryResult(dataset, "1.2.3"), request, "TESSERA")


def test_c_find_answers_declare_utf8_only_for_non_ascii_text() -> None:
    ascii_name = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}}
    answer = _answer(ascii_name, "PatientName", "StudyInstanceUID")
    assert "SpecificCharacterSet" not in answer
    assert str(answer.PatientName) == "Doe^John"
    assert answer.QueryRetrieveLevel == "STUDY"
    assert "StudyInstanceUID" in answer and not answer.StudyInstanceUID  # asked for, not there: empty
    accented = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Anna"}]}}
    answer = _answer(accented, "PatientName")
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Müller^Anna"


def test_c_find_answers_carry_only_the_requested_keys() -> None:
    dataset = {
        "00080020": {"vr": "DA", "Value": ["20250101"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00081115": {"vr": "OB", "InlineBinary": "AAEC"},
    }
    answer = _answer(dataset, "StudyDate", "RetrieveAETitle")
    assert {e.keyword for e in answer} == {
        "StudyDate", "StudyInstanceUID", "QueryRetrieveLevel", "RetrieveAETitle"
    }  # fmt: skip
    assert answer.RetrieveAETitle == "TESSERA"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = Archive(make_settings(tmp_path_factory.mktemp("query-answers") / "data"))
    for data in seed_files():
        assert archive.ingest_bytes(data).ok
    yield archive
    archive.close()


@pytest.mark.parametrize("level", list(QueryLevel))
@pytest.mark.parametrize("query", ["", "includefield=all", "includefield=Manufacturer,00180050,PatientAge"])
def test_answers_come_in_tag_order_with_every_asked_attribute(
    archive: Archive, level: QueryLevel, query: str
) -> None:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    spec = spec_from_pairs(level, pairs, default_limit=100, max_limit=1000)  # type: ignore[arg-type]
    with archive.sessions() as session:
        results = run_query(session, spec)
    assert results
    for result in results:
        assert list(result.dataset) == sorted(result.dataset)
        assert all(set(element) >= {"vr"} for element in result.dataset.values())
        json.dumps(result.dataset)
        if level is not QueryLevel.PATIENT and "Manufacturer" in query:
            assert "00080070" in result.dataset  # from the stored header: answered or empty, never left out
