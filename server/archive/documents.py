"""Documents users make in a module (annotations, plans, measurements), kept in the index database.

Every serving process of one deployment shares the index database, but not necessarily a
data folder (with object storage each machine has its own): a document saved through one
machine must be read through any other, and two machines changing one document must not
lose either change. So a document is a row keyed by (module, kind, key) holding a JSON body
and a version number, not a file.

``update`` is an optimistic read-modify-write: read the body and its version, let the
caller change it, and write it back only if the version is still the one read (else read
again and retry). It runs the same on SQLite and PostgreSQL, holds no lock while the
caller's function runs, and never upgrades a read transaction to a write (which SQLite
refuses when another writer committed meanwhile). The calls are blocking: run them in the
executor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from server.archive.models import Base

log = logging.getLogger(__name__)

UPDATE_TIMEOUT_S = 30.0  # contention this long means something is wrong: say so instead of spinning


class ModuleDocument(Base):
    """One document: the module that owns it, what kind of document it is, and its key."""

    __tablename__ = "module_document"

    module: Mapped[str] = mapped_column(String(64), primary_key=True)  # the module id
    kind: Mapped[str] = mapped_column(String(64), primary_key=True)  # e.g. "annotations", "plan"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)  # e.g. a UID, or "study/sop"
    body: Mapped[Any] = mapped_column(JSON, nullable=False)
    version: Mapped[int] = mapped_column(Integer)  # 1 on creation, +1 on every write
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the user, if known


@dataclass(frozen=True)
class Document:
    key: str
    body: Any
    version: int
    updated_at: dt.datetime
    updated_by: str | None


class DocumentConflict(RuntimeError):
    """``update`` kept losing to other writers for longer than UPDATE_TIMEOUT_S."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _written(session: Session, statement: Any) -> bool:
    """Whether the INSERT / UPDATE / DELETE touched its row: asked through RETURNING, because the
    rowcount of an ORM-executed INSERT ... ON CONFLICT DO NOTHING is not reliable on PostgreSQL."""
    return session.execute(statement.returning(ModuleDocument.version)).first() is not None


