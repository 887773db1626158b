"""API contract: schemathesis drives every operation of server/web/openapi.json against a
running server and checks what comes back against the document.

Two deployments: authentication on (an administrator's bearer token, and no credentials at
all) and authentication off on loopback. Each operation gets a few generated requests with
random parameters and a few with the UIDs of stored instances, so both the error answers and
the real ones are exercised. Checks: no 5xx, status codes, content types, headers and JSON
bodies as documented; every error is application/problem+json. Bounded for CI (well under a
minute); ``HYPOTHESIS_PROFILE=long`` runs many more examples per operation.
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


def test_contract_with_auth_off_on_loopback(tessera_server: BackgroundServer) -> None:
    assert not tessera_server.settings.authentication_required
    failures = run_contract(tessera_server.url, {}, stored_uids(tessera_server))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("who", ["administrator", "anonymous"])
def test_contract_with_auth_on(tessera_server_factory: Callable[..., BackgroundServer], who: str) -> None:
    secure = start_secure(tessera_server_factory, audit_fsync=False)
    headers = secure.bearer("administrator") if who == "administrator" else {}
    failures = run_contract(secure.url, headers, stored_uids(secure.server))
    assert not failures, "\n".join(failures)
    # The run's own credentials still work: the contract run did not lock itself out.
    if who == "administrator":
        assert requests.get(f"{secure.url}/api/session", headers=headers, timeout=10).json()["username"]
