"""The tessera command as a user runs it: import files, folders and zips; summaries; exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.dicom_cases import bad_inputs, ct_bytes

TESSERA = [sys.executable, "-m", "server.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TESSERA, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_import_files_folders_and_zips(tmp_path: Path, varied_files: list[Path]) -> None:
    folder = varied_files[0].parents[3]  # the varied set root: PatientID/Accession/Series/file
    zipped = tmp_path / "extra.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("nested/one.dcm", ct_bytes(SOPInstanceUID="1.2.3.77"))
    data = tmp_path / "data"
    result = run("import", str(folder), str(zipped), "--data-dir", str(data), "-q")
    assert result.returncode == 0, result.stderr
    assert f"{len(varied_files) + 1} stored, 0 already present, 0 rejected" in result.stdout
    again = run("import", str(folder), "--data-dir", str(data), "-q")
    assert (
        again.returncode == 0 and f"0 stored, {len(varied_files)} already present, 0 rejected" in again.stdout
    )


def test_import_continues_past_bad_files_and_names_them(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.dcm").write_bytes(ct_bytes())
    (folder / "notes.txt").write_bytes(bad_inputs()["not DICOM"])
    (folder / "cut.dcm").write_bytes(bad_inputs()["truncated pixel data"])
    result = run(
        "import", str(folder), str(tmp_path / "missing.dcm"), "--data-dir", str(tmp_path / "data"), "-q"
    )
    assert result.returncode == 1
    assert "1 stored, 0 already present, 3 rejected" in result.stdout
    assert f"rejected {folder / 'notes.txt'}: not a DICOM Part 10 file" in result.stderr
    assert f"rejected {folder / 'cut.dcm'}:" in result.stderr and "truncated" in result.stderr
    assert "missing.dcm: no such file or folder" in result.stderr


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "one.dcm").write_bytes(ct_bytes())
    data = tmp_path / "env-data"
    result = run("import", str(tmp_path / "one.dcm"), "-q", env={"TESSERA_DATA_DIR": str(data)})
    assert result.returncode == 0 and (data / "index.sqlite3").exists()
    bad = run("import", str(tmp_path / "one.dcm"), "-q", env={"TESSERA_PORT": "eighty"})
    assert bad.returncode == 2 and "setting port" in bad.stderr


def test_deployment_options_before_or_after_the_command(tmp_path: Path) -> None:
    (tmp_path / "one.dcm").write_bytes(ct_bytes())
    result = run("--data-dir", str(tmp_path / "before"), "import", str(tmp_path / "one.dcm"), "-q")
    assert result.returncode == 0 and (tmp_path / "before" / "index.sqlite3").exists()


def test_every_command_has_help() -> None:
    for command in ("serve", "import", "demo", "reconcile"):
        result = run(command, "--help")
        assert result.returncode == 0 and "--data-dir" in result.stdout


def test_reconcile_reports_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "one.dcm").write_bytes(ct_bytes())
    data = tmp_path / "data"
    assert run("import", str(tmp_path / "one.dcm"), "--data-dir", str(data), "-q").returncode == 0
    assert run("reconcile", "--data-dir", str(data)).returncode == 0
    for blob in (data / "blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()
    result = run("reconcile", "--data-dir", str(data))
    assert result.returncode == 1 and "indexed instance without its file" in result.stdout
