"""``tessera send`` and ``tessera retrieve``: the archive as an SCU towards known DICOM peers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from server.archive.archive import Archive, StoredInstance
from server.config import Settings
from server.dimse.scu import (
    DimseError,
    TransferReport,
    instances_to_send,
    known_peer,
    retrieve_study,
    send_instances,
)


def add_commands(subparsers: Any) -> None:
    """Add ``send`` and ``retrieve`` to the ``tessera`` command."""
    send = subparsers.add_parser(
        "send",
        help="C-STORE a stored study or series to a known DICOM peer",
        description="Send a study (or one series) from the archive to a peer listed in TESSERA_DICOM_PEERS.",
    )
    send.add_argument("--peer", required=True, help="AE title of the destination (from TESSERA_DICOM_PEERS)")
    what = send.add_argument_group("what to send (at least one)")
    what.add_argument("--study", help="StudyInstanceUID")
    what.add_argument("--series", help="SeriesInstanceUID (alone, or within --study)")
    send.set_defaults(func=run_send)

    retrieve = subparsers.add_parser(
        "retrieve",
        help="query a known DICOM peer and pull a study into the archive",
        description=(
            "C-FIND the study at the peer, then C-MOVE it to this archive's AE title (the peer must "
            "know us as a move destination) or C-GET it over the same association."
        ),
    )
    retrieve.add_argument("--peer", required=True, help="AE title of the peer (from TESSERA_DICOM_PEERS)")
    retrieve.add_argument("--study", required=True, help="StudyInstanceUID to retrieve")
    retrieve.add_argument(
        "--method", choices=("move", "get"), default="move", help="C-MOVE (default) or C-GET"
    )
    retrieve.set_defaults(func=run_retrieve)


def _print_report(verb: str, report: TransferReport) -> None:
    print(f"{verb}: {report.completed} completed, {report.warning} with warnings, {report.failed} failed")
    for uid in report.failed_instances:
        print(f"  failed: {uid}", file=sys.stderr)


def run_send(args: argparse.Namespace, settings: Settings) -> int:
    if not args.study and not args.series:
        print("tessera send: give --study and/or --series", file=sys.stderr)
        return 2
    try:
        peer = known_peer(settings, args.peer)
    except DimseError as exc:
        print(f"tessera send: {exc}", file=sys.stderr)
        return 2
    archive = Archive(settings)
    try:
        instances = instances_to_send(archive, args.study, args.series)
        if not instances:
            print("tessera send: nothing stored matches", file=sys.stderr)
            return 1
        with tqdm(total=len(instances), unit="instance", desc=f"to {peer.ae_title}", disable=None) as bar:

            def advance(_instance: StoredInstance, _status: int) -> None:
                bar.update(1)

            report = send_instances(settings, peer, instances, on_sent=advance)
    except DimseError as exc:
        print(f"tessera send: {exc}", file=sys.stderr)
        return 1
    finally:
        archive.close()
    _print_report("sent", report)
    return 0 if report.ok else 1


def run_retrieve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        peer = known_peer(settings, args.peer)
    except DimseError as exc:
        print(f"tessera retrieve: {exc}", file=sys.stderr)
        return 2
    archive = Archive(settings)
    try:
        report = retrieve_study(settings, archive, peer, args.study, args.method)
    except DimseError as exc:
        print(f"tessera retrieve: {exc}", file=sys.stderr)
        return 1
    finally:
        archive.close()
    _print_report("retrieved", report)
    return 0 if report.ok else 1
