"""Archive benchmark: ingest (import, STOW-RS) against file copy, and QIDO-RS latency at scale.

    python -m tests.bench.bench_archive [--files 600] [--instances 10000] [--no-orthanc]

Baselines measured in the same run: copying the same files (with and without fsync),
and Orthanc (Debian package, if installed) ingesting and answering the same queries.
STOW-RS and QIDO-RS run on SQLite and PostgreSQL, with 1 and 2 `tessera serve` processes
(--databases, --processes). The query archive is filled through ``Archive.ingest_batch``
(the STOW-RS path without HTTP, and without fsync); Orthanc is filled over REST up to
--orthanc-instances.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import requests

from sample_data.radiology import Patient, Study, ct_series
from server.archive.archive import Archive
from server.cli import import_paths
from server.config import load_settings
from tests.bench.measure import Figure, Latency, print_table, time_calls
from tests.bench.measure import record as save
from tests.bench.servers import OrthancProcess, TesseraProcess

POSTGRES_ADMIN = os.environ.get(
    "TESSERA_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)
SURNAMES = [
    "SMITH",
    "JONES",
    "GARCIA",
    "MÜLLER",
    "NGUYEN",
    "OKAFOR",
    "ROSSI",
    "KOWALSKI",
    "TANAKA",
    "SILVA",
    "DUBOIS",
    "OBRIEN",
]


def write_ct_files(out: Path, count: int) -> list[Path]:
    """Realistic CT slices (256 x 256, 16-bit), a few series of one study per 100 files."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch = 50
    for start in range(0, count, batch):
        patient = Patient(f"BENCH^CT{start // 100}", f"BCT{start // 100:05d}")
        study = Study(accession_number=f"BA{start // 100:05d}", instance_uid=None)
        for i, ds in enumerate(
            ct_series(
                min(batch, count - start),
                patient=patient,
                study=study,
                series_number=start // batch + 1,
                size=256,
            )
        ):
            path = out / f"{start + i:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def tiny_instances(count: int) -> list[bytes]:
    """Many small real CT instances (16 x 16) spread over patients/studies/dates, for query benchmarks.

    One instance is made with pydicom; every other one is that file with its identifying values
    (same lengths) replaced, so 100,000 take seconds rather than many minutes."""
    template = ct_series(1, size=16)[0]
    placeholders = {
        "PatientID": "PIDPLACE",
        "PatientName": "NAMEPLACEHOLDER^XXXXXXXX",
        "StudyInstanceUID": _uid(1, 0),
        "SeriesInstanceUID": _uid(2, 0),
        "SOPInstanceUID": _uid(3, 0),
        "StudyDate": "19000101",
        "AccessionNumber": "AXXXXXXXX",
    }
    for keyword, value in placeholders.items():
        setattr(template, keyword, value)
    template.file_meta.MediaStorageSOPInstanceUID = placeholders["SOPInstanceUID"]
    buffer = io.BytesIO()
    template.save_as(buffer, enforce_file_format=True)
    blob = buffer.getvalue()
    for keyword, value in placeholders.items():
        expected = 2 if keyword == "SOPInstanceUID" else 1  # also in the file meta
        assert blob.count(value.encode()) == expected, keyword
    rng = random.Random(7)
    payloads = []
    per_study = 10
    for index in range(count):
        if index % per_study == 0:
            study = index // per_study
            patient = index // (per_study * 2)
            date = f"20{rng.randint(10, 25):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            name = f"{SURNAMES[patient % len(SURNAMES)]}^PAT{patient}"
        values = {
            "PatientID": f"P{patient:07d}",
            "PatientName": name.ljust(len(placeholders["PatientName"])),
            "StudyInstanceUID": _uid(1, study),
            "SeriesInstanceUID": _uid(2, study * 2 + index % 2),
            "SOPInstanceUID": _uid(3, index),
            "StudyDate": date,
            "AccessionNumber": f"A{study:08d}",
        }
        data = blob
        for keyword, value in values.items():
            data = data.replace(placeholders[keyword].encode(), value.encode("latin-1"))
        payloads.append(data)
    return payloads


_RUN = random.Random().randrange(10**8, 10**9)  # a fresh UID space per run


def _uid(kind: int, number: int) -> str:
    """A 2.25 UID of fixed length (44 characters) for ``kind`` and ``number``."""
    return f"2.25.{kind}{_RUN}{number:029d}"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def copy_files(paths: list[Path], target: Path, fsync: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in paths:
        destination = target / path.name
        shutil.copyfile(path, destination)
        if fsync:
            with open(destination, "rb") as fh:
                os.fsync(fh.fileno())


def stow(url: str, paths: list[Path], per_request: int = 25, clients: int = 1) -> None:
    batches = [paths[i : i + per_request] for i in range(0, len(paths), per_request)]

    def send(batch: list[Path]) -> None:
        boundary = uuid.uuid4().hex
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                for p in batch
            )
            + f"--{boundary}--\r\n".encode()
        )
        response = requests.post(
            url + "/dicom-web/studies",
            data=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=300,
        )
        assert response.status_code == 200, response.text[:300]

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, batches))


