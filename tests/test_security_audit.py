"""The audit trail: one record per operation with the right fields, written before the response,
a hash chain that verifies and names a tampered row, filters and export for auditors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from pydicom import dcmread
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from server.config import Settings
from server.security.audit import AuditFilter, AuditRecord
from server.security.guard import XSRF_COOKIE, XSRF_HEADER
from server.security.service import SecurityService, security_of
from server.serve import BackgroundServer
from tests.conftest import make_settings
from tests.dicom_cases import ct_bytes
from tests.test_security_access import PASSWORD, SecureServer, quick_argon2, start_secure

__all__ = ["quick_argon2"]  # the autouse fixture, shared with the access tests


def all_records(server: BackgroundServer) -> list[dict[str, Any]]:
    return list(security_of(server.ctx).audit.iterate(AuditFilter()))


def test_scripted_session_is_recorded_one_record_per_operation(
    tessera_server_factory: Callable[..., BackgroundServer],
) -> None:
    secure = start_secure(tessera_server_factory)
    server, url = secure.server, secure.url
    dicom = ct_bytes()
    ds = dcmread(io.BytesIO(dicom))
    study, series, sop, patient = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PatientID
    before = len(all_records(server))  # adding users in-process records nothing; the CLI does
    expected: list[tuple[Any, ...]] = []

    def step(response: requests.Response, status: int, *record: Any) -> None:
        assert response.status_code == status, response.text
        # The record is on disk when the client has the answer (the next line runs after it).
        assert len(all_records(server)) == before + len(expected) + 1, record
        expected.append(record)

    http = requests.Session()
    step(
        http.post(f"{url}/api/session", json={"username": "clinician", "password": "not the password"}),
        401,
        "110114", "110122", "E", 4, "clinician", "password", [], [],
    )  # fmt: skip
    step(
        http.post(f"{url}/api/session", json={"username": "clinician", "password": PASSWORD}),
        200,
        "110114", "110122", "E", 0, "clinician", "password", [], [],
    )  # fmt: skip
    xsrf = {XSRF_HEADER: http.cookies[XSRF_COOKIE]}
    step(
        http.post(f"{url}/dicom-web/studies", data=dicom, headers={"Content-Type": "application/dicom", **xsrf}),
        200,
        "110104", "", "C", 0, "clinician", "session", [study], [patient],
    )  # fmt: skip
    step(
        http.get(f"{url}/dicom-web/studies", params={"PatientID": patient}),
        200,
        "110112", "", "E", 0, "clinician", "session", [], [patient],
    )  # fmt: skip
    step(
        http.get(f"{url}/dicom-web/studies/{study}/metadata"),
        200,
        "110103", "", "R", 0, "clinician", "session", [study], [patient],
    )  # fmt: skip
    step(
        http.get(f"{url}/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered"),
        200,
        "110103", "", "R", 0, "clinician", "session", [study], [patient],
    )  # fmt: skip
    step(
        http.get(f"{url}/api/studies/{study}"),
        200,
        "110103", "", "R", 0, "clinician", "session", [], [],
    )  # fmt: skip
    step(
        requests.post(
            f"{url}/dicom-web/studies",
            data=dicom,
            headers={"Content-Type": "application/dicom", **secure.bearer("viewer")},
        ),
        403,
        "110104", "", "C", 4, "viewer", "token", [], [],
    )  # fmt: skip
    step(
        requests.get(f"{url}/dicom-web/studies/{study}/series"),
        401,
        "110112", "", "E", 4, "", "anonymous", [study], [patient],
    )  # fmt: skip
    step(
        http.delete(f"{url}/api/session", headers=xsrf),
        204,
        "110114", "110123", "E", 0, "clinician", "session", [], [],
    )  # fmt: skip
    step(
        requests.get(f"{url}/api/audit", params={"limit": 1}, headers=secure.bearer("auditor")),
        200,
        "110101", "", "R", 0, "auditor", "token", [], [],
    )  # fmt: skip
    # Things that are not patient data or security events leave no record.
    assert requests.get(f"{url}/api/health").ok
    assert requests.get(f"{url}/static/js/dicomweb.js").ok

    records = all_records(server)[before:]
    assert len(records) == len(expected)
    for record, (event, kind, action, outcome, user, method, studies, patients) in zip(
        records, expected, strict=True
    ):
        got = (record["event_id"], record["event_type"], record["action"], record["outcome"])
        assert got == (event, kind, action, outcome), record
        assert (record["username"], record["auth_method"]) == (user, method), record
        assert record["client_address"] == "127.0.0.1"
        assert record["occurred_at"].endswith("Z")
        assert set(studies) <= set(record["study_uids"]), record
        assert set(patients) <= set(record["patient_ids"]), record
    # The study summary URL names the study in its path (positional): resolved all the same.
    summary = records[6]
    assert summary["study_uids"] == [study] and summary["patient_ids"] == [patient]
    assert records[5]["objects"] == {"instances": [sop]} or records[5]["objects"].get("instances") == [sop]
    assert records[0]["outcome_detail"] == "wrong password"
    assert security_of(server.ctx).audit.verify().ok


def test_repeated_reads_of_one_object_are_coalesced(
    tessera_server_factory: Callable[..., BackgroundServer],
) -> None:
    server = tessera_server_factory(audit_coalesce_seconds=300)
    dicom = ct_bytes()
    ds = dcmread(io.BytesIO(dicom))
    assert requests.post(
        f"{server.url}/dicom-web/studies", data=dicom, headers={"Content-Type": "application/dicom"}
    ).ok
    before = len(all_records(server))
    for _ in range(5):
        assert requests.get(f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/metadata").ok
        assert requests.get(f"{server.url}/dicom-web/studies", params={"PatientID": ds.PatientID}).ok
    new = all_records(server)[before:]
    assert [r["event_id"] for r in new].count("110103") == 1  # one view of the study per window
    assert [r["event_id"] for r in new].count("110112") == 5  # every query


def test_no_record_no_data(
    tessera_server_factory: Callable[..., BackgroundServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tessera_server_factory()
    service = security_of(server.ctx)

    def broken(record: AuditRecord) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(service, "record", broken)
    response = requests.get(f"{server.url}/dicom-web/studies")
    assert response.status_code == 503 and "audit" in response.json()["detail"]


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_hash_chain_verifies_and_names_the_tampered_row(settings: Settings) -> None:
    settings = settings.with_overrides(audit_fsync=False)
    service = SecurityService(settings, run_migrations=True)
    try:
        audit = service.audit

        def write(i: int) -> int:
            return audit.append(AuditRecord("110103", "R", username=f"user{i % 3}", study_uids=[f"1.2.{i}"]))

        with ThreadPoolExecutor(6) as pool:  # concurrent writers still form one chain
            seqs = sorted(pool.map(write, range(60)))
        assert seqs == list(range(1, 61))
        report = audit.verify()
        assert report.ok and report.records == 60

        with service.engine.begin() as connection:
            with pytest.raises(DBAPIError), connection.begin_nested():  # append-only in the database
                connection.execute(text("UPDATE audit_event SET username = 'x' WHERE seq = 5"))
            with pytest.raises(DBAPIError), connection.begin_nested():
                connection.execute(text("DELETE FROM audit_event WHERE seq = 5"))

        # Someone with database rights drops the guard and edits history.
        with service.engine.begin() as connection:
            if service.engine.dialect.name == "postgresql":
                connection.execute(text("DROP TRIGGER audit_event_append_only ON audit_event"))
            else:
                connection.execute(text("DROP TRIGGER audit_event_no_update"))
                connection.execute(text("DROP TRIGGER audit_event_no_delete"))
            original = connection.scalar(text("SELECT username FROM audit_event WHERE seq = 23"))
            connection.execute(text("UPDATE audit_event SET username = 'nobody' WHERE seq = 23"))
        report = audit.verify()
        assert not report.ok and report.first_bad_seq == 23 and "altered" in report.problem
        with service.engine.begin() as connection:
            connection.execute(text("UPDATE audit_event SET username = :u WHERE seq = 23"), {"u": original})
        assert audit.verify().ok  # put back exactly: intact again
        with service.engine.begin() as connection:
            connection.execute(text("DELETE FROM audit_event WHERE seq = 40"))
        report = audit.verify()
        assert not report.ok and report.first_bad_seq == 40 and "missing" in report.problem
    finally:
        service.close()


def test_tail_truncation_is_detected(tmp_path: Any) -> None:
    service = SecurityService(make_settings(tmp_path / "d", audit_fsync=False), run_migrations=True)
    try:
        for i in range(5):
            service.audit.append(AuditRecord("110112", "E", username=f"u{i}"))
        with service.engine.begin() as connection:
            connection.execute(text("DROP TRIGGER audit_event_no_delete"))
            connection.execute(text("DELETE FROM audit_event WHERE seq = 5"))
        report = service.audit.verify()
        assert not report.ok and "removed" in report.problem
    finally:
        service.close()


def test_auditor_views_filters_and_exports(tessera_server_factory: Callable[..., BackgroundServer]) -> None:
    secure: SecureServer = start_secure(tessera_server_factory, audit_fsync=False)
    url = secure.url
    dicom = ct_bytes()
    ds = dcmread(io.BytesIO(dicom))
    post = {"Content-Type": "application/dicom", **secure.bearer("clinician")}
    assert requests.post(f"{url}/dicom-web/studies", data=dicom, headers=post).ok
    for _ in range(3):
        assert requests.get(f"{url}/dicom-web/studies", headers=secure.bearer("viewer")).ok
    assert requests.get(
        f"{url}/dicom-web/studies/{ds.StudyInstanceUID}/metadata", headers=secure.bearer("viewer")
    ).ok
    auditor = secure.bearer("auditor")

    def audit(**params: Any) -> dict[str, Any]:
        response = requests.get(f"{url}/api/audit", params=params, headers=auditor)
        assert response.status_code == 200, response.text
        return dict(response.json())

    queries = audit(user="viewer", event="110112")
    assert queries["total"] == 3 and all(r["username"] == "viewer" for r in queries["records"])
    assert queries["records"][0]["event_name"] == "Query"
    by_study = audit(study=ds.StudyInstanceUID)
    assert {r["event_id"] for r in by_study["records"]} == {"110104", "110103"}
    assert audit(patient=ds.PatientID)["total"] == 2
    page = audit(limit=2, offset=1)
    assert len(page["records"]) == 2 and page["records"][0]["seq"] == page["total"] - 1
    assert audit(**{"from": "2000-01-01", "to": "2000-12-31"})["total"] == 0
    assert audit(**{"from": "2000-01-01"})["total"] >= 5
    assert requests.get(f"{url}/api/audit", params={"from": "yesterday"}, headers=auditor).status_code == 400
    assert requests.get(f"{url}/api/audit", headers=secure.bearer("viewer")).status_code == 403
    assert requests.get(f"{url}/api/audit", headers=secure.bearer("clinician")).status_code == 403

    lines = requests.get(f"{url}/api/audit/export", params={"format": "jsonl"}, headers=auditor)
    assert lines.ok and "attachment" in lines.headers["Content-Disposition"]
    exported = [json.loads(line) for line in lines.text.splitlines()]
    assert [r["seq"] for r in exported] == sorted(r["seq"] for r in exported)
    assert {"record_hash", "prev_hash", "event_id", "study_uids"} <= set(exported[0])
    table = requests.get(
        f"{url}/api/audit/export", params={"format": "csv", "user": "viewer"}, headers=auditor
    )
    assert table.ok and table.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert {row["username"] for row in rows} == {"viewer"}
    # 3 queries, 1 study view, and the refused look at the audit trail above (outcome 4)
    assert sorted((row["event_id"], row["outcome"]) for row in rows) == [
        ("110101", "4"),
        ("110103", "0"),
        ("110112", "0"),
        ("110112", "0"),
        ("110112", "0"),
    ]
    # Reading the trail is itself in the trail.
    assert audit(user="auditor", event="110101")["total"] >= 1
