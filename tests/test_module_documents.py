"""Module documents (annotations, alignments, measurements, plans) in the index database, on SQLite
and PostgreSQL: the round trip, read-modify-write from several processes and engines losing no update,
files of earlier versions imported once, and a document saved through one server read through another
that shares only the database and the object store (its own data folder)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest

from modules.cardiology.measurements import MeasurementBook, MeasurementError
from modules.orthopedics.plans import ImageRecord, Plan, PlannedMeasurement, PlanStore
from modules.pathology.alignment import AlignmentStore
from modules.pathology.annotations import AnnotationStore
from sample_data.orthopedics import write_orthopedics_demo
from server.archive.archive import Archive
from server.archive.documents import DocumentShelf, DocumentStore
from server.config import Settings
from server.imaging.calibration import calibrate_from_circle
from server.serve import BackgroundServer, build_context
from tests.conftest import make_settings

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def _shelf(archive: Archive, module: str = "test", kind: str = "counter") -> DocumentShelf:
    return DocumentStore(archive.sessions).shelf(module, kind)


def test_round_trip(archive: Archive) -> None:
    shelf = _shelf(archive, "pathology", "annotations")
    assert shelf.get("1.2.3") is None
    body = {"type": "FeatureCollection", "features": [{"label": "tumour ✓", "n": [1.5, 2]}]}
    first = shelf.put("1.2.3", body, by="alice")
    assert first.version == 1 and first.updated_by == "alice"
    read = shelf.get("1.2.3")
    assert read is not None and read.body == body and read.version == 1 and read.updated_by == "alice"
    assert read.updated_at.tzinfo is not None
    second = shelf.put("1.2.3", {"replaced": True}, by="bob")
    assert second.version == 2
    read = shelf.get("1.2.3")
    assert read is not None and read.body == {"replaced": True} and read.updated_by == "bob"
    assert read.updated_at >= first.updated_at
    # Another module's or kind's document with the same key is another document.
    assert _shelf(archive, "pathology", "alignment").get("1.2.3") is None
    assert _shelf(archive, "cardiology", "annotations").get("1.2.3") is None

    # Listing by prefix: LIKE wildcards in the prefix are literal characters.
    plans = _shelf(archive, "orthopedics", "image")
    for key in ("1.2/3", "1.2/4", "1.20/5", "1_2/6", "1%2/7"):
        plans.put(key, {"key": key})
    assert [d.key for d in plans.with_prefix("1.2/")] == ["1.2/3", "1.2/4"]
    assert [d.key for d in plans.with_prefix("1_")] == ["1_2/6"]
    assert [d.key for d in plans.with_prefix("1%")] == ["1%2/7"]
    assert len(plans.with_prefix()) == 5 and plans.with_prefix("9") == []
    assert [d.body for d in plans.with_prefix("1.20")] == [{"key": "1.20/5"}]

    assert plans.delete("1.2/3") and not plans.delete("1.2/3")
    assert plans.get("1.2/3") is None and plans.get("1.2/4") is not None

    # update creates a missing document, then builds on what is there.
    counter = _shelf(archive)
    made = counter.update("c", lambda body: {"n": 1} if body is None else {"n": body["n"] + 1}, by="x")
    assert made.version == 1 and made.body == {"n": 1}
    again = counter.update("c", lambda body: {"n": body["n"] + 1})
    assert again.version == 2 and counter.get("c").body == {"n": 2}  # type: ignore[union-attr]
    # add never replaces.
    assert not counter.add("c", {"n": 99}) and counter.get("c").body == {"n": 2}  # type: ignore[union-attr]


def _bump(token: str) -> Any:
    def change(body: Any) -> Any:
        body = body or {"count": 0, "tokens": []}
        return {"count": body["count"] + 1, "tokens": [*body["tokens"], token]}

    return change


def _check_counter(shelf: DocumentShelf, expected: set[str]) -> None:
    document = shelf.get("shared")
    assert document is not None
    assert document.body["count"] == len(expected) == document.version  # no update lost
    assert sorted(document.body["tokens"]) == sorted(expected)  # each applied exactly once


def test_two_engines_hammering_one_document_lose_no_update(settings: Settings) -> None:
    first = Archive(settings)
    second = Archive(settings, run_migrations=False)  # another process's engine over the same database
    try:
        shelves = [_shelf(first), _shelf(second)]
        tokens = [f"{n}-{i}" for n in range(8) for i in range(25)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda t: shelves[int(t.split("-")[0]) % 2].update("shared", _bump(t)), tokens))
        _check_counter(shelves[0], set(tokens))
        # A changed plan and a calibration set at the same time through two stores both survive.
        plans = [PlanStore(DocumentStore(a.sessions)) for a in (first, second)]
        user = calibrate_from_circle((10, 10), 50, 25)
        barrier = threading.Barrier(2)
        calls: list[str] = []

        def racing(name: str, apply: Any) -> Any:
            def change(record: ImageRecord) -> None:
                calls.append(name)
                if calls.count(name) == 1:
                    barrier.wait(timeout=30)  # both have read the same version before either writes
                apply(record)

            return change

        def set_plan(record: ImageRecord) -> None:
            record.plan = Plan((PlannedMeasurement("m", "length", ((0, 0), (1, 1))),), revision=1)

        def set_calibration(record: ImageRecord) -> None:
            record.user_calibration = user

        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(plans[0].update, STUDY, SERIES, SOP, racing("plan", set_plan)),
                pool.submit(plans[1].update, STUDY, SERIES, SOP, racing("calibration", set_calibration)),
            ]
            for future in done:
                future.result(timeout=60)
        assert len(calls) == 3  # one writer lost the race and applied its change again on the winner's
        record = plans[1].load(STUDY, SERIES, SOP)
        assert record.user_calibration == user and record.plan.revision == 1
    finally:
        first.close()
        second.close()


_INCREMENTER = """
import sys
from concurrent.futures import ThreadPoolExecutor