def orthanc_rest_post(url: str, paths: list[Path], clients: int = 1) -> None:
    session = requests.Session()

    def send(path: Path) -> None:
        response = session.post(url + "/instances", data=path.read_bytes(), timeout=60)
        assert response.status_code == 200, response.text[:200]

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, paths))


STOW_CLIENTS = 2  # concurrent clients, so that a second server process has work


def orthanc_note(wanted: bool) -> str:
    if not wanted:
        return "skipped (--no-orthanc)"
    return "" if OrthancProcess.available() else "Orthanc not installed"


def new_pg_database() -> str:
    from sqlalchemy import create_engine, text

    name = f"tessera_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def bench_ingest(
    work: Path,
    count: int,
    with_orthanc: bool,
    databases: list[str],
    processes: list[int],
    with_import: bool = True,
) -> None:
    files = write_ct_files(work / "files", count)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    rows: list[tuple[str, float, float, str]] = []

    def record(label: str, seconds: float, note: str = "") -> None:
        rows.append((label, count / seconds, megabytes / seconds, note))
        print(f"  {label}: {count / seconds:,.1f} instances/s", flush=True)

    record(
        "baseline: copy files",
        timed(lambda: copy_files(files, work / "copy1", fsync=False)),
        "page cache only",
    )
    record(
        "baseline: copy files + fsync",
        timed(lambda: copy_files(files, work / "copy2", fsync=True)),
        "durable, like the archive",
    )
    for jobs in (1, 2) if with_import else ():
        archive = Archive(load_settings({}, data_dir=work / f"import-{jobs}"))
        seconds = timed(partial(import_paths, archive, files, quiet=True, jobs=jobs))
        record(f"tessera import (SQLite), {jobs} process(es)", seconds, "as `tessera import -j N`")
        archive.close()
    stow_rates: dict[tuple[str, int], float] = {}
    for label in databases:
        for processes_ in processes:
            db_url = new_pg_database() if label == "PostgreSQL" else ""
            server = TesseraProcess(work / f"stow-{label}-{processes_}", db_url, processes=processes_)
            try:
                seconds = timed(partial(stow, server.url, files, clients=STOW_CLIENTS))
                stow_rates[(label, processes_)] = count / seconds
                record(
                    f"tessera STOW-RS ({label}), {processes_} process(es)",
                    seconds,
                    f"25 instances/request, {STOW_CLIENTS} clients",
                )
            finally:
                server.stop()
                if db_url:
                    drop_pg_database(db_url)
    orthanc_rate: float | None = None
    if with_orthanc and OrthancProcess.available():
        orthanc = OrthancProcess(work / "orthanc")
        try:
            record(
                "Orthanc REST POST /instances",
                timed(lambda: orthanc_rest_post(orthanc.url, files)),
                "1 file/request, 1 client",
            )
        finally:
            orthanc.stop()
        orthanc = OrthancProcess(work / "orthanc-stow")
        try:
            seconds = timed(partial(stow, orthanc.url, files, clients=STOW_CLIENTS))
            orthanc_rate = count / seconds
            record(
                "Orthanc STOW-RS (dicomweb plugin)", seconds, f"25 instances/request, {STOW_CLIENTS} clients"
            )
        finally:
            orthanc.stop()
    for (label, processes_), rate in stow_rates.items():
        save(
            Figure(
                "ingest",
                f"STOW-RS, {count:,} CT instances",
                f"{label}, {processes_} proc",
                "instances/s",
                rate,
                "Orthanc STOW-RS",
                orthanc_rate,
                baseline_note=orthanc_note(with_orthanc),
            )
        )
    print_table(
        f"Ingest: {count} CT instances, {megabytes:.1f} MB (256 x 256 x 16 bit)",
        ["path", "instances/s", "MB/s", "note"],
        rows,
    )


QUERIES = {
    "PatientID exact": "PatientID=P0000420",
    "PatientName wildcard": "PatientName=SMI*",
    "StudyDate range": "StudyDate=20200101-20200331",
}


def wait_idle(pgid: int, timeout: float = 60.0) -> None:
    """Wait until a server's processes stop working after start-up: `tessera serve` answers its
    health check before its other processes and worker pools have finished starting (seconds of
    CPU on this machine), and queries timed meanwhile measured that start-up, not the queries."""

    def cpu_seconds() -> float:
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # process group: the server and everything it started
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    deadline = time.monotonic() + timeout
    last, quiet = cpu_seconds(), 0
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds()
        quiet = quiet + 1 if now - last < 0.03 else 0
        last = now


def query_latencies(url: str, repeat: int) -> dict[str, Latency]:
    session = requests.Session()
    out = {}
    for label, query in QUERIES.items():

        def once(q: str = query) -> None:
            response = session.get(
                f"{url}/dicom-web/studies?{q}", headers={"Accept": "application/dicom+json"}, timeout=30
            )
            assert response.status_code in (200, 204), response.text[:200]

        out[label] = time_calls(once, repeat)
    return out


