"""The module interface: discovery by entry point, claims, routes, static files, background events."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import requests

from server.archive.events import InstanceStored
from server.context import ServerContext
from server.modules import ENTRY_POINT_GROUP, ModuleError, ModuleRegistry, RouteSpec, SeriesRecord
from server.serve import BackgroundServer
from server.web.base import BaseHandler
from tests.conftest import make_settings
from tests.dicom_cases import ct_bytes


class EchoHandler(BaseHandler):
    def get(self, sop: str) -> None:
        self.write_json({"module": "cardiac-test", "sop": sop})


class CardiacTestModule:
    """A third-party-style module: claims CT (for the test), adds one route and a static folder."""

    id = "cardiactest"
    title = "Cardiac test module"
    priority = 10
    hanging_protocols: Sequence[Any] = ()

    def __init__(self, static_dir: Path | None = None) -> None:
        self.static_dir = static_dir
        self.events: list[InstanceStored] = []
        self.seen = threading.Event()

    def setup(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def claims(self, series: SeriesRecord) -> bool:
        return series.modality == "CT" and "1.2.840.10008.5.1.4.1.1.2" in series.sop_class_uids

    def routes(self, ctx: ServerContext) -> list[RouteSpec]:
        return [RouteSpec(r"echo/([0-9.]+)$", EchoHandler)]

    def on_instance_stored(self, event: InstanceStored) -> None:
        self.events.append(event)
        self.seen.set()

    def viewer_url(self, study_instance_uid: str, series_instance_uid: str) -> str:
        return f"/cardiactest/static/viewer.html?series={series_instance_uid}"


class GeneralModule(CardiacTestModule):
    id = "generaltest"
    priority = 1

    def claims(self, series: SeriesRecord) -> bool:
        return True


module = CardiacTestModule()
broken_module = object()


def test_discovery_skips_broken_entry_points(caplog: pytest.LogCaptureFixture) -> None:
    points = [
        EntryPoint("good", "tests.test_modules:module", ENTRY_POINT_GROUP),
        EntryPoint("missing", "tests.no_such_module:module", ENTRY_POINT_GROUP),
        EntryPoint("wrong", "tests.test_modules:broken_module", ENTRY_POINT_GROUP),
    ]
    registry = ModuleRegistry.discover(points)
    assert [m.id for m in registry.modules] == ["cardiactest"]
    assert "missing" in caplog.text and "wrong" in caplog.text


def test_duplicate_ids_and_reserved_ids_are_errors() -> None:
    with pytest.raises(ModuleError, match="two modules"):
        ModuleRegistry([CardiacTestModule(), CardiacTestModule()])
    reserved = CardiacTestModule()
    reserved.id = "api"
    with pytest.raises(ModuleError, match="not allowed"):
        ModuleRegistry([reserved])


def test_specific_modules_are_asked_before_general_ones() -> None:
    registry = ModuleRegistry([GeneralModule(), CardiacTestModule()])
    ct = SeriesRecord("1", "2", "CT", frozenset({"1.2.840.10008.5.1.4.1.1.2"}))
    mr = SeriesRecord("1", "3", "MR", frozenset({"1.2.840.10008.5.1.4.1.1.4"}))
    assert registry.claim(ct).id == "cardiactest"  # type: ignore[union-attr]
    assert registry.claim(mr).id == "generaltest"  # type: ignore[union-attr]


def test_module_routes_static_claims_and_events_through_the_server(tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "viewer.html").write_text("<!doctype html><title>cardiac</title>")
    plugin = CardiacTestModule(static)
    server = BackgroundServer.start(make_settings(tmp_path / "data"), ModuleRegistry([plugin]))
    try:
        stored = server.ctx.archive.ingest_bytes(ct_bytes())
        assert plugin.seen.wait(5), "the module heard of the new instance"
        assert (
            plugin.events[0].sop_instance_uid == stored.sop_instance_uid and plugin.events[0].modality == "CT"
        )
        study = requests.get(f"{server.url}/api/studies/{stored.study_instance_uid}", timeout=5).json()
        (series,) = study["series"]
        assert series["module"] == {"id": "cardiactest", "title": "Cardiac test module"}
        assert series["viewer_url"].startswith("/cardiactest/static/viewer.html")
        assert requests.get(server.url + series["viewer_url"], timeout=5).text.endswith(
            "<title>cardiac</title>"
        )
        assert requests.get(f"{server.url}/cardiactest/echo/1.2.3", timeout=5).json() == {
            "module": "cardiac-test",
            "sop": "1.2.3",
        }
        modules = requests.get(f"{server.url}/api/modules", timeout=5).json()
        assert modules == [
            {
                "id": "cardiactest",
                "title": "Cardiac test module",
                "priority": 10,
                "static": "/cardiactest/static/",
            }
        ]
    finally:
        server.stop()


def test_unclaimed_series_open_in_the_generic_viewer(tmp_path: Path) -> None:
    server = BackgroundServer.start(make_settings(tmp_path / "data"), ModuleRegistry([]))
    try:
        stored = server.ctx.archive.ingest_bytes(ct_bytes())
        study = requests.get(f"{server.url}/api/studies/{stored.study_instance_uid}", timeout=5).json()
        assert study["series"][0]["module"] is None
        assert (
            study["series"][0]["viewer_url"]
            == f"/viewer/?study={stored.study_instance_uid}&series={stored.series_instance_uid}"
        )
        assert study["patient"]["PatientName"] == "Doe^John" and study["NumberOfStudyRelatedInstances"] == 1
    finally:
        server.stop()
