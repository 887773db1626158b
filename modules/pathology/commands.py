"""``tessera convert``: a vendor slide file (SVS, NDPI, MRXS, tiled TIFF...) to DICOM WSI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from modules.pathology.convert import SlideFileError, convert_slide, import_slide
from modules.pathology.dicom_writer import SlideIdentity
from server.archive.archive import Archive
from server.config import Settings


def add_commands(subparsers: Any) -> None:
    convert = subparsers.add_parser(
        "convert",
        help="turn a vendor slide into DICOM WSI: store it in the archive, or write the files with --out",
    )
    convert.add_argument("slide", type=Path, help="the slide file (any format openslide reads)")
    convert.add_argument("--out", type=Path, help="write the DICOM files here instead of storing them")
    convert.add_argument("--patient-name", default="", help="PatientName, e.g. Doe^Jane")
    convert.add_argument("--patient-id", default="", help="PatientID")
    convert.add_argument("--accession-number", default="", help="AccessionNumber (the case)")
    convert.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace, settings: Settings) -> int:
    given = {
        "patient_name": args.patient_name,
        "patient_id": args.patient_id,
        "accession_number": args.accession_number,
    }
    identity = SlideIdentity(**given) if any(given.values()) else None  # else the sidecar <slide>.json
    try:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            files = convert_slide(args.slide, args.out, identity)
            print(f"{len(files)} DICOM files written to {args.out}")
            return 0
        archive = Archive(settings)
        try:
            outcomes = import_slide(archive, args.slide, identity)
        finally:
            archive.close()
    except (SlideFileError, OSError) as exc:
        print(f"tessera convert: {args.slide}: {exc}", file=sys.stderr)
        return 1
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        print(f"rejected {outcome.sop_instance_uid}: {outcome.reason}", file=sys.stderr)
    print(f"{len(outcomes) - len(failed)} instances stored from {args.slide}")
    return 1 if failed else 0
