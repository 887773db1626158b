"""Vendor slides through the command line: `tessera import` and `tessera convert`."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydicom import dcmread

from server.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "openslide-fixtures"


def test_import_turns_vendor_slides_into_dicom_and_names_bad_ones(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("boxes.tiff", "unreadable.svs"):
        shutil.copy(FIXTURES / name, folder / name)
    code = main(
        [
            "import",
            str(folder),
            "-q",
            "--data-dir",
            str(tmp_path / "data"),
            "--patient-id",
            "PATH-1",
            "--accession-number",
            "S25-9",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "0 already present, 1 rejected" in out and out.split(" stored")[0].strip().isdigit()
    assert int(out.split(" stored")[0]) >= 1
    assert "unreadable.svs" in err and "cannot be read" in err


def test_convert_writes_dicom_wsi_or_stores_it(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "dicom"
    assert (
        main(["convert", str(FIXTURES / "small.svs"), "--out", str(out), "--patient-name", "Doe^Jane"]) == 0
    )
    files = sorted(out.glob("*.dcm")) or sorted(p for p in out.rglob("*") if p.is_file())
    assert files
    ds = dcmread(files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6" and str(ds.PatientName) == "Doe^Jane"
    assert main(["convert", str(FIXTURES / "small.svs"), "--data-dir", str(tmp_path / "data")]) == 0
    assert main(["convert", str(FIXTURES / "unopenable.tiff"), "--data-dir", str(tmp_path / "data")]) == 1
    assert "openslide cannot open" in capsys.readouterr().err
