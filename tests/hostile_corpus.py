"""A corpus of mutated DICOM files, and the run that feeds it to the archive.

Mutations of valid files of every transfer syntax the archive indexes: bit flips, truncation,
corrupted length fields, changed VRs, inserted and deleted bytes. Every mutant must be stored or
refused with a reason, quickly, without the process's memory growing and without leaving a
half-written file or an orphan row. The CI test runs ~2,000 mutants; for a long run:

    .venv/bin/python -m tests.hostile_corpus --count 20000
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from sample_data.radiology import ct_series, encode, rgb_secondary_capture, us_multiframe
from server.archive.archive import Archive, StoreStatus
from server.imaging.frames import FrameDecodeError, HeaderCache, decode_frame
from server.isolation import decoder_pool
from tests.dicom_cases import to_bytes

_VRS = [
    b"AE",
    b"CS",
    b"DA",
    b"DS",
    b"IS",
    b"LO",
    b"OB",
    b"OW",
    b"SQ",
    b"UI",
    b"UL",
    b"UN",
    b"US",
    b"UT",
    b"ZZ",
]
_VR_AT = re.compile(rb"[\x00-\xff]{4}(AE|AS|CS|DA|DS|DT|IS|LO|LT|OB|OW|PN|SH|SQ|ST|TM|UI|UL|UN|US|UT)")


def base_files() -> list[bytes]:
    """Small valid instances: native, implicit, deflated, RLE, JPEG 2000, JPEG baseline, nested."""
    ct = ct_series(1, size=32)[0]
    nested = ct_series(1, size=32, series_number=9)[0]
    item = Dataset()
    item.CodeMeaning = "leaf"
    for _ in range(4):
        outer = Dataset()
        outer.ContentSequence = [item]
        item = outer
    nested.ContentSequence = [item]
    files = [to_bytes(encode(ct, syntax)) for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
    files += [to_bytes(encode(ct, syntax)) for syntax in (DeflatedExplicitVRLittleEndian, RLELossless)]
    files += [to_bytes(encode(ct, JPEG2000Lossless)), to_bytes(nested)]
    files += [to_bytes(encode(rgb_secondary_capture(size=32), JPEGBaseline8Bit))]
    files += [to_bytes(encode(us_multiframe(3, rows=32, columns=48), JPEGBaseline8Bit))]
    return files


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation, named."""
    kind = rng.choice(["bitflip", "truncate", "length", "vr", "insert", "delete", "bitflip-header"])
    buffer = bytearray(data)
    if kind in ("bitflip", "bitflip-header"):
        span = min(len(buffer), 1024) if kind == "bitflip-header" else len(buffer)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(132, span) if span > 132 else rng.randrange(span)
            buffer[position] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buffer[rng.randrange(len(buffer)) :]
    elif kind == "length":
        headers = [m.start() for m in _VR_AT.finditer(data, 132)]
        at = rng.choice(headers) if headers else rng.randrange(132, len(buffer) - 4)
        value = rng.choice([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0xFFFF, 0, rng.randrange(1 << 32)])
        long_form = bytes(buffer[at + 4 : at + 6]) in (b"OB", b"OW", b"SQ", b"UN", b"UT")
        if long_form:
            buffer[at + 8 : at + 12] = struct.pack("<I", value)
        else:
            buffer[at + 6 : at + 8] = struct.pack("<H", value & 0xFFFF)
    elif kind == "vr":
        headers = [m.start() for m in _VR_AT.finditer(data, 132)]
        if headers:
            at = rng.choice(headers)
            buffer[at + 4 : at + 6] = rng.choice(_VRS)
    elif kind == "insert":
        at = rng.randrange(132, len(buffer))
        buffer[at:at] = rng.randbytes(rng.randint(1, 16))
    else:
        at = rng.randrange(132, len(buffer))
        del buffer[at : at + rng.randint(1, 16)]
    return kind, bytes(buffer)


def _renumbered(data: bytes, number: int) -> bytes:
    """The file with a new SOP Instance UID of the same length (a mutant is not a duplicate)."""
    uid = re.search(rb"2\.25\.[0-9]{30,}", data[132:]) if number else None
    if uid is None:
        return data
    old = uid.group()
    new = old[:-7] + str(1_000_000 + number % 9_000_000).encode()
    return data.replace(old, new)


def mutants(count: int, seed: int = 8) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    bases = base_files()
    for i in range(count):
        yield mutate(_renumbered(bases[i % len(bases)], i), rng)


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class CorpusRun:
    outcomes: Counter[str] = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")
    seconds: list[float] = field(default_factory=list)  # each mutant's ingest (+ first-frame decode)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] if ordered else 0.0

    rss_start: int = 0
    rss_peak: int = 0
    decoded: Counter[str] = field(default_factory=Counter)
    unexplained: list[str] = field(default_factory=list)


def run_corpus(archive: Archive, count: int, seed: int = 8, decode: bool = True) -> CorpusRun:
    """Ingest ``count`` mutants; decode the first frame of each one stored (timed together)."""
    run = CorpusRun(rss_start=rss_bytes())
    headers = HeaderCache()
    decoder_pool.run(os.getpid)  # start the decoder workers once, outside the timings
    for kind, data in mutants(count, seed):
        started = time.perf_counter()
        outcome = archive.ingest_bytes(data)
        ingested = time.perf_counter()
        if outcome.status is StoreStatus.REJECTED and not outcome.reason:
            run.unexplained.append(kind)
        run.outcomes[outcome.status.name] += 1
        if decode and outcome.status is StoreStatus.STORED and outcome.sop_instance_uid:
            instance = archive.instance_by_uid(outcome.sop_instance_uid)
            if instance is not None and instance.rows:
                try:
                    decode_frame(instance, headers.get(instance), 0)
                    run.decoded["decoded"] += 1
                except (FrameDecodeError, IndexError):
                    run.decoded["refused"] += 1
        elapsed = time.perf_counter() - started
        run.seconds.append(elapsed)
        if elapsed > run.slowest[0]:
            ingest_ms = (ingested - started) * 1000
            run.slowest = (
                elapsed,
                f"{kind} -> {outcome.status.name} in {ingest_ms:.0f} ms: {outcome.reason}",
            )
        run.rss_peak = max(run.rss_peak, rss_bytes())
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    from tests.conftest import make_settings

    with tempfile.TemporaryDirectory() as folder:
        archive = Archive(make_settings(Path(folder) / "data"))
        started = time.perf_counter()
        run = run_corpus(archive, args.count, args.seed)
        report = archive.reconcile()
        archive.close()
    took = time.perf_counter() - started
    print(f"{args.count} mutants in {took:.1f} s ({args.count / took:.0f}/s): {dict(run.outcomes)}")
    print(f"first frames of stored mutants: {dict(run.decoded)}")
    print(f"per mutant: p50 {run.percentile(0.5) * 1000:.1f} ms, p99 {run.percentile(0.99) * 1000:.0f} ms")
    print(f"slowest: {run.slowest[0] * 1000:.0f} ms ({run.slowest[1][:160]})")
    print(f"RSS: start {run.rss_start >> 20} MiB, peak {run.rss_peak >> 20} MiB; ", end="")
    print(f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MiB")
    print(f"reconcile clean: {report.clean}; refused without a reason: {len(run.unexplained)}")


if __name__ == "__main__":
    main()
