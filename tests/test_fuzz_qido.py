"""Fuzzing the QIDO-RS parser and the shared matcher (server/dicomweb/qido.py, server/archive/query.py).

Query strings are built from the keys and values the matcher treats specially (keywords,
tags, wildcards, ranges, lists, limit/offset/includefield/fuzzymatching) mixed with
arbitrary text and raw percent-encoded bytes. Directly, the parser and matcher may only
raise ``QueryError``; over HTTP on a running server every answer is 200 DICOM JSON or 400
problem+json, never 500. SQLite here (the CI profile); the matcher tests run on PostgreSQL
too. Profiles: tests/fuzz/profiles.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import requests
from hypothesis import event, given, settings
from hypothesis import strategies as st

from server.archive.archive import Archive
from server.archive.query import ATTRIBUTES, Match, QueryError, QueryLevel, run_query, spec_from_pairs
from server.serve import BackgroundServer
from tests.conftest import make_settings
from tests.fuzz.profiles import examples
from tests.fuzz.seeds import seed_files

NUMBER_KEYS = sorted(k for k, a in ATTRIBUTES.items() if a.match is Match.NUMBER)
KEYS = st.one_of(
    st.sampled_from(sorted(ATTRIBUTES)),
    st.sampled_from(NUMBER_KEYS),
    st.sampled_from(["00100010", "0020000D", "00080060", "7FE00010", "FFFFFFFF", "0010001", "patientname"]),
    st.sampled_from(["limit", "offset", "includefield", "fuzzymatching", " limit", "PatientName "]),
    st.text(max_size=20),
)
PIECES = ["*", "?", "\\", ",", "-", "\x00", "1", "20240101", "1200", "é", "%", "_", " ", "1.2.3"]
ANY_VALUE = st.one_of(
    st.sampled_from(
        [
            "", "*", "?", "**", "Doe*", "D?e", "%", "_", "\\", "a\\b", "1.2.3", "1.2.3,1.2.4", "1.2.3\\1.2.4",
            "20240101", "20240101-", "-20241231", "20240101-20241231", "-", "2024", "1200-1300", "12:00",
            "120000.123456", "all", "true", "false", "0", "-1", "10000", "10001", "1" * 5000, "CT\\MR",
            "CT,MR", "\x00", "é", "𝔘", "1_000", "٣", " 5 ", "PatientName,StudyDate", "00100010", "all,foo",
        ]
    ),
    st.lists(st.sampled_from(PIECES), max_size=6).map("".join),
    st.text(max_size=30),
)  # fmt: skip
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from([str(2**31), str(-(2**31) - 1), str(2**63), "99999999999999999999"]),
    st.lists(st.integers(-(2**40), 2**40).map(str), min_size=2, max_size=4).map("\\".join),
)


@st.composite
def pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Query parameters, each value drawn knowing its key (so numbers meet number columns)."""
    result = []
    for key in draw(st.lists(KEYS, max_size=6)):
        numeric = key.strip() in ("limit", "offset") or (
            key in ATTRIBUTES and ATTRIBUTES[key].match is Match.NUMBER
        )
        result.append((key, draw(NUMBERS | ANY_VALUE if numeric else ANY_VALUE)))
    return result


PAIRS = pairs()
LEVELS = st.sampled_from(list(QueryLevel))


def _populate(archive: Archive) -> None:
    for data in seed_files():
        assert archive.ingest_bytes(data).ok


@pytest.fixture(scope="module")
def matcher_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = Archive(make_settings(tmp_path_factory.mktemp("fuzz-qido") / "data"))
    _populate(archive)
    yield archive
    archive.close()


@settings(max_examples=examples(200))
@given(level=LEVELS, pairs=PAIRS)
def test_matcher_answers_or_raises_query_error(
    matcher_archive: Archive, level: QueryLevel, pairs: list[tuple[str, str]]
) -> None:
    try:
        spec = spec_from_pairs(level, pairs, default_limit=100, max_limit=10_000)
        with matcher_archive.sessions() as session:
            results = run_query(session, spec)
    except QueryError:
        event("refused")
        return
    event("answered")
    json.dumps([r.dataset for r in results])  # every answer serialises as DICOM JSON


def test_matcher_on_postgresql(postgres_database: str, tmp_path: Path) -> None:
    """The same fuzzing, fewer examples, on PostgreSQL (NUL bytes and number ranges differ there)."""
    archive = Archive(make_settings(tmp_path / "data", postgres_database))
    try:
        _populate(archive)

        @settings(max_examples=examples(80))
        @given(level=LEVELS, pairs=PAIRS)
        def run(level: QueryLevel, pairs: list[tuple[str, str]]) -> None:
            test_matcher_answers_or_raises_query_error.hypothesis.inner_test(archive, level, pairs)  # type: ignore[attr-defined]

        run()
    finally:
        archive.close()


# -- over HTTP -------------------------------------------------------------------------------------

PATHS = st.sampled_from(
    [
        "/dicom-web/studies",
        "/dicom-web/series",
        "/dicom-web/instances",
        "/dicom-web/studies/1.2.3/series",
        "/dicom-web/studies/1.2.3/instances",
        "/dicom-web/studies/1.2.3/series/1.2.4/instances",
    ]
)
RAW_QUERIES = st.one_of(
    PAIRS.map(urlencode),
    st.binary(max_size=60).map(lambda b: quote(b, safe="=&*?,\\")),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
)


@pytest.fixture(scope="module")
def qido_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    server = BackgroundServer.start(make_settings(tmp_path_factory.mktemp("fuzz-qido-http") / "data"))
    _populate(server.ctx.archive)
    yield server
    server.stop()


@settings(max_examples=examples(120))
@given(path=PATHS, query=RAW_QUERIES)
def test_http_answers_200_or_400_problem(qido_server: BackgroundServer, path: str, query: str) -> None:
    response = requests.get(f"{qido_server.url}{path}?{query}", timeout=30)
    content_type = response.headers.get("Content-Type", "")
    event(str(response.status_code))
    if response.status_code == 200:
        assert content_type.startswith("application/dicom+json")
        assert isinstance(response.json(), list)
    else:
        assert response.status_code == 400, (response.status_code, response.text[:300])
        assert content_type.startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == 400 and problem.get("detail")
