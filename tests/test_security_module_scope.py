"""Study groups applied to what module routes add beyond the studies they name.

The guard checks every UID a request names; a route that reaches further (the mammography
hanging brings the patient's earlier exams) must filter those by the user's groups itself.
One patient has three screening exams: 2025 and 2023 in the department of group "screening",
2024 in that of group "diagnostic". A user of "screening" hanging the 2025 exam must not see
the 2024 exam anywhere in the answer, while an unlimited user, a user of both groups and the
same user during an emergency do. Also: a cardiology loop addressed as ``group/{series}/{n}``
(the UID inside a path segment) is checked like any other named object.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from argon2 import PasswordHasher
from pydicom.dataset import FileDataset

from sample_data.cardiology import echo_image_sequence
from sample_data.mammography import CURRENT, PRIOR, RIVERA, screening_exam
from sample_data.radiology import Study
from server.security import accounts as accounts_module
from server.security.guard import XSRF_COOKIE, XSRF_HEADER
from server.security.policy import Role
from server.security.service import security_of
from server.serve import BackgroundServer
from tests.dicom_cases import to_bytes

PASSWORD = "correct horse battery staple"
NOT_FOUND = "no such object in the archive"
OLDER = Study("20230605", "101500", "ACC-MG-2023", "MAMMOGRAPHY SCREENING BILATERAL", "1")
SCREENING, DIAGNOSTIC, ECHO = "Breast screening", "Breast diagnostics", "Echocardiography"

USERS = {
    "admin": (Role.ADMINISTRATOR, []),
    "drscreen": (Role.CLINICIAN, ["screening"]),
    "drboth": (Role.VIEWER, ["screening", "diagnostic"]),
    "drecho": (Role.VIEWER, ["echo"]),
}


@pytest.fixture(autouse=True)
def quick_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        accounts_module, "_hasher", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    )


@dataclass
class Clinic:
    server: BackgroundServer
    current: str  # 2025, screening
    hidden: str  # 2024, diagnostic
    older: str  # 2023, screening
    hidden_uids: set[str]  # every series and SOP Instance UID of the 2024 exam
    echo_series: str  # single-frame echo stills in a study of group "echo"
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, user: str, path: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=30)

    def login(self, user: str) -> requests.Session:
        http = requests.Session()
        response = http.post(
            f"{self.url}/api/session", json={"username": user, "password": PASSWORD}, timeout=10
        )
        assert response.status_code == 200, response.text
        http.headers[XSRF_HEADER] = http.cookies[XSRF_COOKIE] or ""
        return http


def _exam(study: Study, department: str, seed: int) -> list[FileDataset]:
    images = screening_exam(study, seed=seed, shape=(96, 80))
    for ds in images:
        ds.InstitutionalDepartmentName = department
    return images


@pytest.fixture
def clinic(tessera_server_factory: Callable[..., BackgroundServer], db_url: str) -> Clinic:
    server = tessera_server_factory(
        auth_enabled=True,
        audit_coalesce_seconds=0,
        extra={"mammography_prebuild": False, "cardiology_video_on_ingest": False},
    )
    hidden_uids: set[str] = set()
    for study, department, seed in (
        (CURRENT, SCREENING, 10),
        (PRIOR, DIAGNOSTIC, 20),
        (OLDER, SCREENING, 30),
    ):
        for ds in _exam(study, department, seed):
            outcome = server.ctx.archive.ingest_bytes(to_bytes(ds))
            assert outcome.ok, outcome.reason
            if study is PRIOR:
                hidden_uids |= {str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    stills = echo_image_sequence(n_frames=6, rows=60, columns=80)
    for ds in stills:
        ds.InstitutionalDepartmentName = ECHO
        assert server.ctx.archive.ingest_bytes(to_bytes(ds)).ok
    service = security_of(server.ctx)
    service.groups.save_group("screening", {"departments": [SCREENING]})
    service.groups.save_group("diagnostic", {"departments": [DIAGNOSTIC]})
    service.groups.save_group("echo", {"departments": [ECHO]})
    tokens = {}
    for name, (role, groups) in USERS.items():
        service.accounts.add_user(name, role, PASSWORD)
        service.groups.set_user_groups(name, groups)
        tokens[name] = service.accounts.create_token(name, "tests")[1]
    return Clinic(
        server,
        str(CURRENT.uid_for(RIVERA)),
        str(PRIOR.uid_for(RIVERA)),
        str(OLDER.uid_for(RIVERA)),
        hidden_uids,
        str(stills[0].SeriesInstanceUID),
        tokens,
    )


def _hanging(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def _studies(document: dict[str, Any]) -> tuple[list[str], set[str]]:
    """The hung priors, and every study the answer mentions (summaries and images)."""
    priors = [p["StudyInstanceUID"] for p in document["priors"]]
    mentioned = {p["StudyInstanceUID"] for p in document["prior_candidates"]} | set(priors)
    for stage in document["stages"]:
        for viewport in stage["viewports"]:
            if viewport.get("image"):
                mentioned.add(viewport["image"]["StudyInstanceUID"])
    mentioned |= {image["StudyInstanceUID"] for image in document["other_images"]}
    return priors, mentioned


def _leaks(c: Clinic, document: dict[str, Any]) -> list[str]:
    text = json.dumps(document)
    return [uid for uid in [c.hidden, *c.hidden_uids] if uid in text]


def test_hanging_offers_only_priors_in_the_users_groups(clinic: Clinic) -> None:
    c = clinic
    path = f"/mammography/studies/{c.current}/hanging"
    limited = _hanging(c.get("drscreen", path))
    priors, mentioned = _studies(limited)
    assert priors == [c.older]  # the newest prior it may see, not the 2024 exam
    assert mentioned == {c.current, c.older}
    assert _leaks(c, limited) == []
    for user in ("admin", "drboth"):
        document = _hanging(c.get(user, path))
        priors, mentioned = _studies(document)
        assert priors == [c.hidden], user  # the most recent prior
        assert mentioned == {c.current, c.hidden, c.older}, user
        assert [p["StudyInstanceUID"] for p in document["prior_candidates"]] == [c.hidden, c.older]
        assert len(_leaks(c, document)) == 1 + len(c.hidden_uids), user


def test_a_prior_outside_the_groups_cannot_be_chosen(clinic: Clinic) -> None:
    c = clinic
    path = f"/mammography/studies/{c.current}/hanging?prior="
    refused = c.get("drscreen", path + c.hidden)
    unknown = c.get("drscreen", path + "1.2.3.4")
    assert refused.status_code == unknown.status_code == 404  # as if it did not exist
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert refused.json()["detail"] == unknown.json()["detail"].replace("1.2.3.4", c.hidden)
    assert _studies(_hanging(c.get("drscreen", path + c.older)))[0] == [c.older]
    for user in ("admin", "drboth"):
        assert _studies(_hanging(c.get(user, path + c.hidden)))[0] == [c.hidden], user
    # Addressed directly, the 2024 exam is refused by the guard as before.
    direct = c.get("drscreen", f"/mammography/studies/{c.hidden}/hanging")
    assert direct.status_code == 404 and direct.json()["detail"] == NOT_FOUND


def test_break_glass_lifts_the_filter_and_ending_it_restores_it(clinic: Clinic) -> None:
    c = clinic
    http = c.login("drscreen")
    hanging = f"{c.url}/mammography/studies/{c.current}/hanging"
    assert _studies(_hanging(http.get(hanging, timeout=30)))[0] == [c.older]
    started = http.post(
        f"{c.url}/api/emergency", json={"reason": "recall: compare with last year's work-up"}, timeout=10
    )
    assert started.status_code == 201, started.text
    document = _hanging(http.get(hanging, timeout=30))
    assert _studies(document)[0] == [c.hidden]
    assert _studies(_hanging(http.get(f"{hanging}?prior={c.hidden}", timeout=30)))[0] == [c.hidden]
    loop = http.get(f"{c.url}/cardiology/loops/group/{c.echo_series}/1", timeout=30)
    assert loop.status_code == 200, loop.text
    assert http.delete(f"{c.url}/api/emergency", timeout=10).status_code == 204
    after = _hanging(http.get(hanging, timeout=30))
    assert _studies(after)[0] == [c.older] and _leaks(c, after) == []


def test_a_group_loop_is_checked_by_the_series_in_its_id(clinic: Clinic) -> None:
    c = clinic
    base = f"/cardiology/loops/group/{c.echo_series}/1"
    for suffix in ("", "/frames/1.jpg", "/frames"):
        refused = c.get("drscreen", base + suffix)
        assert refused.status_code == 404, (suffix, refused.status_code)
        assert refused.json()["detail"] == NOT_FOUND
        for user in ("admin", "drecho"):
            allowed = c.get(user, base + suffix)
            assert allowed.status_code == 200, (user, suffix, allowed.text[:200])
    loop = c.get("drecho", base).json()
    assert loop["number_of_frames"] == 6  # the first of two acquisitions of six stills