from server.archive.database import make_engine, session_factory
from server.archive.documents import DocumentStore

url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = make_engine(url)
shelf = DocumentStore(session_factory(engine)).shelf("test", "counter")


def bump(i):
    token = f"{name}-{i}"

    def change(body):
        body = body or {"count": 0, "tokens": []}
        return {"count": body["count"] + 1, "tokens": [*body["tokens"], token]}

    shelf.update("shared", change)


with ThreadPoolExecutor(4) as pool:
    list(pool.map(bump, range(count)))
engine.dispose()
"""


def test_two_processes_incrementing_one_document_lose_no_update(settings: Settings) -> None:
    Archive(settings).close()  # the schema
    count = 40
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _INCREMENTER, settings.effective_database_url, name, str(count)],
            cwd=Path(__file__).parent.parent,
        )
        for name in ("a", "b")
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    archive = Archive(settings, run_migrations=False)
    try:
        _check_counter(_shelf(archive), {f"{name}-{i}" for name in ("a", "b") for i in range(count)})
    finally:
        archive.close()


def _write(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")


def test_files_of_earlier_versions_are_imported_once(settings: Settings) -> None:
    data, derived = settings.data_dir, settings.derived_dir / "pathology"
    collection = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [10.0, 20.0]},
                "properties": {"label": "mitosis", "color": "#ff0000", "kind": "point"},
            }
        ],
    }
    alignment = {"offset_um": [12.5, -3.0], "rotation_deg": 2.0, "saved": True}
    measurements: dict[str, Any] = {
        "study_instance_uid": STUDY,
        "measurements": [],
        "lv": None,
        "lv_note": "no contours",
    }
    record = ImageRecord(STUDY, SERIES, SOP, user_calibration=calibrate_from_circle((10, 10), 50, 25))
    record.plan = Plan((PlannedMeasurement("m1", "length", ((1, 2), (3, 4)), None, "x"),), (), "n", 3, "t")
    files = {
        "annotations": derived / "annotations" / "1.2.3.4.geojson",
        "alignment": derived / "alignments" / "1.2.3.4__1.2.3.5.json",
        "measurements": data / "cardiology" / "measurements" / f"{STUDY}.json",
        "plan": data / "orthopedics" / "studies" / STUDY / f"{SOP}.json",
    }
    _write(files["annotations"], collection)
    _write(files["alignment"], alignment)
    _write(files["measurements"], measurements)
    _write(files["plan"], record.to_json())
    broken = data / "cardiology" / "measurements" / "1.2.9.json"
    broken.write_text("{not json", encoding="utf-8")
    (derived / "annotations" / ".x.tmp").write_text("{}")  # an old writer's leftover temp file

    ctx = build_context(settings)
    try:
        documents = ctx.documents
        assert AnnotationStore(documents).load("1.2.3.4") == collection
        assert AlignmentStore(documents).load("1.2.3.4", "1.2.3.5") == alignment
        assert AlignmentStore(documents).load("1.2.3.5", "1.2.3.4") is None
        assert MeasurementBook(documents).load(STUDY) == measurements
        loaded = PlanStore(documents).load(STUDY, SERIES, SOP)
        assert loaded.plan == record.plan and loaded.user_calibration == record.user_calibration
        for path in files.values():
            assert not path.exists() and path.with_name(path.name + ".imported").exists()
        assert broken.exists()  # unreadable: left where it is, nothing imported
        with pytest.raises(MeasurementError):
            MeasurementBook(documents).load("../1.2")
        # The user goes on working; then an older copy of a file turns up again.
        AnnotationStore(documents).save("1.2.3.4", {"type": "FeatureCollection", "features": []})
        before = DocumentStore(ctx.archive.sessions).shelf("pathology", "annotations").get("1.2.3.4")
    finally:
        ctx.executor.shutdown(wait=True)
        ctx.archive.close()
    _write(files["annotations"], collection)

    ctx = build_context(settings)  # a second start: imports nothing twice, overwrites nothing newer
    try:
        after = ctx.documents.shelf("pathology", "annotations").get("1.2.3.4")
        assert after == before and after is not None and after.body["features"] == []
        assert len(ctx.documents.shelf("pathology", "annotations").with_prefix()) == 1
        assert ctx.documents.shelf("orthopedics", "image").get(f"{STUDY}/{SOP}").version == 1  # type: ignore[union-attr]
    finally:
        ctx.executor.shutdown(wait=True)
        ctx.archive.close()


def _call(base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_document_saved_through_one_server_is_read_through_another(tmp_path: Path, db_url: str) -> None:
    """Two machines: one index database, one object store, each its own data folder."""
    shared_db = db_url or f"sqlite:///{tmp_path / 'shared-index.sqlite3'}"
    objects = tmp_path / "object-store"
    objects.mkdir()

    def machine(name: str) -> Settings:
        return make_settings(tmp_path / name, shared_db, blob_store_url=f"file://{objects}")

    first = BackgroundServer.start(machine("a"))
    second = BackgroundServer.start(machine("b"))
    try:
        pelvis_path = write_orthopedics_demo(tmp_path / "files")[0]
        assert first.ctx.archive.ingest_path(pelvis_path).ok
        pelvis = pydicom.dcmread(pelvis_path, stop_before_pixels=True)
        sop, study = pelvis.SOPInstanceUID, pelvis.StudyInstanceUID

        plan = {"measurements": [{"id": "l", "kind": "length", "points": [[10, 10], [110, 10]]}], "note": "a"}
        status, saved = _call(first.url, "PUT", f"/orthopedics/images/{sop}/plan", plan, {"If-Match": "0"})
        assert status == 200 and saved["plan"]["revision"] == 1
        status, seen = _call(second.url, "GET", f"/orthopedics/images/{sop}/plan")
        assert status == 200 and seen["plan"] == saved["plan"]
        # The other machine's stale save is refused: it knows what the first one wrote.
        status, problem = _call(second.url, "PUT", f"/orthopedics/images/{sop}/plan", plan, {"If-Match": "0"})
        assert status == 409 and problem["current_revision"] == 1
        line = {"method": "line", "points": [[10, 10], [110, 10]], "length_mm": 50}
        status, calibration = _call(second.url, "PUT", f"/orthopedics/images/{sop}/calibration", line)
        assert status == 200 and calibration["source"] == "user"
        status, seen = _call(first.url, "GET", f"/orthopedics/images/{sop}/calibration")
        assert status == 200 and seen["source"] == "user"
        assert seen["mm_per_pixel"] == calibration["mm_per_pixel"] == {"row": 0.5, "column": 0.5}
        status, seen = _call(first.url, "GET", f"/orthopedics/images/{sop}/plan")
        assert seen["plan"]["revision"] == 1 and seen["plan"]["note"] == "a"  # the calibration kept the plan

        status, measured = _call(
            first.url, "PUT", f"/cardiology/studies/{study}/measurements", {"measurements": []}
        )
        assert status == 200
        assert _call(second.url, "GET", f"/cardiology/studies/{study}/measurements") == (200, measured)
        for server in (first, second):  # nothing was written as files in either data folder
            data = server.settings.data_dir
            assert not (data / "orthopedics" / "studies").exists()
            assert not list((data / "cardiology" / "measurements").glob("*.json"))
    finally:
        first.stop()
        second.stop()


def test_a_document_records_who_saved_it(
    tmp_path: Path, tessera_server_factory: Callable[..., BackgroundServer]
) -> None:
    """With authentication on, the user behind the request is written beside the document."""
    from server.security.accounts import Role
    from server.security.service import security_of

    server = tessera_server_factory(auth_enabled=True)
    accounts = security_of(server.ctx).accounts
    accounts.add_user("dr-ortho", Role.CLINICIAN, "a long password 1")
    token = accounts.create_token("dr-ortho", "tests")[1]
    pelvis_path = write_orthopedics_demo(tmp_path / "files")[0]
    assert server.ctx.archive.ingest_path(pelvis_path).ok
    pelvis = pydicom.dcmread(pelvis_path, stop_before_pixels=True)
    plan = {"measurements": [{"id": "l", "kind": "length", "points": [[10, 10], [110, 10]]}]}
    status, saved = _call(
        server.url,
        "PUT",
        f"/orthopedics/images/{pelvis.SOPInstanceUID}/plan",
        plan,
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 200, saved
    stored = server.ctx.documents.shelf("orthopedics", "image").get(
        f"{pelvis.StudyInstanceUID}/{pelvis.SOPInstanceUID}"
    )
    assert stored is not None and stored.updated_by == "dr-ortho"
