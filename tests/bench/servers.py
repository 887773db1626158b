"""Servers under benchmark, each in its own process on loopback: Tessera and (if installed) Orthanc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class TesseraProcess:
    def __init__(
        self, data_dir: Path, database_url: str = "", processes: int = 0, dicom: bool = False
    ) -> None:
        """``processes`` 0: one HTTP process per core, as `tessera serve` runs by default."""
        self.port = free_port()
        self.dicom_port = free_port()
        env = {
            **os.environ,
            "TESSERA_DATA_DIR": str(data_dir),
            "TESSERA_DATABASE_URL": database_url,
            "TESSERA_PORT": str(self.port),
            "TESSERA_PROCESSES": str(processes),
            "TESSERA_DICOM_ENABLED": "true" if dicom else "false",
            "TESSERA_DICOM_PORT": str(self.dicom_port),
            "TESSERA_DICOM_ALLOW_UNKNOWN": "true",
        }
        self.log = Path(str(data_dir).rstrip("/") + ".log")  # beside the data folder, not in it
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_http(self.url + "/api/health")
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; its log: {self.log.read_text(errors='replace')[-2000:]}") from None

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class OrthancProcess:
    """Orthanc from Debian's package, configured like Tessera: loopback, no auth, its default SQLite."""

    @staticmethod
    def available() -> bool:
        return shutil.which("Orthanc") is not None

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.dicom_port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "bench",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"),
            "HttpPort": self.port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": "ORTHANC",
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "Plugins": ["/usr/share/orthanc/plugins"] if Path("/usr/share/orthanc/plugins").exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False,
        }
        (work / "orthanc.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            ["Orthanc", str(work / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/system")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(20)
