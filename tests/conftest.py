"""Shared fixtures: settings on a fresh data folder, over SQLite and over the real PostgreSQL."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from server.archive.archive import Archive
from server.config import Settings, load_settings
from server.context import ServerContext
from server.serve import BackgroundServer, build_context

POSTGRES_ADMIN_URL = os.environ.get(
    "TESSERA_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL)
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server URL; CI has one, so its absence fails loudly unless explicitly allowed."""
    if not _postgres_available():
        if os.environ.get("TESSERA_TEST_ALLOW_NO_POSTGRES") == "1":
            pytest.skip("PostgreSQL is not reachable (allowed by TESSERA_TEST_ALLOW_NO_POSTGRES)")
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"tessera_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The index database: "" means the embedded SQLite default."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres_database"))


def make_settings(data_dir: Path, db_url: str = "", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": db_url,
        "port": 0,
        "dicom_enabled": False,
        "dicom_port": free_port(),
        "worker_threads": 4,
    }
    values.update(overrides)
    return load_settings({}, **values)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path / "data", db_url)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    archive = Archive(settings)
    yield archive
    archive.close()


@pytest.fixture
def ctx(settings: Settings) -> Iterator[ServerContext]:
    context = build_context(settings)
    yield context
    context.executor.shutdown(wait=True)
    context.archive.close()


@pytest.fixture
def tessera_server_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., BackgroundServer]]:
    """Start whole Tessera servers (HTTP, and DIMSE when dicom_enabled=True) in this process.

    Uses the test's ``db_url`` when the test asks for it, SQLite otherwise.
    """
    servers: list[BackgroundServer] = []
    db = str(request.getfixturevalue("db_url")) if "db_url" in request.fixturenames else ""

    def start(**overrides: Any) -> BackgroundServer:
        data_dir = overrides.pop("data_dir", tmp_path / f"server{len(servers)}")
        database_url = overrides.pop("database_url", db)
        server = BackgroundServer.start(make_settings(Path(data_dir), database_url, **overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def tessera_server(tessera_server_factory: Callable[..., BackgroundServer]) -> BackgroundServer:
    return tessera_server_factory()


@pytest.fixture(scope="session")
def varied_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The generated radiology set: several patients, modalities and transfer syntaxes."""
    from sample_data.radiology import varied_set

    return varied_set(tmp_path_factory.mktemp("varied"))
