"""The ``tessera`` command: serve, import, demo, reconcile (and DICOM send/retrieve)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import IO

from tqdm import tqdm

from server.archive.archive import Archive, StoreOutcome, StoreStatus
from server.config import ConfigError, Settings, load_settings


def _import_sources(paths: list[Path]) -> Iterator[tuple[str, IO[bytes] | Path]]:
    """Every file to import: plain files, folders (recursively) and members of zip files."""
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.suffix.lower() == ".zip" and zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    for member in archive.infolist():
                        if not member.is_dir():
                            with archive.open(member) as fh:
                                yield f"{file}!{member.filename}", fh
            else:
                yield str(file), file


def _count_sources(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            if file.suffix.lower() == ".zip" and zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    total += sum(1 for m in archive.infolist() if not m.is_dir())
            else:
                total += 1
    return total


_worker_archive: Archive | None = None


def _start_import_worker(settings: Settings) -> None:
    global _worker_archive
    _worker_archive = Archive(settings, run_migrations=False)


def _import_chunk(files: list[Path]) -> list[tuple[str, StoreStatus, str]]:
    """In a worker process: ingest plain files through the one ingest path."""
    assert _worker_archive is not None
    results = []
    for file in files:
        try:
            outcome = _worker_archive.ingest_path(file)
        except OSError as exc:
            outcome = StoreOutcome(StoreStatus.REJECTED, reason=f"cannot read: {exc.strerror or exc}")
        results.append((str(file), outcome.status, outcome.reason))
    return results


def import_paths(
    archive: Archive,
    paths: list[Path],
    *,
    quiet: bool = False,
    jobs: int = 1,
    identity: dict[str, str] | None = None,
) -> tuple[Counter[StoreStatus], list[tuple[str, str]]]:
    """Import through the one ingest path; returns counts and (file, reason) for each rejection.

    With ``jobs`` > 1, plain files are ingested by that many worker processes (parsing is
    CPU-bound Python, so threads would not help); zip members are read here, in order.
    """
    counts: Counter[StoreStatus] = Counter()
    rejected: list[tuple[str, str]] = []
    missing = [p for p in paths if not p.exists()]
    for path in missing:
        rejected.append((str(path), "no such file or folder"))
        counts[StoreStatus.REJECTED] += 1
    present = [p for p in paths if p.exists()]
    with tqdm(total=_count_sources(present), unit="file", disable=quiet, file=sys.stderr) as bar:
        sources = _import_sources(present)
        if jobs > 1:
            sources = _import_in_workers(archive.settings, sources, jobs, counts, rejected, bar)
        for name, source in sources:
            try:
                outcome: StoreOutcome = (
                    archive.ingest_path(source) if isinstance(source, Path) else archive.ingest_stream(source)
                )
            except OSError as exc:
                outcome = StoreOutcome(StoreStatus.REJECTED, reason=f"cannot read: {exc.strerror or exc}")
            counts[outcome.status] += 1
            if not outcome.ok:
                rejected.append((name, outcome.reason))
            bar.update(1)
    if any(reason.startswith(NOT_DICOM) for _, reason in rejected):
        _import_other_formats(archive, counts, rejected, identity or {})
    return counts, rejected


NOT_DICOM = "not a DICOM Part 10 file"


def _import_other_formats(
    archive: Archive, counts: Counter[StoreStatus], rejected: list[tuple[str, str]], identity: dict[str, str]
) -> None:
    """Files that are not DICOM go to the modules that import other formats (vendor slides...)."""
    from server.modules import ModuleRegistry

    importers = ModuleRegistry.discover().importers()
    for position, (name, reason) in enumerate(list(rejected)):
        path = Path(name)
        if not reason.startswith(NOT_DICOM) or "!" in name or not path.is_file():
            continue
        for importer in importers:
            try:
                outcomes = importer.import_file(archive, path, identity or None)
            except ValueError as exc:
                rejected[position] = (name, str(exc))
                break
            if outcomes is None:
                continue
            counts[StoreStatus.REJECTED] -= 1
            failed = [o for o in outcomes if not o.ok]
            for outcome in outcomes:
                counts[outcome.status] += 1
            rejected[position] = (name, failed[0].reason) if failed else (name, "")
            break
    rejected[:] = [(name, reason) for name, reason in rejected if reason]


def _import_in_workers(
    settings: Settings,
    sources: Iterator[tuple[str, IO[bytes] | Path]],
    jobs: int,
    counts: Counter[StoreStatus],
    rejected: list[tuple[str, str]],
    bar: tqdm,
) -> Iterator[tuple[str, IO[bytes] | Path]]:
    """Send plain files to worker processes in chunks; hand zip members back to the caller."""
    chunk: list[Path] = []
    with ProcessPoolExecutor(jobs, initializer=_start_import_worker, initargs=(settings,)) as pool:
        futures = []
        for name, source in sources:
            if isinstance(source, Path):
                chunk.append(source)
                if len(chunk) == 32:
                    futures.append(pool.submit(_import_chunk, chunk))
                    chunk = []
            else:
                yield name, source
        if chunk:
            futures.append(pool.submit(_import_chunk, chunk))
        for future in as_completed(futures):
            for name, status, reason in future.result():
                counts[status] += 1
                if status is StoreStatus.REJECTED:
                    rejected.append((name, reason))
                bar.update(1)


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    archive = Archive(settings)
    try:
        identity = {
            key: value
            for key, value in (
                ("patient_name", args.patient_name),
                ("patient_id", args.patient_id),
                ("accession_number", args.accession_number),
                ("study_description", args.study_description),
            )
            if value
        }
        counts, rejected = import_paths(
            archive, [Path(p) for p in args.paths], quiet=args.quiet, jobs=args.jobs, identity=identity
        )
    finally:
        archive.close()
    for name, reason in rejected:
        print(f"rejected {name}: {reason}", file=sys.stderr)
    stored = counts[StoreStatus.STORED] + counts[StoreStatus.REPLACED]
    present = counts[StoreStatus.ALREADY_PRESENT] + counts[StoreStatus.KEPT_EXISTING]
    print(f"{stored} stored, {present} already present, {counts[StoreStatus.REJECTED]} rejected")
    return 1 if counts[StoreStatus.REJECTED] else 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from server.security.policy import StartupRefused
    from server.serve import serve

    try:
        serve(settings)
    except (StartupRefused, ConfigError) as exc:
        print(f"tessera: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Fill an empty archive with the generated demo cases, then serve it."""
    from sample_data.demo import write_demo_archive

    archive = Archive(settings)
    try:
        with archive.sessions() as session:
            from sqlalchemy import func, select

            from server.archive.models import Instance

            empty = not session.scalar(select(func.count()).select_from(Instance))
        if empty:
            demo_dir = settings.data_dir / "demo-source"
            print(f"generating demo cases in {demo_dir} ...", file=sys.stderr)
            files = write_demo_archive(demo_dir)
            counts, rejected = import_paths(archive, files, quiet=args.quiet, jobs=os.cpu_count() or 1)
            shutil.rmtree(demo_dir, ignore_errors=True)  # the archive holds its own copies
            for name, reason in rejected:
                print(f"rejected {name}: {reason}", file=sys.stderr)
            print(f"demo archive: {counts[StoreStatus.STORED]} instances stored", file=sys.stderr)
            if rejected:
                return 1
    finally:
        archive.close()
    if args.no_serve:
        return 0
    print(f"open http://{settings.host}:{settings.port}/ in a browser", file=sys.stderr)
    return cmd_serve(args, settings)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    archive = Archive(settings)
    try:
        report = archive.reconcile(repair=args.repair)
    finally:
        archive.close()
    for uid in report.missing_files:
        print(f"indexed instance without its file: {uid}")
    for digest in report.orphan_files:
        print(f"file without index row: {digest}{' (indexed now)' if report.repaired else ''}")
    print(
        f"{len(report.missing_files)} missing files, {len(report.orphan_files)} unindexed files, {report.removed_temp_files} interrupted uploads removed"
    )
    return 0 if report.clean or (report.repaired and not report.missing_files) else 1


