"""API contract: schemathesis drives every operation of server/web/openapi.json against a
running server and checks what comes back against the document.

Two deployments: authentication on (an administrator's bearer token, and no credentials at
all) and authentication off on loopback. Each operation gets a few generated requests with
random parameters and a few with the UIDs of stored instances, so both the error answers and
the real ones are exercised. Checks: no 5xx, status codes, content types, headers and JSON
bodies as documented; every error is application/problem+json. Bounded for CI (well under a
minute per database); ``HYPOTHESIS_PROFILE=long`` runs many more examples per operation.

Authentication off and the administrator run on SQLite and on PostgreSQL (the ``db_url`` fixture of
tests/conftest.py): PostgreSQL refuses text SQLite takes (NUL), so a contract kept on one is not
kept on both. The NUL cases the generated runs found are replayed, deterministically, on both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

from server.security.service import security_of
from server.serve import BackgroundServer
from server.web.app import OPENAPI
from tests.fuzz.profiles import examples
from tests.fuzz.seeds import seed_files
from tests.test_security_access import quick_argon2, start_secure

__all__ = ["quick_argon2"]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Operations that would end the run's own access if a generated request hit them right.
SKIPPED = {"DELETE /api/session", "POST /api/users/{username}/disable", "POST /api/users/{username}/password"}


@schemathesis.serializer(
    "application/dicom", 'multipart/related; type="application/dicom"', "multipart/related"
)
def raw_bytes(_ctx: Any, value: Any) -> bytes:
    """STOW-RS bodies as generated: bytes stay bytes, anything else is sent as its JSON text."""
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8", "surrogatepass")


def stored_uids(server: BackgroundServer) -> dict[str, str]:
    outcome = None
    for data in seed_files():
        outcome = server.ctx.archive.ingest_bytes(data)
        assert outcome.ok
    assert outcome is not None
    return {
        "study": outcome.study_instance_uid,
        "series": outcome.series_instance_uid,
        "sop": outcome.sop_instance_uid,
        "frames": "1",
        "tag": "7FE00010",
        "path": "index.html",
    }


def run_contract(base_url: str, headers: dict[str, str], uids: dict[str, str]) -> list[str]:
    """Every operation, random and real path parameters; the failures, one line each."""
    schema = schemathesis.openapi.from_path(OPENAPI)
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation the document describes badly is a failure too
            failures.append(f"unusable operation: {result.err()}")
            continue
        operation = result.ok()
        if operation.label in SKIPPED:
            continue
        names = [p.name for p in operation.path_parameters]
        real = {name: uids[name] for name in names if name in uids}
        strategies = [operation.as_strategy()]
        if real:
            strategies.append(operation.as_strategy(path_parameters=real))

        @settings(
            max_examples=examples(3),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def exercise(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # one line per failing request is enough
                line = (
                    f"{case.operation.label}: {response.status_code} {response.headers.get('Content-Type')}: "
                )
                failures.append(line + " ".join(str(exc).split())[:400])

        exercise()
    assert calls > 50
    return list(dict.fromkeys(failures))


def test_contract_with_auth_off_on_loopback(db_url: str, tessera_server: BackgroundServer) -> None:
    assert not tessera_server.settings.authentication_required
    failures = run_contract(tessera_server.url, {}, stored_uids(tessera_server))
    assert not failures, "\n".join(failures)


# Anonymous requests are refused before any query of the index: on SQLite only, to keep CI short.
@pytest.mark.parametrize(
    ("db_url", "who"),
    [("sqlite", "administrator"), ("postgresql", "administrator"), ("sqlite", "anonymous")],
    indirect=["db_url"],
)
def test_contract_with_auth_on(
    db_url: str, tessera_server_factory: Callable[..., BackgroundServer], who: str
) -> None:
    secure = start_secure(tessera_server_factory, audit_fsync=False)
    headers = secure.bearer("administrator") if who == "administrator" else {}
    failures = run_contract(secure.url, headers, stored_uids(secure.server))
    assert not failures, "\n".join(failures)
    # The run's own credentials still work: the contract run did not lock itself out.
    if who == "administrator":
        assert requests.get(f"{secure.url}/api/session", headers=headers, timeout=10).json()["username"]


NUL_REQUESTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/users", {"username": "a\x00b", "role": "viewer", "password": "x"}),
    ("POST", "/api/users", {"username": "nul", "role": "viewer", "password": "P" * 16, "full_name": "a\x00"}),
    ("POST", "/api/users", {"username": "nul", "role": "viewer", "password": "P" * 16, "groups": ["\x00"]}),
    ("PUT", "/api/groups/nul", {"rules": {"institutions": ["a"]}, "description": "d\x00"}),
    ("POST", "/api/users/viewer/groups", {"groups": ["\x00"]}),
    ("POST", "/api/session", {"username": "a\x00", "password": "x"}),
    ("GET", "/dicom-web/studies?PatientID=a%00", None),
]


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_nul_in_text_is_refused_alike_on_both_databases(
    db_url: str, tessera_server_factory: Callable[..., BackgroundServer]
) -> None:
    """What the generated runs found on PostgreSQL only (500, or 503 from the audit trail): the same
    4xx problem on both databases, nothing half-stored, the audit trail intact."""
    secure = start_secure(tessera_server_factory, audit_fsync=False)
    headers = secure.bearer("administrator")
    for method, path, body in NUL_REQUESTS:
        response = requests.request(method, secure.url + path, json=body, headers=headers, timeout=10)
        assert response.status_code in (400, 404), (method, path, body, response.status_code, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")
    users = requests.get(secure.url + "/api/users", headers=headers, timeout=10).json()["users"]
    assert "nul" not in {u["username"] for u in users}
    groups = requests.get(secure.url + "/api/groups", headers=headers, timeout=10).json()["groups"]
    assert "nul" not in {g["name"] for g in groups}
    trail = security_of(secure.server.ctx).audit
    assert trail.verify().ok
