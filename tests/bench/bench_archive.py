"""Archive benchmark: ingest (import, STOW-RS) against file copy, and QIDO-RS latency at scale.

    python -m tests.bench.bench_archive [--files 600] [--instances 10000] [--no-orthanc]

Baselines measured in the same run: copying the same files (with and without fsync),
and Orthanc (Debian package, if installed) ingesting and answering the same queries.
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
from pathlib import Path

import requests
from pydicom.uid import generate_uid

from sample_data.radiology import Patient, Study, ct_series
from server.archive.archive import Archive
from server.cli import import_paths
from server.config import load_settings
from tests.bench.measure import Latency, print_table, time_calls
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
    """Many small instances spread over patients/studies/dates, for query benchmarks."""
    template = ct_series(1, size=16)[0]
    rng = random.Random(7)
    payloads = []
    per_study = 10
    for index in range(count):
        if index % per_study == 0:
            study_uid, patient = generate_uid(), index // (per_study * 2)
            date = f"20{rng.randint(10, 25):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            series_uids = [generate_uid(), generate_uid()]
        ds = template
        ds.PatientID = f"P{patient:07d}"
        ds.PatientName = f"{SURNAMES[patient % len(SURNAMES)]}^PAT{patient}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids[index % 2]
        ds.StudyDate = date
        ds.AccessionNumber = f"A{index // per_study:08d}"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        payloads.append(buffer.getvalue())
    return payloads


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


def bench_ingest(work: Path, count: int, with_orthanc: bool) -> None:
    files = write_ct_files(work / "files", count)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    rows: list[tuple[str, float, float, str]] = []

    def record(label: str, seconds: float, note: str = "") -> None:
        rows.append((label, count / seconds, megabytes / seconds, note))

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
    for jobs in (1, 2):
        archive = Archive(load_settings({}, data_dir=work / f"import-{jobs}"))
        seconds = timed(lambda a=archive, j=jobs: import_paths(a, files, quiet=True, jobs=j))
        record(f"tessera import (SQLite), {jobs} process(es)", seconds, "as `tessera import -j N`")
        archive.close()
    for label in ("SQLite", "PostgreSQL"):
        for clients in (1, 2):
            db_url = new_pg_database() if label == "PostgreSQL" else ""
            server = TesseraProcess(work / f"stow-{label}-{clients}", db_url)
            try:
                seconds = timed(lambda s=server, c=clients: stow(s.url, files, clients=c))
                record(f"tessera STOW-RS ({label}), {clients} client(s)", seconds, "25 instances/request")
            finally:
                server.stop()
                if db_url:
                    drop_pg_database(db_url)
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
        for clients in (1, 2):
            orthanc = OrthancProcess(work / f"orthanc-stow-{clients}")
            try:
                seconds = timed(lambda o=orthanc, c=clients: stow(o.url, files, clients=c))
                record(
                    f"Orthanc STOW-RS (dicomweb plugin), {clients} client(s)", seconds, "25 instances/request"
                )
            finally:
                orthanc.stop()
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


def bench_qido(work: Path, count: int, repeat: int, with_orthanc: bool) -> None:
    payloads = tiny_instances(count)
    rows = []
    for label in ("SQLite", "PostgreSQL"):
        db_url = "" if label == "SQLite" else new_pg_database()
        settings = load_settings({}, data_dir=work / f"qido-{label}", database_url=db_url)
        archive = Archive(settings)
        start = time.perf_counter()
        for payload in payloads:
            archive.ingest_bytes(payload)
        fill = time.perf_counter() - start
        archive.close()
        server = TesseraProcess(settings.data_dir, db_url)
        try:
            for query, latency in query_latencies(server.url, repeat).items():
                rows.append(
                    (
                        f"tessera ({label})",
                        query,
                        latency.p50,
                        latency.p99,
                        f"filled at {count / fill:,.0f}/s",
                    )
                )
        finally:
            server.stop()
            if db_url:
                drop_pg_database(db_url)
    if with_orthanc and OrthancProcess.available():
        orthanc = OrthancProcess(work / "orthanc-qido")
        try:
            session = requests.Session()
            start = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                list(
                    pool.map(
                        lambda data: session.post(orthanc.url + "/instances", data=data, timeout=60), payloads
                    )
                )
            fill = time.perf_counter() - start
            for query, latency in query_latencies(orthanc.url, repeat).items():
                rows.append(
                    (
                        "Orthanc 1.10 (SQLite)",
                        query,
                        latency.p50,
                        latency.p99,
                        f"filled at {count / fill:,.0f}/s",
                    )
                )
        finally:
            orthanc.stop()
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
    parser.add_argument("--repeat", type=int, default=200, help="requests per query")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc baseline")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        work = Path(tmp)
        bench_ingest(work / "ingest", args.files, not args.no_orthanc)
        bench_qido(work / "qido", args.instances, args.repeat, not args.no_orthanc)


if __name__ == "__main__":
    main()