def cmd_export_deidentified(args: argparse.Namespace, settings: Settings) -> int:
    """Write a study de-identified (PS3.15 Basic Profile) to a folder or a .zip; audited as an export."""
    from server.archive.deidentify import (
        BurnedInAnnotationError,
        archived_study_files,
        directory_writer,
        export_study,
        study_patient_ids,
        zip_writer,
    )
    from server.security.audit import EXPORT, MINOR_FAILURE, SUCCESS, AuditRecord
    from server.security.cli import _operator
    from server.security.service import SecurityService

    out = Path(args.out)
    archive = Archive(settings)
    security = SecurityService(settings)
    try:
        files = archived_study_files(archive, args.study)
        if not files:
            print(f"tessera: no study {args.study} in the archive", file=sys.stderr)
            return 1
        if out.exists() and (out.is_file() or any(out.iterdir())):
            print(f"tessera: {out} exists and is not an empty folder; choose a new path", file=sys.stderr)
            return 2
        try:
            key = Path(args.key_file).read_bytes() if args.key_file else None
        except OSError as exc:
            print(
                f"tessera: cannot read the key file {args.key_file}: {exc.strerror or exc}", file=sys.stderr
            )
            return 2
        patients = study_patient_ids(archive, args.study)
        record = AuditRecord(
            EXPORT,
            "R",
            username=_operator(),
            auth_method="cli",
            client_address="local",
            resource=f"tessera export-deidentified {args.study} --out {out}",
            study_uids=[args.study],
            patient_ids=patients,
        )
        # Written under a temporary name and put in place only once the audit record is committed.
        partial = out.parent / f".{out.name}.part"
        try:
            if out.suffix.lower() == ".zip":
                with zipfile.ZipFile(partial, "w") as bundle:
                    report = export_study(
                        files, zip_writer(bundle), key=key, leave_out_burned_in=args.leave_out_burned_in
                    )
            else:
                report = export_study(
                    files, directory_writer(partial), key=key, leave_out_burned_in=args.leave_out_burned_in
                )
        except (BurnedInAnnotationError, OSError) as exc:
            _remove(partial)
            record.outcome, record.outcome_detail = MINOR_FAILURE, f"refused: {type(exc).__name__}"
            security.record(record)
            print(f"tessera: export of {args.study} to {out} failed: {exc}", file=sys.stderr)
            return 1
        record.outcome, record.outcome_detail = SUCCESS, "de-identified (PS3.15 E.1 Basic Profile)"
        record.objects = {
            "deidentified": ["yes"],
            "exported_study": [report.study_uid],
            "left_out": report.left_out,
        }
        try:
            security.record(record)
        except Exception:
            _remove(partial)  # an export nobody can account for is not kept
            raise
        os.replace(partial, out)
    finally:
        security.close()
        archive.close()
    for uid in report.left_out:
        print(f"left out (BurnedInAnnotation=YES): {uid}", file=sys.stderr)
    print(
        f"{report.instances} instances in {report.series} series written to {out} as study {report.study_uid}"
    )
    return 0


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _deployment_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--data-dir", default=default, help="data folder (TESSERA_DATA_DIR; default ./tessera-data)"
    )
    parser.add_argument(
        "--database-url",
        default=default,
        help="SQLAlchemy URL of the index (TESSERA_DATABASE_URL; default SQLite in the data folder)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log debug messages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera", description="Specialty imaging viewer server over one DICOM archive."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", help="HTTP address to bind (TESSERA_HOST; default 127.0.0.1)")
        p.add_argument("--port", type=int, help="HTTP port (TESSERA_PORT; default 8042)")
        p.add_argument(
            "--processes",
            type=int,
            help="HTTP processes sharing the port; 0 = one per core (TESSERA_PROCESSES)",
        )
        p.add_argument("--dicom-port", type=int, help="DICOM port (TESSERA_DICOM_PORT; default 11112)")
        p.add_argument("--no-dicom", action="store_true", help="do not listen for DICOM associations")

    serve = sub.add_parser("serve", help="serve the archive over HTTP (DICOMweb, viewers) and DICOM")
    server_options(serve)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="generate demo cases into an empty archive, then serve it")
    server_options(demo)
    demo.add_argument("--no-serve", action="store_true", help="only fill the archive")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    imp = sub.add_parser("import", help="import DICOM files, folders (recursively) and zip files")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    imp.add_argument("--patient-name", help="for non-DICOM files (vendor slides): PatientName, e.g. Doe^Jane")
    imp.add_argument("--patient-id", help="for non-DICOM files: PatientID")
    imp.add_argument("--accession-number", help="for non-DICOM files: AccessionNumber (the case)")
    imp.add_argument("--study-description", help="for non-DICOM files: StudyDescription")
    imp.add_argument(
        "-j", "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)"
    )
    imp.set_defaults(func=cmd_import)

    rec = sub.add_parser("reconcile", help="compare the index with the stored files after a crash")
    rec.add_argument("--repair", action="store_true", help="index complete files that have no index row")
    rec.set_defaults(func=cmd_reconcile)

    deid = sub.add_parser(
        "export-deidentified", help="export a study de-identified (PS3.15 Basic Profile) to a folder or .zip"
    )
    deid.add_argument("study", metavar="STUDY_UID")
    deid.add_argument("--out", required=True, help="a new folder, or a file ending in .zip")
    deid.add_argument(
        "--leave-out-burned-in",
        action="store_true",
        help="leave out instances with BurnedInAnnotation=YES instead of refusing the export",
    )
    deid.add_argument(
        "--key-file",
        help="secret key for the UID mapping: the same key maps the same UIDs alike across exports "
        "(default: a new random key, so exports cannot be linked)",
    )
    deid.set_defaults(func=cmd_export_deidentified)

    try:
        from server.dimse.cli import add_commands
    except ImportError:
        pass
    else:
        add_commands(sub)
    from server.modules import ModuleRegistry

    for provider in ModuleRegistry.discover().command_providers():
        provider.add_commands(sub)
    from server.security.cli import add_commands as add_security_commands

    add_security_commands(sub)
    from server.jobs.cli import add_commands as add_job_commands

    add_job_commands(sub)
    # The deployment options go before or after the command; given after, they win.
    _deployment_options(parser, argparse.SUPPRESS)
    for command in sub.choices.values():
        _deployment_options(command, argparse.SUPPRESS)
    parser.set_defaults(data_dir=None, database_url=None, verbose=False)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        "data_dir": Path(args.data_dir) if args.data_dir else None,
        "database_url": args.database_url,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "processes": getattr(args, "processes", None),
        "dicom_port": getattr(args, "dicom_port", None),
    }
    if getattr(args, "no_dicom", False):
        overrides["dicom_enabled"] = False
    return load_settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    for noisy in ("alembic", "highdicom", "openjpeg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"tessera: configuration error: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
