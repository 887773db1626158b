"""The specialty-module interface and registry.

A module is found through the ``tessera.modules`` entry-point group; the core never
imports one by name. The built-in modules use exactly this interface, so a
third-party package can add a specialty the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tornado.web import RequestHandler

from server.archive.events import InstanceStored
from server.context import ServerContext

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "tessera.modules"


@dataclass(frozen=True)
class SeriesRecord:
    """What a module sees of a series when deciding whether it claims it."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    sop_class_uids: frozenset[str]
    body_part_examined: str = ""
    series_description: str = ""
    number_of_instances: int = 0


@dataclass(frozen=True)
class RouteSpec:
    """A route a module adds; ``pattern`` is relative to ``/{module id}/``."""

    pattern: str
    handler: type[RequestHandler]
    kwargs: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class SpecialtyModule(Protocol):
    id: str  # URL prefix and registry key, e.g. "pathology"
    title: str
    priority: int  # higher is asked first: specific claims before general ones
    static_dir: Path | None  # served at /{id}/static/
    hanging_protocols: Sequence[Any]  # data, not code

    def setup(self, ctx: ServerContext) -> None:
        """Called once per process before routes() and before any event."""

    def claims(self, series: SeriesRecord) -> bool: ...

    def routes(self, ctx: ServerContext) -> list[RouteSpec]: ...

    def on_instance_stored(self, event: InstanceStored) -> None:
        """Schedule derived work for a new instance; runs in the background, must not block long."""

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str) -> str: ...


class FileImporter(Protocol):
    """Optional: a module that turns a non-DICOM file (e.g. a vendor slide) into archived instances.

    ``import_file`` answers None when the file is not its kind, raises ValueError with a clear
    message when it is but cannot be read, and otherwise stores through ``archive`` and returns
    the outcomes. ``identity`` carries patient/study fields given on the command line.
    """

    def import_file(
        self, archive: Any, path: Path, identity: dict[str, Any] | None = None
    ) -> list[Any] | None: ...


class DerivedWorkProducer(Protocol):
    """Optional: a module that builds derived products (a pyramid, a video) in durable jobs.

    ``wants_job`` is asked inside the ingest transaction, so it must be quick and touch
    neither files nor the database; when it answers True, a job of kind ``module.id`` for the
    instance is queued with the instance. ``run_job`` then runs on a job thread of some
    serving process, blocking until the product is made, and raises to have the job retried.
    It must be idempotent: a job whose process died is run again, perhaps elsewhere.
    """

    def wants_job(self, event: InstanceStored) -> bool: ...

    def run_job(self, event: InstanceStored) -> None: ...


class CommandProvider(Protocol):
    """Optional: a module that adds subcommands to ``tessera`` (argparse subparsers)."""

    def add_commands(self, subparsers: Any) -> None: ...


class ModuleError(RuntimeError):
    pass


class ModuleRegistry:
    """Loaded modules, ordered by priority; asked in turn which one claims a series."""

    def __init__(self, modules: Iterable[SpecialtyModule]) -> None:
        self.modules: list[SpecialtyModule] = []
        seen: set[str] = set()
        for module in modules:
            if module.id in seen:
                raise ModuleError(f"two modules declare the id {module.id!r}")
            if not module.id.isidentifier() or module.id in {
                "api",
                "dicom-web",
                "static",
                "vendor",
                "viewer",
            }:
                raise ModuleError(f"module id {module.id!r} is not allowed")
            seen.add(module.id)
            self.modules.append(module)
        self.modules.sort(key=lambda m: -m.priority)

    @classmethod
    def discover(cls, points: Iterable[EntryPoint] | None = None) -> ModuleRegistry:
        """Load every entry point of the group; one that fails is logged and skipped."""
        loaded: list[SpecialtyModule] = []
        for point in points if points is not None else entry_points(group=ENTRY_POINT_GROUP):
            try:
                module = point.load()
                if not isinstance(module, SpecialtyModule):
                    raise ModuleError("does not implement SpecialtyModule")
                loaded.append(module)
            except Exception:
                log.exception("module entry point %s could not be loaded; skipped", point.name)
        return cls(loaded)

    def get(self, module_id: str) -> SpecialtyModule | None:
        return next((m for m in self.modules if m.id == module_id), None)

    def claim(self, series: SeriesRecord) -> SpecialtyModule | None:
        for module in self.modules:
            try:
                if module.claims(series):
                    return module
            except Exception:
                log.exception("module %s failed deciding on series %s", module.id, series.series_instance_uid)
        return None

    def setup(self, ctx: ServerContext) -> None:
        for module in self.modules:
            module.setup(ctx)

    def importers(self) -> list[FileImporter]:
        return [m for m in self.modules if callable(getattr(m, "import_file", None))]  # type: ignore[misc]

    def command_providers(self) -> list[CommandProvider]:
        return [m for m in self.modules if callable(getattr(m, "add_commands", None))]  # type: ignore[misc]

    def producers(self) -> dict[str, DerivedWorkProducer]:
        """Modules that build derived products in jobs, by job kind (their id)."""
        return {
            m.id: m  # type: ignore[misc]
            for m in self.modules
            if callable(getattr(m, "wants_job", None)) and callable(getattr(m, "run_job", None))
        }

    def job_kinds(self, event: InstanceStored) -> list[str]:
        """The job kinds to queue with this instance; a module that fails to answer is passed over."""
        kinds = []
        for kind, producer in self.producers().items():
            try:
                if producer.wants_job(event):
                    kinds.append(kind)
            except Exception:
                log.exception("module %s failed deciding on a job for %s", kind, event.sop_instance_uid)
        return kinds

    def run_job(self, kind: str, event: InstanceStored) -> None:
        producer = self.producers().get(kind)
        if producer is None:
            raise ModuleError(f"no module runs jobs of kind {kind!r}")
        producer.run_job(event)

    def dispatch(self, event: InstanceStored) -> None:
        """Archive listener: tell every module; each decides whether the instance concerns it."""
        for module in self.modules:
            try:
                module.on_instance_stored(event)
            except Exception:
                log.exception("module %s failed on instance %s", module.id, event.sop_instance_uid)
