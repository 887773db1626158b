"""`python -m tests.bench --quick` (what `make bench` runs, at tiny sizes) prints the one summary table
with every row: each benchmark ran and recorded its figures beside its baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_ROWS = [
    *(
        rf"\| ingest +\| STOW-RS, 6 CT instances +\| {db}, {p} proc "
        for db in ("SQLite", "PostgreSQL")
        for p in (1, 2)
    ),
    *(
        rf"\| query +\| QIDO-RS p50, {q}, 60 instances +\| {db}, {p} proc "
        for q in ("PatientID exact", "PatientName wildcard", "StudyDate range")
        for db in ("SQLite", "PostgreSQL")
        for p in (1, 2)
    ),
    r"\| ingest +\| C-STORE \(dcmsend, TCP_NODELAY\), 4 CT instances +\| SQLite, 1 proc ",
    r"\| query +\| C-FIND p50, study by PatientID, \d+ instances ",
    *(
        rf"\| tiles +\| DZI tiles/s, {kind}, {cache}, 2 clients +\| {fmt}, 2 proc "
        for kind in ("full-res", "all-levels")
        for cache in ("cold", "warm")
        for fmt in ("DICOM WSI", "tiled TIFF")
    ),
    r"\| cardiology +\| MP4 creation, 12-frame loop .*\| ffmpeg CLI, same frames: [\d.]+ ",
    r"\| cardiology +\| frames/s served, 12-frame loop ",
    r"\| cardiology +\| time to first frame, 12-frame loop ",
    *(
        rf"\| mammography +\| hanging of 8 images 192×240, {name} .*\| 8 whole WADO-RS /rendered frames: [\d.]+ "
        for name in ("cold", "warm server, empty browser cache", "warm server and browser cache")
    ),
]


def test_bench_quick_prints_one_table_with_every_row() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--no-orthanc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # 443 s measured on a 2-core machine shared with other test runs (load ~10)
    )
    output = result.stdout
    assert result.returncode == 0, (output[-3000:], result.stderr[-3000:])
    table = output[output.index("## Summary") :]
    missing = [row for row in EXPECTED_ROWS if not re.search(row, table)]
    assert not missing, (missing, table)
    # Every Tessera figure is a number; every baseline is a number or marked n/a with the reason.
    for line in table.splitlines()[4:]:
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert re.match(r"[\d,.]+ ", cells[3]), line
            assert re.search(r": ([\d,.]+|n/a \(.+\))$", cells[4]), line
    assert "n/a (skipped (--no-orthanc))" in table  # Orthanc rows are there, marked
