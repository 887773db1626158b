"""Fuzzing the streaming multipart/related reader STOW-RS uses (server/dicomweb/multipart.py).

Its contract: fed a body in chunks of any size, it yields the parts, or raises
``MultipartError`` (and ``finish`` removes every temp file it made); how the body was cut
into chunks never changes the outcome. Well-formed bodies built by the writer's own
``part_header``/``closing`` come back part for part. Profiles: tests/fuzz/profiles.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from server.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    boundary_of,
    closing,
    part_header,
)
from tests.fuzz.profiles import examples

# RFC 2046 bchars: a boundary is 1-70 of these, not ending in a space.
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
BOUNDARIES = st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
CONTENT_TYPES = st.sampled_from(
    ["application/dicom", 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"', "image/jpeg", ""]
)

Outcome = tuple[str, list[tuple[dict[str, str], bytes]]]  # ("parts", parts) or ("error", "")


def temp_files(folder: Path) -> Callable[[], tuple[BinaryIO, Path]]:
    counter = itertools.count()

    def new_file() -> tuple[BinaryIO, Path]:
        path = folder / f"part-{next(counter)}.part"
        return open(path, "wb"), path

    return new_file


def read(folder: Path, boundary: str, chunks: list[bytes]) -> Outcome:
    """Feed ``chunks``; the parts (headers and bytes), or ("error", []) after a MultipartError."""
    folder.mkdir(parents=True, exist_ok=True)
    reader = MultipartReader(boundary, temp_files(folder))
    try:
        for chunk in chunks:
            reader.feed(chunk)
        parts = reader.finish()
    except MultipartError:
        reader.discard()
        assert list(folder.iterdir()) == [], "a refused body left temp files"
        return ("error", [])
    result = [(part.headers, part.path.read_bytes()) for part in parts]
    for part, (_, data) in zip(parts, result, strict=True):
        assert part.size == len(data)
    reader.discard()
    return ("parts", result)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at the given offsets (taken modulo its length, duplicates allowed)."""
    if not data:
        return [data]
    offsets = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(offsets)] + [b""]


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[str, list[tuple[str, bytes]], bytes]:
    boundary = draw(BOUNDARIES)
    parts = draw(st.lists(st.tuples(CONTENT_TYPES, st.binary(max_size=300)), max_size=5))
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    for _, content in parts:  # a part may not contain its own delimiter (RFC 2046 5.1.1)
        assume(delimiter not in b"\r\n" + content + b"\r\n")
    body = draw(st.sampled_from([b"", b"preamble text\r\n"]))
    for content_type, content in parts:
        body += part_header(boundary, content_type or "application/dicom") + content + b"\r\n"
    body += closing(boundary) + draw(st.sampled_from([b"", b"epilogue\r\n"]))
    assume(parts)
    return boundary, parts, body


@settings(max_examples=examples(150))
@given(case=well_formed(), points=st.lists(st.integers(0, 10_000), max_size=12))
def test_well_formed_bodies_round_trip(tmp_path_factory: pytest.TempPathFactory, case, points) -> None:
    boundary, parts, body = case
    folder = tmp_path_factory.mktemp("mp")
    kind, received = read(folder, boundary, cut(body, points))
    assert kind == "parts"
    assert [data for _, data in received] == [content for _, content in parts]
    assert [headers["content-type"] for headers, _ in received] == [
        (ct or "application/dicom") for ct, _ in parts
    ]


def noisy_body(boundary: str) -> st.SearchStrategy[bytes]:
    """Bytes made of the pieces a parser cares about: delimiters, CRLFs, dashes, headers, junk."""
    b = boundary.encode("latin-1")
    pieces = st.sampled_from(
        [
            b"--" + b,
            b"\r\n--" + b,
            b"\r\n--" + b + b"--",
            b"\r\n",
            b"\r\n\r\n",
            b"--",
            b"-",
            b"\r",
            b"Content-Type: application/dicom",
            b"X" * 1100,
            b"Y" * 17_000,
        ]
    )
    return st.lists(pieces | st.binary(max_size=40), max_size=25).map(b"".join)


@settings(max_examples=examples(200))
@given(
    data=st.data(),
    boundary=BOUNDARIES,
    points=st.lists(st.integers(0, 40_000), max_size=16),
)
def test_any_body_parses_or_raises_the_same_way_however_chunked(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, boundary: str, points: list[int]
) -> None:
    body = data.draw(noisy_body(boundary) | st.binary(max_size=2000))
    folder = tmp_path_factory.mktemp("mp")
    one_shot = read(folder / "whole", boundary, [body])
    chunked = read(folder / "chunks", boundary, cut(body, points))
    bytewise = read(folder / "bytes", boundary, [body[i : i + 1] for i in range(len(body))])
    assert chunked == one_shot
    assert bytewise == one_shot


@settings(max_examples=examples(200))
@given(
    content_type=st.text(max_size=120) | st.builds(lambda b: f"multipart/related; boundary={b}", st.text())
)
def test_boundary_parameter_is_read_or_refused(content_type: str) -> None:
    try:
        boundary = boundary_of(content_type)
    except MultipartError:
        return
    assert 0 < len(boundary) <= 70
    boundary.encode("latin-1")  # the reader encodes it so: a boundary it cannot encode must be refused


@pytest.mark.parametrize("padding", [1023, 1024, 1025, 1100])
def test_padding_after_a_boundary_is_judged_the_same_however_chunked(tmp_path: Path, padding: int) -> None:
    """Found by the long profile: 1,100 bytes after a boundary were refused byte by byte, accepted whole."""
    body = b"--0" + b"X" * padding + b"\r\n\r\n\r\n--0--"
    whole = read(tmp_path / "whole", "0", [body])
    bytewise = read(tmp_path / "bytes", "0", [body[i : i + 1] for i in range(len(body))])
    assert whole == bytewise
    assert whole[0] == ("parts" if padding <= 1024 else "error")


@pytest.mark.parametrize("size", [16 * 1024 - 3, 16 * 1024 - 2, 17_000])
def test_part_header_limit_is_judged_the_same_however_chunked(tmp_path: Path, size: int) -> None:
    """Found by the long profile: 17 KB of part headers were refused byte by byte, accepted whole."""
    body = b"--0\r\n--0" + b"Y" * size + b"\r\n\r\n\r\n--0--"
    whole = read(tmp_path / "whole", "0", [body])
    bytewise = read(tmp_path / "bytes", "0", [body[i : i + 1] for i in range(len(body))])
    assert whole == bytewise
    assert whole[0] == ("parts" if size + 3 <= 16 * 1024 else "error")


def test_empty_part_headers_before_a_long_epilogue(tmp_path: Path) -> None:
    """Found by the long profile while fixing the header limit: a part with no headers is not "too long"."""
    body = b"--0\r\n\r\n--0\r\n--0--" + b"Y" * 17_000
    expected = ("parts", [({}, b"--0")])
    assert read(tmp_path / "whole", "0", [body]) == expected
    assert read(tmp_path / "bytes", "0", [body[i : i + 1] for i in range(len(body))]) == expected
