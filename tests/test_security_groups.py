"""Access limited to study groups, break-glass, and user management over HTTP.

A server with authentication on holds three studies from two hospitals. A clinician limited
to one group must see only that group's studies in every door (QIDO lists and paging, WADO,
the JSON API, module routes, STOW) and get 404 for the others' objects; an emergency lifts the
limit for a while and is audited; administrators manage users and groups over the API.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from argon2 import PasswordHasher
from pydicom.uid import generate_uid
from sqlalchemy import update
from tornado.web import RedirectHandler, StaticFileHandler

from sample_data.radiology import ct_series
from server.dicomweb.multipart import closing, new_boundary, part_header
from server.security import accounts as accounts_module
from server.security.audit import AuditFilter
from server.security.guard import XSRF_COOKIE, XSRF_HEADER
from server.security.models import EmergencyAccess
from server.security.policy import Role
from server.security.service import security_of
from server.serve import BackgroundServer
from server.web.app import handler_rules, make_app
from tests.dicom_cases import to_bytes
from tests.test_security_access import example_path

PASSWORD = "correct horse battery staple"
NOT_FOUND = "no such object in the archive"


@pytest.fixture(autouse=True)
def quick_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        accounts_module, "_hasher", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    )


@dataclass(frozen=True)
class StoredStudy:
    study: str
    series: str
    sop: str


def instance(modality: str, institution: str, department: str, study: str | None = None) -> bytes:
    ds = ct_series(1, size=32)[0]
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.InstitutionName = institution
    ds.InstitutionalDepartmentName = department
    ds.PatientID = f"PID-{institution[:5]}-{modality}"
    return to_bytes(ds)


def store(server: BackgroundServer, data: bytes) -> StoredStudy:
    outcome = server.ctx.archive.ingest_bytes(data)
    assert outcome.ok, outcome.reason
    return StoredStudy(outcome.study_instance_uid, outcome.series_instance_uid, outcome.sop_instance_uid)


@dataclass
class Hospital:
    server: BackgroundServer
    north_ct: StoredStudy  # group "north-ct"
    breast: StoredStudy  # group "breast"
    south_ct: StoredStudy  # no group of the test users
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def bearer(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def login(self, user: str) -> requests.Session:
        http = requests.Session()
        response = http.post(
            f"{self.url}/api/session", json={"username": user, "password": PASSWORD}, timeout=10
        )
        assert response.status_code == 200, response.text
        http.headers[XSRF_HEADER] = http.cookies[XSRF_COOKIE] or ""
        return http


USERS = {
    "admin": (Role.ADMINISTRATOR, []),
    "drnorth": (Role.CLINICIAN, ["north-ct"]),
    "drbreast": (Role.CLINICIAN, ["breast"]),
    "student": (Role.VIEWER, ["north-ct", "breast"]),
}


def start_hospital(factory: Callable[..., BackgroundServer], **overrides: Any) -> Hospital:
    overrides.setdefault("auth_enabled", True)
    overrides.setdefault("audit_coalesce_seconds", 0)
    server = factory(**overrides)
    north = store(server, instance("CT", "North Hospital", "Radiology"))
    breast = store(server, instance("MG", "South Clinic", "Breast imaging"))
    south = store(server, instance("CT", "South Clinic", "Radiology"))
    service = security_of(server.ctx)
    service.groups.save_group("north-ct", {"modalities": ["CT"], "institutions": ["North Hospital"]})
    service.groups.save_group("breast", {"departments": ["Breast imaging"]})
    tokens = {}
    for name, (role, groups) in USERS.items():
        service.accounts.add_user(name, role, PASSWORD)
        service.groups.set_user_groups(name, groups)
        tokens[name] = service.accounts.create_token(name, "tests")[1]
    return Hospital(server, north, breast, south, tokens)


@pytest.fixture
def hospital(tessera_server_factory: Callable[..., BackgroundServer], db_url: str) -> Hospital:
    return start_hospital(tessera_server_factory)


def qido(h: Hospital, user: str, path: str = "studies", **params: Any) -> list[dict[str, Any]]:
    response = requests.get(f"{h.url}/dicom-web/{path}", params=params, headers=h.bearer(user), timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json())


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


def test_lists_are_filtered_in_the_query(hospital: Hospital) -> None:
    h = hospital
    assert uids(qido(h, "admin")) == {h.north_ct.study, h.breast.study, h.south_ct.study}
    assert uids(qido(h, "drnorth")) == {h.north_ct.study}
    assert uids(qido(h, "drbreast")) == {h.breast.study}
    assert uids(qido(h, "student")) == {h.north_ct.study, h.breast.study}
    # Paging stays right: the filter is in the SQL, not applied to a page afterwards.
    assert uids(qido(h, "drbreast", limit=1)) == {h.breast.study}
    assert uids(qido(h, "student", limit=1, offset=1)) | uids(qido(h, "student", limit=1)) == {
        h.north_ct.study,
        h.breast.study,
    }
    assert uids(qido(h, "drnorth", "series"), "0020000E") == {h.north_ct.series}
    assert uids(qido(h, "drnorth", "instances"), "00080018") == {h.north_ct.sop}
    assert qido(h, "drnorth", StudyInstanceUID=h.breast.study) == []  # filtered out, not refused
    assert qido(h, "drnorth", PatientID="PID-South-MG") == []


def wado_paths(s: StoredStudy) -> list[str]:
    base = f"/dicom-web/studies/{s.study}"
    inst = f"{base}/series/{s.series}/instances/{s.sop}"
    return [
        base,
        f"{base}/metadata",
        f"{base}/series",
        f"{base}/series/{s.series}",
        f"{base}/series/{s.series}/metadata",
        inst,
        f"{inst}/metadata",
        f"{inst}/frames/1",
        f"{inst}/rendered",
        f"{inst}/thumbnail",
        f"{base}/thumbnail",
        f"/api/studies/{s.study}",
    ]


def test_addressed_objects_of_other_groups_are_not_found(hospital: Hospital) -> None:
    h = hospital
    for path in wado_paths(h.breast) + wado_paths(h.south_ct):
        response = requests.get(h.url + path, headers=h.bearer("drnorth"), timeout=10)
        assert response.status_code == 404, (path, response.status_code)
        assert response.json()["detail"] == NOT_FOUND
    for path in wado_paths(h.north_ct):
        response = requests.get(h.url + path, headers=h.bearer("drnorth"), timeout=10)
        assert response.status_code in (200, 406), (path, response.status_code, response.text[:200])
    # The same 404 as for an object that does not exist at all (existence is not leaked).
    missing = requests.get(f"{h.url}/api/studies/1.2.3.999", headers=h.bearer("drnorth"), timeout=10)
    assert missing.status_code == 404
    # The refusal is in the audit trail, with the study it was about.
    records, _ = security_of(h.server.ctx).audit.query(
        AuditFilter(username="drnorth", study_uid=h.breast.study), offset=0, limit=100
    )
    assert records and all(r["outcome"] == 4 for r in records)


def stow(h: Hospital, user: str, *parts: bytes, study: str | None = None) -> requests.Response:
    boundary = new_boundary()
    body = b"".join(part_header(boundary, "application/dicom") + p + b"\r\n" for p in parts) + closing(
        boundary
    )
    url = f"{h.url}/dicom-web/studies" + (f"/{study}" if study else "")
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    headers = {**h.bearer(user), "Content-Type": content_type}
    return requests.post(url, data=body, headers=headers, timeout=30)


def failed_statuses(response: requests.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def test_stow_stores_only_into_the_users_groups(hospital: Hospital) -> None:
    h = hospital
    archive = h.server.ctx.archive
    mine = instance("CT", "North Hospital", "Emergency")
    theirs = instance("MG", "South Clinic", "Breast imaging")
    response = stow(h, "drnorth", mine, theirs)
    assert response.status_code == 202, response.text
    assert failed_statuses(response) == [0x0124]
    assert len(response.json()["00081199"]["Value"]) == 1
    # Into an existing study of another group, even with attributes that match the user's rules.
    sneaky = instance("CT", "North Hospital", "Radiology", study=h.breast.study)
    response = stow(h, "drnorth", sneaky)
    assert response.status_code == 409 and failed_statuses(response) == [0x0124]
    response = stow(h, "drnorth", instance("CT", "North Hospital", "Radiology"), study=h.breast.study)
    assert response.status_code == 404  # the addressed study is another group's
    with archive.sessions() as session:
        from server.archive.models import Study

        count = session.query(Study).count()
    assert count == 4  # the three, plus the one drnorth was allowed to store
    # Into an existing study of the user's own group, any attributes.
    other = instance("SR", "Elsewhere", "Nowhere", study=h.north_ct.study)
    assert stow(h, "drnorth", other).status_code == 200
    # Unlimited users store anything.
    assert stow(h, "admin", instance("MR", "Far Away", "Neuro")).status_code == 200


def _uid_routes(h: Hospital) -> list[tuple[str, type, str]]:
    """Every rule whose path carries a UID, with that UID set to each of the study's, series'
    and instance's UID of a study outside the user's groups."""
    out = []
    for rule in handler_rules(make_app(h.server.ctx)):
        pattern = rule.matcher.regex.pattern  # type: ignore[attr-defined]
        if issubclass(rule.target, StaticFileHandler | RedirectHandler):
            continue
        if rule.target.__module__ == "server.security.admin":
            continue  # user and group names, not patient data (administrators only)
        sample = example_path(pattern)
        for candidate in (h.breast.study, h.breast.series, h.breast.sop):
            path = _fill_uids(pattern, candidate)
            if path is not None and path != sample:
                out.append((path, rule.target, candidate))
    return out


def _fill_uids(pattern: str, uid: str) -> str | None:
    """The example path with every group that accepts a dotted UID replaced by ``uid``."""
    groups = re.compile(pattern).groups
    if not groups:
        return None
    sample = example_path(pattern)
    match = re.match(pattern, sample)
    assert match is not None
    path, shift = sample, 0
    filled = False
    for index in range(1, groups + 1):
        start, end = match.span(index)
        if start < 0:
            continue
        group_pattern = _group_source(pattern, index)
        if group_pattern is not None and re.fullmatch(group_pattern, uid):
            path = path[: start + shift] + uid + path[end + shift :]
            shift += len(uid) - (end - start)
            filled = True
    if not filled or not re.match(pattern, path):
        return None
    return path


def _group_source(pattern: str, index: int) -> str | None:
    """The source text of capturing group ``index`` (1-based) in ``pattern``."""
    count, depth, starts = 0, 0, []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            j = pattern.index("]", i + 2)
            i = j + 1
            continue
        if c == "(":
            capturing = not pattern.startswith("(?:", i) and not pattern.startswith("(?=", i)
            if pattern.startswith("(?P<", i):
                capturing = True
            starts.append((i, capturing))
            depth += 1
            if capturing:
                count += 1
                if count == index:
                    level = depth
                    j = i + 1
                    while j < len(pattern):
                        if pattern[j] == "\\":
                            j += 2
                            continue
                        if pattern[j] == "[":
                            j = pattern.index("]", j + 2) + 1
                            continue
                        if pattern[j] == "(":
                            level += 1
                        elif pattern[j] == ")":
                            level -= 1
                            if level == depth - 1:
                                inner = pattern[i + 1 : j]
                                return re.sub(r"^\?P<\w+>", "", inner)
                        j += 1
                    return None
        elif c == ")":
            depth -= 1
        i += 1
    return None


def test_matrix_clinician_of_another_group_gets_nothing(hospital: Hospital) -> None:
    """Every route that names an object, called with the UIDs of a study outside the clinician's
    groups: never data (2xx) and never a hint that it exists; the group's own clinician gets past
    the check on the same paths."""
    h = hospital
    routes = _uid_routes(h)
    assert len(routes) > 40

    def call(user: str, path: str, method: str) -> requests.Response:
        body = b"" if method in ("POST", "PUT") else None
        return requests.request(method, h.url + path, headers=h.bearer(user), data=body, timeout=30)

    cases = [(p, t, m) for p, t, _uid in routes for m in ("GET", "POST", "PUT", "DELETE")]
    with ThreadPoolExecutor(4) as pool:
        outsider = list(pool.map(lambda c: call("drnorth", c[0], c[2]), cases))
        insider = list(pool.map(lambda c: call("drbreast", c[0], c[2]), cases))
    failures = []
    scoped = 0
    reached = 0
    for (path, _target, method), out, inside in zip(cases, outsider, insider, strict=True):
        if out.status_code == 405 and inside.status_code == 405:
            continue
        if out.status_code < 400:
            failures.append(f"{method} {path}: {out.status_code} for a clinician of another group")
        elif out.status_code != 404:
            failures.append(f"{method} {path}: {out.status_code}, not 404")
        else:
            scoped += 1
            body = out.json() if out.headers.get("Content-Type", "").startswith("application/problem") else {}
            if body.get("detail") != NOT_FOUND:
                failures.append(f"{method} {path}: answered by the handler, not by the group check")
        if inside.status_code != 404 or inside.json().get("detail") != NOT_FOUND:
            reached += 1
    assert not failures, "\n".join(failures[:40])
    assert scoped > 100 and reached > 50, (scoped, reached)


def test_break_glass_lifts_the_limit_and_is_audited(hospital: Hospital) -> None:
    h = hospital
    http = h.login("drnorth")
    session = http.get(f"{h.url}/api/session", timeout=10).json()
    assert session["limited"] and session["groups"] == ["north-ct"] and session["emergency"] is None
    assert http.post(f"{h.url}/api/emergency", json={"reason": ""}, timeout=10).status_code == 400
    no_xsrf = requests.post(
        f"{h.url}/api/emergency", json={"reason": "trauma patient, no time"}, cookies=http.cookies, timeout=10
    )
    assert no_xsrf.status_code == 403
    started = http.post(
        f"{h.url}/api/emergency", json={"reason": "trauma bay 2, prior CT needed", "minutes": 30}, timeout=10
    )
    assert started.status_code == 201, started.text
    state = http.get(f"{h.url}/api/session", timeout=10).json()
    assert state["emergency"]["reason"] == "trauma bay 2, prior CT needed"
    everything = http.get(f"{h.url}/dicom-web/studies", timeout=10).json()
    assert uids(everything) == {h.north_ct.study, h.breast.study, h.south_ct.study}
    assert http.get(f"{h.url}/dicom-web/studies/{h.breast.study}/metadata", timeout=10).status_code == 200
    assert http.delete(f"{h.url}/api/emergency", timeout=10).status_code == 204
    assert uids(http.get(f"{h.url}/dicom-web/studies", timeout=10).json()) == {h.north_ct.study}
    assert http.delete(f"{h.url}/api/emergency", timeout=10).status_code == 409
    # An unlimited account has nothing to lift.
    assert (
        h.login("admin").post(f"{h.url}/api/emergency", json={"reason": "x" * 20}, timeout=10).status_code
        == 409
    )
    # A period that runs out ends by itself and is recorded as stopped.
    assert (
        http.post(f"{h.url}/api/emergency", json={"reason": "night shift, stroke"}, timeout=10).status_code
        == 201
    )
    service = security_of(h.server.ctx)
    with service.accounts.sessions.begin() as db:
        db.execute(
            update(EmergencyAccess)
            .where(EmergencyAccess.ended_at.is_(None))
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    assert uids(http.get(f"{h.url}/dicom-web/studies", timeout=10).json()) == {h.north_ct.study}
    assert http.get(f"{h.url}/api/emergency", timeout=10).json()["emergency"] is None
    auditor_view = requests.get(
        f"{h.url}/api/audit",
        params={"event": "110113", "user": "drnorth"},
        headers=h.bearer("admin"),
        timeout=10,
    ).json()["records"]
    kinds = [(r["event_type"], r["outcome"], r["outcome_detail"]) for r in reversed(auditor_view)]
    types = [k[0] for k in kinds]
    assert types == ["110127", "110127", "110138", "110127", "110138"], kinds
    assert kinds[0][1] == 4  # the refused start without a reason
    assert "trauma bay 2, prior CT needed" in kinds[1][2]
    assert "expired" in kinds[4][2]
    # The override itself is visible in each access made under it.
    accessed = requests.get(
        f"{h.url}/api/audit",
        params={"study": h.breast.study, "user": "drnorth"},
        headers=h.bearer("admin"),
        timeout=10,
    ).json()["records"]
    assert any(r["outcome"] == 0 for r in accessed)


def test_users_and_groups_over_http(hospital: Hospital) -> None:
    h = hospital
    admin = h.login("admin")
    listed = admin.get(f"{h.url}/api/users", timeout=10).json()["users"]
    assert {u["username"]: u["groups"] for u in listed}["student"] == ["breast", "north-ct"]
    created = admin.post(
        f"{h.url}/api/users",
        json={"username": "drsouth", "role": "clinician", "password": PASSWORD, "groups": ["south"]},
        timeout=10,
    )
    assert created.status_code == 404 and "south" in created.json()["detail"]  # no such group yet
    rules = {"institutions": ["South Clinic"], "modalities": ["CT"]}
    assert admin.put(f"{h.url}/api/groups/south", json={"rules": rules}, timeout=10).status_code == 200
    bad = admin.put(f"{h.url}/api/groups/bad", json={"rules": {"colour": ["red"]}}, timeout=10)
    assert bad.status_code == 409 and "unknown rule" in bad.json()["detail"]
    created = admin.post(
        f"{h.url}/api/users",
        json={"username": "drsouth", "role": "clinician", "password": PASSWORD, "groups": ["south"]},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    assert uids(qido(h, "admin")) >= {h.south_ct.study}
    south = h.login("drsouth")
    assert uids(south.get(f"{h.url}/dicom-web/studies", timeout=10).json()) == {h.south_ct.study}
    # Groups changed: effective at the next request.
    changed = admin.post(f"{h.url}/api/users/drsouth/groups", json={"groups": ["breast"]}, timeout=10)
    assert changed.status_code == 200
    assert uids(south.get(f"{h.url}/dicom-web/studies", timeout=10).json()) == {h.breast.study}
    assert admin.post(f"{h.url}/api/users/drsouth/logout", timeout=10).json()["sessions_revoked"] == 1
    assert south.get(f"{h.url}/dicom-web/studies", timeout=10).status_code == 401
    south = h.login("drsouth")
    assert admin.post(f"{h.url}/api/users/drsouth/disable", timeout=10).status_code == 200
    assert south.get(f"{h.url}/dicom-web/studies", timeout=10).status_code == 401
    assert admin.post(f"{h.url}/api/users/drsouth/enable", timeout=10).status_code == 200
    short = admin.post(f"{h.url}/api/users/drsouth/password", json={"password": "short"}, timeout=10)
    assert short.status_code == 409
    new_password = "another long pass phrase"
    assert admin.post(f"{h.url}/api/users/drsouth/password", json={"password": new_password}, timeout=10).ok
    login = requests.post(
        f"{h.url}/api/session", json={"username": "drsouth", "password": new_password}, timeout=10
    )
    assert login.status_code == 200
    groups = admin.get(f"{h.url}/api/groups", timeout=10).json()["groups"]
    assert {g["name"]: g["members"] for g in groups}["breast"] == ["drbreast", "drsouth", "student"]
    assert admin.delete(f"{h.url}/api/groups/south", timeout=10).status_code == 204
    # XSRF, role and cross-site checks apply as everywhere.
    no_xsrf = requests.post(f"{h.url}/api/users/drsouth/disable", cookies=admin.cookies, timeout=10)
    assert no_xsrf.status_code == 403
    assert h.login("drnorth").get(f"{h.url}/api/users", timeout=10).status_code == 403
    cross = admin.post(
        f"{h.url}/api/users/drsouth/disable", headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert cross.status_code == 403
    # Every change is a Security Alert in the trail, with the administrator and the outcome.
    trail = requests.get(
        f"{h.url}/api/audit",
        params={"event": "110113", "user": "admin"},
        headers=h.bearer("admin"),
        timeout=10,
    ).json()["records"]
    details = [r["outcome_detail"] for r in reversed(trail)]
    assert any(d.startswith("refused: user drsouth added") for d in details)
    assert "user drsouth added with role clinician, groups south" in details
    assert "study group south removed" in details
    assert "password of drsouth reset" in details
    assert {r["event_type"] for r in trail} == {"110136", "110137"}


def test_no_extra_query_for_unlimited_users(hospital: Hospital) -> None:
    """Users without groups are resolved by the one credential query, as before."""
    from sqlalchemy import event

    h = hospital
    service = security_of(h.server.ctx)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    service.accounts.resolve_token(h.tokens["admin"])  # first use stamps last_used_at (a write)
    service.accounts.resolve_token(h.tokens["drnorth"])
    event.listen(service.engine, "before_cursor_execute", count)
    try:
        admin = service.accounts.resolve_token(h.tokens["admin"])
        after_admin = len(statements)
        limited = service.accounts.resolve_token(h.tokens["drnorth"])
    finally:
        event.remove(service.engine, "before_cursor_execute", count)
    assert admin is not None and admin.scope is None
    assert limited is not None and limited.scope is not None and limited.scope.names == ["north-ct"]
    assert after_admin == 1, statements[:after_admin]
    assert len(statements) - after_admin == 3  # credential, groups, emergency


def test_groups_and_ae_titles_from_the_command_line(
    tmp_path: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from server.cli import main as tessera_main
    from server.config import load_settings
    from server.security.service import SecurityService

    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "cli"))
    if db_url:
        monkeypatch.setenv("TESSERA_DATABASE_URL", db_url)

    def tessera(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = tessera_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    assert tessera("users", "add", "drct", "--role", "clinician", stdin=PASSWORD + "\n")[0] == 0
    code, out, _ = tessera("groups", "set", "ct", "--modality", "CT", "--institution", "North Hospital")
    assert code == 0 and "North Hospital" in out
    code, _, err = tessera("groups", "set", "empty")
    assert code == 1 and "at least one rule" in err
    assert tessera("users", "groups", "drct", "ct")[0] == 0
    code, _, err = tessera("users", "groups", "drct", "nope")
    assert code == 1 and "no study group 'nope'" in err
    code, out, _ = tessera("groups", "list")
    assert "modalities=CT" in out and "drct" in out
    assert tessera("users", "ae-title", "CT_SCANNER1", "drct")[0] == 0
    code, _, err = tessera("users", "ae-title", "A\\B", "drct")
    assert code == 1 and "AE title" in err
    code, out, _ = tessera("users", "ae-title", "--list")
    assert "CT_SCANNER1" in out and "drct" in out
    service = SecurityService(load_settings())
    try:
        identity = service.accounts.resolve_ae_title("CT_SCANNER1")
        assert identity is not None and identity.role is Role.CLINICIAN
        assert identity.scope is not None and identity.scope.names == ["ct"]
        trail, _ = service.audit.query(AuditFilter(event_id="110113"), limit=50)
        details = {r["outcome_detail"] for r in trail}
        assert (
            "AE title CT_SCANNER1 acts as drct" in details and "study groups of drct set to [ct]" in details
        )
    finally:
        service.close()
    assert tessera("users", "ae-title", "CT_SCANNER1", "--remove")[0] == 0
    assert tessera("users", "groups", "drct")[1].strip() == "drct: every study (no group limit)"
    assert tessera("groups", "remove", "ct")[0] == 0
