"""What every handler and module is given: the archive, the settings, and where blocking work runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from server.archive.archive import Archive
from server.archive.documents import DocumentStore
from server.config import Settings
from server.imaging.frames import HeaderCache

if TYPE_CHECKING:
    from server.modules import ModuleRegistry

T = TypeVar("T")


@dataclass
class ServerContext:
    """Shared by the HTTP app, the DICOM services and the modules of one process."""

    settings: Settings
    archive: Archive
    executor: ThreadPoolExecutor
    registry: ModuleRegistry | None = None
    headers: HeaderCache = field(default_factory=HeaderCache)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def documents(self) -> DocumentStore:
        """Where modules keep what users make (plans, annotations): the index database, shared by all processes."""
        return DocumentStore(self.archive.sessions)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run decoding, parsing or SQL off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
