"""Coverage-guided fuzzing of DICOM ingest with atheris (run by hand; not part of the test suite).

    .venv/bin/pip install atheris            # not a project dependency
    .venv/bin/python tests/fuzz/atheris_ingest.py -max_total_time=300 -rss_limit_mb=2048

Each input goes through ``Archive.ingest_bytes`` on a throwaway SQLite archive; anything but a
``StoreOutcome`` (an exception escaping ingest) is a finding, and atheris saves the input as
``crash-*``. The corpus starts from tests/fuzz/seeds.py.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["server", "pydicom"]):
    from server.archive.archive import Archive, StoreOutcome, StoreStatus

from tests.conftest import make_settings
from tests.fuzz.seeds import seed_files

warnings.simplefilter("ignore")
ARCHIVE = Archive(make_settings(Path(tempfile.mkdtemp(prefix="atheris-ingest-")) / "data"))


def one_input(data: bytes) -> None:
    outcome = ARCHIVE.ingest_bytes(data)
    assert isinstance(outcome, StoreOutcome)
    if outcome.status is StoreStatus.REJECTED:
        assert outcome.failure_status and outcome.reason


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="atheris-ingest-corpus-"))
    for number, data in enumerate(seed_files()):
        (corpus / f"seed-{number}.dcm").write_bytes(data)
    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