class DocumentShelf:
    """One module's documents of one kind; every call is blocking (run it in the executor)."""

    def __init__(self, sessions: sessionmaker[Session], module: str, kind: str) -> None:
        self.sessions = sessions
        self.module = module
        self.kind = kind

    def _where(self, key: str) -> Any:
        return (
            (ModuleDocument.module == self.module)
            & (ModuleDocument.kind == self.kind)
            & (ModuleDocument.key == key)
        )

    def _insert(self, session: Session, key: str, body: Any, now: dt.datetime, by: str | None) -> Any:
        """INSERT of the document's first version, in the dialect that has ON CONFLICT."""
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        return insert(ModuleDocument).values(
            module=self.module, kind=self.kind, key=key, body=body, version=1, updated_at=now, updated_by=by
        )

    def get(self, key: str) -> Document | None:
        with self.sessions() as session:
            row = session.execute(
                select(
                    ModuleDocument.body,
                    ModuleDocument.version,
                    ModuleDocument.updated_at,
                    ModuleDocument.updated_by,
                ).where(self._where(key))
            ).one_or_none()
        return None if row is None else Document(key, row[0], row[1], _aware(row[2]), row[3])

    def put(self, key: str, body: Any, *, by: str | None = None) -> Document:
        """Create or replace the document (last writer wins: use ``update`` to build on what is there)."""
        now = _utcnow()
        with self.sessions() as session:
            statement = self._insert(session, key, body, now, by)
            statement = statement.on_conflict_do_update(
                index_elements=[ModuleDocument.module, ModuleDocument.kind, ModuleDocument.key],
                set_={
                    "body": statement.excluded.body,
                    "version": ModuleDocument.version + 1,
                    "updated_at": now,
                    "updated_by": by,
                },
            ).returning(ModuleDocument.version)
            version = int(session.execute(statement).scalar_one())
            session.commit()
        return Document(key, body, version, now, by)

    def add(self, key: str, body: Any, *, by: str | None = None) -> bool:
        """Create the document unless one exists (then leave it as it is); True if created."""
        with self.sessions() as session:
            statement = self._insert(session, key, body, _utcnow(), by).on_conflict_do_nothing(
                index_elements=[ModuleDocument.module, ModuleDocument.kind, ModuleDocument.key]
            )
            created = _written(session, statement)
            session.commit()
        return created

    def delete(self, key: str) -> bool:
        with self.sessions() as session:
            deleted = _written(session, delete(ModuleDocument).where(self._where(key)))
            session.commit()
        return deleted

    def with_prefix(self, prefix: str = "") -> list[Document]:
        """The documents whose key starts with ``prefix`` (all of this kind for ""), by key."""
        query = select(
            ModuleDocument.key,
            ModuleDocument.body,
            ModuleDocument.version,
            ModuleDocument.updated_at,
            ModuleDocument.updated_by,
        ).where(ModuleDocument.module == self.module, ModuleDocument.kind == self.kind)
        if prefix:
            query = query.where(ModuleDocument.key.startswith(prefix, autoescape=True))
        with self.sessions() as session:
            rows = session.execute(query.order_by(ModuleDocument.key)).all()
        return [Document(r[0], r[1], r[2], _aware(r[3]), r[4]) for r in rows]

    def update(self, key: str, change: Callable[[Any], Any], *, by: str | None = None) -> Document:
        """Read the body (None if there is none), write ``change(body)`` back if nobody wrote meanwhile.

        ``change`` may run more than once (once per lost race), each time on a freshly read
        body, so it must not keep state between calls. Other processes' updates are never lost.
        """
        deadline = time.monotonic() + UPDATE_TIMEOUT_S
        pause = 0.001
        while True:
            current = self.get(key)
            body = change(None if current is None else current.body)
            now = _utcnow()
            with self.sessions() as session:
                if current is None:
                    statement = self._insert(session, key, body, now, by).on_conflict_do_nothing(
                        index_elements=[ModuleDocument.module, ModuleDocument.kind, ModuleDocument.key]
                    )
                    version = 1
                else:
                    version = current.version + 1
                    statement = (
                        update(ModuleDocument)
                        .where(self._where(key), ModuleDocument.version == current.version)
                        .values(body=body, version=version, updated_at=now, updated_by=by)
                    )
                won = _written(session, statement)
                session.commit()
            if won:
                return Document(key, body, version, now, by)
            if time.monotonic() > deadline:
                raise DocumentConflict(f"{self.module}/{self.kind}/{key}: too many concurrent writers")
            time.sleep(pause * random.uniform(0.5, 1.5))  # jittered: racers do not collide again in step
            pause = min(pause * 2, 0.05)

    def import_files(
        self,
        files: Iterable[Path],
        key_for: Callable[[Path], str | None],
        read: Callable[[Path], Any],
    ) -> int:
        """Bring documents an earlier version kept as files into the shelf, once.

        A file whose document already exists changes nothing (the row may be newer);
        each imported file is renamed ``*.imported``, so it stays for the administrator
        but is not imported twice. Safe when several processes start at once. Returns how
        many documents were created."""
        created = 0
        for path in files:
            key = key_for(path)
            if key is None:
                continue
            try:
                body = read(path)
            except FileNotFoundError:  # another process imported it meanwhile
                continue
            except ValueError as exc:  # unreadable JSON: keep the file, say so
                log.warning("not importing %s: %s", path, exc)
                continue
            if self.add(key, body, by="import"):
                created += 1
            with contextlib.suppress(FileNotFoundError):  # another process renamed it first
                path.rename(path.with_name(path.name + ".imported"))
        if created:
            log.info("imported %d %s/%s document(s) from files", created, self.module, self.kind)
        return created


class DocumentStore:
    """Hands out shelves over the index database's sessions."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def shelf(self, module: str, kind: str) -> DocumentShelf:
        return DocumentShelf(self.sessions, module, kind)


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
