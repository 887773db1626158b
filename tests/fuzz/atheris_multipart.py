"""Coverage-guided fuzzing of the multipart/related reader with atheris (run by hand).

    .venv/bin/python tests/fuzz/atheris_multipart.py -max_total_time=300

The input's first byte picks a boundary length and a chunk size; the body is fed in chunks
of that size and then in one piece. Both must give the same parts or both a
``MultipartError``; any other exception, or a difference, is a finding.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import atheris

with atheris.instrument_imports(include=["server"]):
    from server.dicomweb.multipart import MultipartError, MultipartReader, boundary_of

FOLDER = Path(tempfile.mkdtemp(prefix="atheris-multipart-"))
COUNTER = itertools.count()


def new_file() -> tuple[BinaryIO, Path]:
    path = FOLDER / f"{next(COUNTER)}.part"
    return open(path, "wb"), path


def parse(boundary: str, chunks: list[bytes]) -> list[tuple[dict[str, str], bytes]] | None:
    reader = MultipartReader(boundary, new_file)
    try:
        for chunk in chunks:
            reader.feed(chunk)
        parts = reader.finish()
    except MultipartError:
        reader.discard()
        return None
    result = [(p.headers, p.path.read_bytes()) for p in parts]
    reader.discard()
    return result


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    boundary_length, chunk_size = data[0] % 70 + 1, data[1] % 64 + 1
    raw = data[2 : 2 + boundary_length].decode("latin-1")
    try:
        boundary = boundary_of(f'multipart/related; boundary="{raw}"')
    except MultipartError:
        return
    body = data[2 + boundary_length :]
    whole = parse(boundary, [body])
    chunked = parse(boundary, [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)])
    assert whole == chunked, (whole, chunked)
    assert not any(FOLDER.iterdir()), "temp files left behind"


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="atheris-multipart-corpus-"))
    boundary = b"tessera-0123456789"
    body = (
        b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\nDICM-part-one\r\n"
        b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\npart two\r\n--" + boundary + b"--\r\n"
    )
    (corpus / "seed").write_bytes(bytes([len(boundary) - 1, 7]) + boundary + body)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