def fill_index(archive: Archive, payloads: list[bytes], batch: int = 500) -> None:
    """Ingest through ``ingest_batch`` (one index transaction per batch), as STOW-RS does, but
    without fsync: the query benchmark measures queries, and 200,000 fsyncs would take longer
    than all of them on an ordinary disk. The archive is otherwise exactly as STOW-RS leaves it."""
    archive.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # this process only, for the fill only
    try:
        _fill(archive, payloads, batch)
    finally:
        os.fsync = real_fsync


def _fill(archive: Archive, payloads: list[bytes], batch: int) -> None:
    for start in range(0, len(payloads), batch):
        items: list[tuple[Path, str | None]] = []
        for payload in payloads[start : start + batch]:
            path = archive.settings.tmp_dir / f"bench-{uuid.uuid4().hex}.dcm"
            path.write_bytes(payload)
            items.append((path, None))
        outcomes = archive.ingest_batch(items)
        assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]


def bench_qido(
    work: Path,
    count: int,
    repeat: int,
    with_orthanc: bool,
    databases: list[str],
    processes: list[int],
    orthanc_count: int,
) -> None:
    payloads = tiny_instances(count)
    rows = []
    tessera: dict[tuple[str, int], dict[str, Latency]] = {}
    for label in databases:
        db_url = "" if label == "SQLite" else new_pg_database()
        settings = load_settings({}, data_dir=work / f"qido-{label}", database_url=db_url)
        archive = Archive(settings)
        start = time.perf_counter()
        fill_index(archive, payloads)
        fill = time.perf_counter() - start
        archive.close()
        print(f"  filled {label} with {count:,} instances at {count / fill:,.0f}/s", flush=True)
        try:
            for processes_ in processes:
                server = TesseraProcess(settings.data_dir, db_url, processes=processes_)
                try:
                    wait_idle(server.proc.pid)
                    tessera[(label, processes_)] = query_latencies(server.url, repeat)
                finally:
                    server.stop()
                for query, latency in tessera[(label, processes_)].items():
                    rows.append(
                        (
                            f"tessera ({label}, {processes_} proc)",
                            query,
                            latency.p50,
                            latency.p99,
                            f"{count:,} instances, filled at {count / fill:,.0f}/s",
                        )
                    )
        finally:
            if db_url:
                drop_pg_database(db_url)
    orthanc: dict[str, Latency] = {}
    orthanc_count = min(orthanc_count, count)
    if with_orthanc and OrthancProcess.available():
        server_o = OrthancProcess(work / "orthanc-qido")
        try:
            session = requests.Session()
            start = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                list(
                    pool.map(
                        lambda data: session.post(server_o.url + "/instances", data=data, timeout=60),
                        payloads[:orthanc_count],
                    )
                )
            fill = time.perf_counter() - start
            print(
                f"  filled Orthanc with {orthanc_count:,} instances at {orthanc_count / fill:,.0f}/s",
                flush=True,
            )
            wait_idle(server_o.proc.pid)
            orthanc = query_latencies(server_o.url, repeat)
            for query, latency in orthanc.items():
                rows.append(
                    (
                        "Orthanc 1.10 (SQLite)",
                        query,
                        latency.p50,
                        latency.p99,
                        f"{orthanc_count:,} instances, filled at {orthanc_count / fill:,.0f}/s",
                    )
                )
        finally:
            server_o.stop()
    for (label, processes_), latencies in tessera.items():
        for query, latency in latencies.items():
            save(
                Figure(
                    "query",
                    f"QIDO-RS p50, {query}, {count:,} instances",
                    f"{label}, {processes_} proc",
                    "ms",
                    latency.p50,
                    f"Orthanc at {orthanc_count:,}" if orthanc else "Orthanc",
                    orthanc[query].p50 if orthanc else None,
                    higher=False,
                    baseline_note=orthanc_note(with_orthanc),
                )
            )
    print_table(
        f"QIDO-RS /studies at {count:,} instances ({count // 10:,} studies), {repeat} requests each",
        ["server", "query", "p50 ms", "p99 ms", "note"],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=600, help="CT files for the ingest benchmark")
    parser.add_argument(
        "--instances", type=int, default=10_000, help="instances in the archive for the query benchmark"
    )
    parser.add_argument(
        "--orthanc-instances", type=int, default=10_000, help="instances Orthanc is filled with (slow)"
    )
    parser.add_argument("--repeat", type=int, default=200, help="requests per query")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--processes", default="1,2", help="tessera serve processes, comma-separated")
    parser.add_argument("--only", choices=("ingest", "query"), help="run one half")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc baseline")
    parser.add_argument("--no-import", action="store_true", help="skip the `tessera import` rows")
    args = parser.parse_args(argv)
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    databases = [names[d.strip().lower()] for d in args.databases.split(",") if d.strip()]
    processes = [int(p) for p in args.processes.split(",")]
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "ingest"):
            bench_ingest(
                work / "ingest", args.files, not args.no_orthanc, databases, processes, not args.no_import
            )
        if args.only in (None, "query"):
            bench_qido(
                work / "qido",
                args.instances,
                args.repeat,
                not args.no_orthanc,
                databases,
                processes,
                args.orthanc_instances,
            )


if __name__ == "__main__":
    main()
