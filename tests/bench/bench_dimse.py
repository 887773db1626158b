"""DIMSE benchmark: C-STORE ingest next to STOW-RS, and C-FIND latency next to QIDO-RS and the bare matcher.

Run: ``python -m tests.bench.bench_dimse`` (``--help`` for sizes). Absolute times on a shared
2-core machine are noise; the ratios against the baseline measured in the same run are the result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import func, select

from sample_data import radiology
from server.archive.models import Instance
from server.archive.query import QueryLevel, QuerySpec, run_query
from server.config import DicomPeer, load_settings
from server.dimse.transport import disable_nagle, handle_connection_open
from server.serve import BackgroundServer
from tests.bench.measure import Figure, record
from tests.bench.servers import OrthancProcess
from tests.conftest import free_port

SCU = "BENCH_SCU"


def _copies(template: pydicom.FileDataset, count: int, out_dir: Path) -> list[Path]:
    """``count`` instances of one CT slice, each its own study-series-instance identity, as files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number + 1
        path = out_dir / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f} instances/s"


def bench_store(server: BackgroundServer, work: Path, count: int, with_orthanc: bool = True) -> None:
    template = radiology.ct_series(1)[0]
    size_kib = len(_copies(template, 1, work / "probe")[0].read_bytes()) / 1024
    print(
        f"\nC-STORE vs STOW-RS: {count} CT instances of {size_kib:.0f} KiB each, one association/connection"
    )

    files = _copies(template, count, work / "stow")
    client = DICOMwebClient(server.url + "/dicom-web")
    datasets = [pydicom.dcmread(p) for p in files]
    start = time.perf_counter()
    for batch in range(0, count, 50):
        client.store_instances(datasets[batch : batch + 50])
    stow = time.perf_counter() - start

    files = _copies(template, count, work / "pynetdicom")
    ae = AE(ae_title=SCU)
    ae.maximum_pdu_size = 0
    assoc = ae.associate(
        "127.0.0.1", server.dicom_port, contexts=[build_context(CTImageStorage, ExplicitVRLittleEndian)],
        ae_title=server.settings.ae_title,
    )  # fmt: skip
    disable_nagle(assoc)  # as Tessera's own SCU does
    start = time.perf_counter()
    statuses = [int(assoc.send_c_store(p).Status) for p in files]
    pynetdicom_scu = time.perf_counter() - start
    assoc.release()
    assert statuses == [0] * count, "some C-STOREs failed"

    dcmsend: dict[str, float] = {}
    for nodelay in ("0", "1"):
        files = _copies(template, count, work / f"dcmsend-{nodelay}")
        command = [
            "dcmsend",
            "-aet",
            SCU,
            "-aec",
            server.settings.ae_title,
            "127.0.0.1",
            str(server.dicom_port),
        ]
        start = time.perf_counter()
        subprocess.run(
            [*command, *map(str, files)],
            check=True,
            capture_output=True,
            env={**os.environ, "TCP_NODELAY": nodelay},
        )
        dcmsend[nodelay] = time.perf_counter() - start
        stored = len(server.ctx.archive.stored_instances(str(pydicom.dcmread(files[0]).StudyInstanceUID)))
        assert stored == count, f"dcmsend stored {stored} of {count}"

    orthanc: float | None = None
    if with_orthanc and OrthancProcess.available():
        files = _copies(template, count, work / "orthanc-files")
        peer = OrthancProcess(work / "orthanc")
        try:
            start = time.perf_counter()
            subprocess.run(
                [
                    "dcmsend",
                    "-aet",
                    SCU,
                    "-aec",
                    "ORTHANC",
                    "127.0.0.1",
                    str(peer.dicom_port),
                    *map(str, files),
                ],
                check=True,
                capture_output=True,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
            orthanc = time.perf_counter() - start
        finally:
            peer.stop()
    record(
        Figure(
            "ingest",
            f"C-STORE (dcmsend, TCP_NODELAY), {count:,} CT instances",
            f"{_database(server)}, 1 proc",
            "instances/s",
            count / dcmsend["1"],
            "Orthanc C-STORE (dcmsend)",
            count / orthanc if orthanc else None,
            baseline_note=""
            if orthanc
            else "Orthanc not installed"
            if with_orthanc
            else "skipped (--no-orthanc)",
        )
    )

    print(f"  STOW-RS (dicomweb-client, 50 per request)    {_rate(count, stow)}   baseline")
    for nodelay, label in (("0", "Nagle on: Debian default"), ("1", "TCP_NODELAY=1")):
        seconds = dcmsend[nodelay]
        name = f"C-STORE (dcmsend, {label})"
        print(f"  {name:45} {_rate(count, seconds)}   x{stow / seconds:.2f}")
    seconds = pynetdicom_scu
    print(f"  C-STORE (pynetdicom SCU, TCP_NODELAY)         {_rate(count, seconds)}   x{stow / seconds:.2f}")
    if orthanc:
        print(
            f"  {'C-STORE to Orthanc (dcmsend, TCP_NODELAY=1)':45} {_rate(count, orthanc)}   x{stow / orthanc:.2f}"
        )


def _database(server: BackgroundServer) -> str:
    return "PostgreSQL" if server.settings.database_url.startswith("postgresql") else "SQLite"


def _header_only(patient: int, study: int, series: int, instance: int, uids: tuple[str, str]) -> bytes:
    """A small, valid instance without pixel data: fast to make and ingest, fully indexed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids
    ds.PatientName = f"PATIENT^{patient:05d}"
    ds.PatientID = f"P{patient:05d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "FM"[patient % 2]
    ds.StudyDate = f"2025{1 + study % 12:02d}{1 + patient % 28:02d}"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"A{patient:05d}{study}"
    ds.StudyDescription = "CT CHEST"
    ds.Modality = ("CT", "MR", "CR", "US")[series % 4]
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = instance + 1
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def fill_archive(server: BackgroundServer, instances: int) -> int:
    """Ingest ``instances`` header-only instances (2 studies per patient); returns the patient count."""
    per_study = 4 * 5  # 4 series of 5 instances
    studies = instances // per_study
    jobs = []
    for number in range(studies):
        patient, study = number // 2, number % 2
        study_uid = generate_uid()
        for series in range(4):
            series_uid = generate_uid()
            jobs += [(patient, study, series, i, (study_uid, series_uid)) for i in range(5)]
    archive = server.ctx.archive
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda job: archive.ingest_bytes(_header_only(*job)), jobs))
    assert all(o.ok for o in outcomes)
    print(f"\nfilled the archive with {len(jobs)} instances in {time.perf_counter() - start:.1f} s")
    return (studies + 1) // 2


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def bench_find(server: BackgroundServer, repeats: int, patients: int) -> None:
    patient = f"{min(123, patients - 1):05d}"
    queries: list[tuple[str, QueryLevel, dict[str, str]]] = [
        ("study by PatientID", QueryLevel.STUDY, {"PatientID": f"P{patient}", "StudyInstanceUID": ""}),
        (
            "study by name wildcard",
            QueryLevel.STUDY,
            {"PatientName": f"PATIENT^{patient[:-1]}*", "StudyInstanceUID": ""},
        ),
        ("study by date range", QueryLevel.STUDY, {"StudyDate": "20250201-20250202", "StudyInstanceUID": ""}),
        (
            "series of a study",
            QueryLevel.SERIES,
            {"StudyInstanceUID": "?", "Modality": "", "SeriesInstanceUID": ""},
        ),
        ("instances of a series", QueryLevel.INSTANCE, {"SeriesInstanceUID": "?", "SOPInstanceUID": ""}),
    ]
    with server.ctx.archive.sessions() as session:
        sample = run_query(session, QuerySpec(QueryLevel.SERIES, {"PatientID": f"P{patient}"}, limit=1))[0]
    for _, _, matches in queries:
        if matches.get("StudyInstanceUID") == "?":
            matches["StudyInstanceUID"] = sample.study_instance_uid
        if matches.get("SeriesInstanceUID") == "?":
            matches["SeriesInstanceUID"] = sample.series_instance_uid

    ae = AE(ae_title=SCU)
    assoc = ae.associate(
        "127.0.0.1", server.dicom_port, contexts=[build_context(StudyRootQueryRetrieveInformationModelFind)],
        ae_title=server.settings.ae_title,
    )  # fmt: skip
    disable_nagle(assoc)
    level_names = {QueryLevel.STUDY: "STUDY", QueryLevel.SERIES: "SERIES", QueryLevel.INSTANCE: "IMAGE"}
    qido_paths = {
        QueryLevel.STUDY: lambda m: "/studies",
        QueryLevel.SERIES: lambda m: f"/studies/{m['StudyInstanceUID']}/series",
        QueryLevel.INSTANCE: lambda m: (
            f"/studies/{sample.study_instance_uid}/series/{m['SeriesInstanceUID']}/instances"
        ),
    }
    http = requests.Session()

    def c_find(level: QueryLevel, matches: dict[str, str]) -> int:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level_names[level]
        for keyword, value in matches.items():
            setattr(identifier, keyword, value)
        return sum(
            1
            for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
            if ds
        )

    def qido(level: QueryLevel, matches: dict[str, str]) -> int:
        params = {
            k: v
            for k, v in matches.items()
            if v and not (level is not QueryLevel.STUDY and k.endswith("UID"))
        }
        response = http.get(
            server.url + "/dicom-web" + qido_paths[level](matches),
            params=params,
            headers={"Accept": "application/dicom+json"},
        )
        return len(response.json()) if response.status_code == 200 else 0

    def matcher(level: QueryLevel, matches: dict[str, str]) -> int:
        with server.ctx.archive.sessions() as session:
            return len(run_query(session, QuerySpec(level, dict(matches), limit=1000)))

    def timed(
        fn: Callable[[QueryLevel, dict[str, str]], int], level: QueryLevel, matches: dict[str, str]
    ) -> tuple[list[float], int]:
        samples, found = [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            found = fn(level, matches)
            samples.append(time.perf_counter() - start)
        return samples, found

    floor = _CannedFindSCP()

    def canned(level: QueryLevel, matches: dict[str, str]) -> int:
        return floor.find(level_names[level])

    with server.ctx.archive.sessions() as session:
        archived = session.scalar(select(func.count(Instance.id)))
    print(
        f"\nC-FIND latency at {archived} instances,"
        f" {repeats} runs each (ms, p50 / p99).\nBaselines: the matcher alone, QIDO-RS, and a pynetdicom SCP"
        " answering the same number of canned matches without any archive (pynetdicom's own floor)."
    )
    print(
        f"  {'query':23} {'matches':>7}  {'matcher':>13}  {'QIDO-RS':>13}  {'pynetdicom floor':>16}"
        f"  {'C-FIND':>13}  C-FIND/QIDO  C-FIND/floor"
    )
    for name, level, matches in queries:
        base, found_m = timed(matcher, level, matches)
        web, found_q = timed(qido, level, matches)
        dimse, found_c = timed(c_find, level, matches)
        assert found_m == found_c, f"{name}: matcher {found_m} vs C-FIND {found_c}"
        floor.matches = found_c
        bare, _ = timed(canned, level, matches)
        (b50, b99), (w50, w99), (d50, d99) = _percentiles(base), _percentiles(web), _percentiles(dimse)
        f50, f99 = _percentiles(bare)
        if name == "study by PatientID":
            record(
                Figure(
                    "query",
                    f"C-FIND p50, {name}, {archived:,} instances",
                    f"{_database(server)}, 1 proc",
                    "ms",
                    d50,
                    "pynetdicom SCP, canned answers",
                    f50,
                    higher=False,
                )
            )
        print(
            f"  {name:23} {found_c:7d}  {b50:5.1f} / {b99:5.1f}  {w50:5.1f} / {w99:5.1f}  {f50:7.1f} / {f99:6.1f}"
            f"  {d50:5.1f} / {d99:5.1f}  {f'x{d50 / w50:.2f}':>11}  {f'x{d50 / f50:.2f}':>12}"
            + ("" if found_q == found_c else f"  (QIDO found {found_q})")
        )
    assoc.release()
    floor.close()


class _CannedFindSCP:
    """A pynetdicom C-FIND SCP that answers ``matches`` prepared identifiers: the cost of DIMSE alone."""

    def __init__(self) -> None:
        self.matches = 0
        scp = AE(ae_title="FLOOR")
        scp.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.server = scp.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._answer), (evt.EVT_CONN_OPEN, handle_connection_open)],
        )
        self.assoc = AE(ae_title=SCU).associate(
            "127.0.0.1", self.server.server_address[1],
            contexts=[build_context(StudyRootQueryRetrieveInformationModelFind)], ae_title="FLOOR",
        )  # fmt: skip
        disable_nagle(self.assoc)

    def _answer(self, event: evt.Event) -> Iterator[tuple[int, Dataset]]:
        for number in range(self.matches):
            ds = Dataset()
            ds.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
            ds.StudyInstanceUID = f"1.2.826.0.1.{number + 1}"
            yield 0xFF00, ds

    def find(self, level: str) -> int:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        identifier.StudyInstanceUID = ""
        responses = self.assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        return sum(1 for _, ds in responses if ds)

    def close(self) -> None:
        self.assoc.release()
        self.server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store-files", type=int, default=300, help="instances per ingest method")
    parser.add_argument("--instances", type=int, default=10_000, help="archive size for the C-FIND figures")
    parser.add_argument("--repeats", type=int, default=50, help="runs per query")
    parser.add_argument("--database-url", default="", help="index database (default: SQLite)")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc C-STORE baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dimse-") as tmp:
        work = Path(tmp)
        settings = load_settings(
            {},
            data_dir=work / "data",
            database_url=args.database_url,
            port=0,
            dicom_enabled=True,
            dicom_port=free_port(),
            dicom_peers=(DicomPeer(SCU, "127.0.0.1", 104),),
            query_max_limit=100_000,
        )
        server = BackgroundServer.start(settings)
        try:
            bench_store(server, work, args.store_files, not args.no_orthanc)
            patients = fill_archive(server, args.instances)
            bench_find(server, args.repeats, patients)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
