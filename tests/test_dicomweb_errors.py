"""Bad input over DICOMweb: a clear 4xx or a FailedSOPSequence entry, nothing stored, still serving."""

from __future__ import annotations

import pytest
import requests

from server.serve import BackgroundServer
from tests.dicom_cases import bad_inputs, ct_bytes

BOUNDARY = "xyzBOUNDARYzyx"


def _multipart(*parts: bytes, content_type: str = "application/dicom") -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _stow(
    server: BackgroundServer, body: bytes, content_type: str | None = None, path: str = "/dicom-web/studies"
) -> requests.Response:
    headers = {
        "Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    return requests.post(server.url + path, data=body, headers=headers, timeout=30)


def _instance_count(server: BackgroundServer) -> int:
    return len(requests.get(server.url + "/dicom-web/instances", timeout=10).json())


def _still_serving(server: BackgroundServer) -> None:
    assert requests.get(server.url + "/api/health", timeout=5).json() == {"status": "ok"}


def _is_problem(response: requests.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body.get("detail")
    return body


@pytest.mark.parametrize("case", sorted(bad_inputs()))
def test_bad_instance_gets_failed_sop_entry(tessera_server: BackgroundServer, case: str) -> None:
    assert _stow(tessera_server, _multipart(ct_bytes(SOPInstanceUID="1.2.3.9"))).status_code == 200
    response = _stow(tessera_server, _multipart(bad_inputs()[case]))
    assert response.status_code == 409, response.text
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 1 and failed[0]["00081197"]["Value"][0] >= 0xA700
    assert failed[0]["00091001"]["Value"][0]  # the reason, in words
    assert _instance_count(tessera_server) == 1
    assert not any(tessera_server.ctx.archive.blobs.tmp_dir.iterdir())
    _still_serving(tessera_server)


def test_mixed_body_stores_the_good_part_and_answers_202(tessera_server: BackgroundServer) -> None:
    response = _stow(tessera_server, _multipart(ct_bytes(), b"garbage"))
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 1 and len(body["00081198"]["Value"]) == 1
    assert _instance_count(tessera_server) == 1


def test_instance_of_another_study_is_refused_on_study_url(tessera_server: BackgroundServer) -> None:
    response = _stow(tessera_server, _multipart(ct_bytes()), path="/dicom-web/studies/1.2.3.4")
    assert response.status_code == 409
    body = response.json()
    failed = body["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA900] and failed["00081155"]["Value"]
    assert "00081190" not in body  # no retrieve URL for a study that was not stored


def test_wrong_content_type_is_415(tessera_server: BackgroundServer) -> None:
    _is_problem(_stow(tessera_server, ct_bytes(), content_type="application/json"), 415)
    _is_problem(
        _stow(
            tessera_server,
            _multipart(ct_bytes()),
            content_type=f'multipart/related; type="application/json"; boundary={BOUNDARY}',
        ),
        415,
    )
    _still_serving(tessera_server)


def test_non_dicom_part_type_is_a_failed_entry(tessera_server: BackgroundServer) -> None:
    response = _stow(
        tessera_server,
        _multipart(ct_bytes(), content_type="text/plain"),
        content_type=f"multipart/related; boundary={BOUNDARY}",
    )
    assert response.status_code == 409


def test_malformed_multipart_is_400(tessera_server: BackgroundServer) -> None:
    _is_problem(
        _stow(
            tessera_server,
            b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + ct_bytes(),
        ),
        400,
    )
    _is_problem(
        _stow(tessera_server, ct_bytes(), content_type='multipart/related; type="application/dicom"'), 400
    )
    assert _instance_count(tessera_server) == 0
    assert not any(tessera_server.ctx.archive.blobs.tmp_dir.iterdir())


def test_oversize_body_is_413(tessera_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = tessera_server_factory(max_upload_bytes=10_000)
    _is_problem(_stow(server, _multipart(ct_bytes())), 413)
    _still_serving(server)
    assert _instance_count(server) == 0


def test_oversize_chunked_body_is_413_and_leaves_nothing(tessera_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = tessera_server_factory(max_upload_bytes=10_000)
    body = _multipart(ct_bytes())

    def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = requests.post(
        server.url + "/dicom-web/studies",
        data=chunks(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
        timeout=30,
    )
    _is_problem(response, 413)
    assert _instance_count(server) == 0
    assert not any(server.ctx.archive.blobs.tmp_dir.iterdir())


def test_multipart_of_another_dicom_type_is_415(tessera_server: BackgroundServer) -> None:
    content_type = f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'
    _is_problem(_stow(tessera_server, _multipart(ct_bytes()), content_type=content_type), 415)


def test_single_part_application_dicom_is_accepted(tessera_server: BackgroundServer) -> None:
    response = _stow(tessera_server, ct_bytes(), content_type="application/dicom")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/1.2.3",
        "/dicom-web/studies/1.2.3/metadata",
        "/dicom-web/studies/1.2.3/series/4.5/instances/6.7",
        "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/frames/1",
        "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/rendered",
        "/dicom-web/studies/1.2.3/thumbnail",
        "/api/studies/1.2.3",
        "/dicom-web/studies/not-a-uid",
        "/dicom-web/../../etc/passwd",
        "/nothing/here",
    ],
)
def test_unknown_resources_are_404_problems(tessera_server: BackgroundServer, path: str) -> None:
    _is_problem(requests.get(tessera_server.url + path, timeout=10), 404)


@pytest.mark.parametrize(
    "query",
    [
        "StudyDate=2025",
        "StudyDate=20250101-2025",
        "StudyInstanceUID=1.2.x",
        "limit=-1",
        "limit=abc",
        "offset=-5",
        "NoSuchAttribute=1",
        "FFFFFFFF=1",
        "includefield=Bogus",
        "fuzzymatching=maybe",
        "SeriesNumber=abc",
    ],
)
def test_malformed_queries_are_400(tessera_server: BackgroundServer, query: str) -> None:
    _is_problem(requests.get(f"{tessera_server.url}/dicom-web/studies?{query}", timeout=10), 400)


def test_frame_and_render_parameters_are_checked(tessera_server: BackgroundServer) -> None:
    response = _stow(tessera_server, _multipart(ct_bytes()))
    url = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    _is_problem(requests.get(url + "/frames/0", timeout=10), 400)
    _is_problem(requests.get(url + "/frames/1,x", timeout=10), 400)
    _is_problem(requests.get(url + "/frames/2", timeout=10), 404)
    _is_problem(requests.get(url + "/rendered?window=abc", timeout=10), 400)
    _is_problem(requests.get(url + "/rendered?viewport=0,10", timeout=10), 400)
    _is_problem(requests.get(url + "/rendered?quality=500", timeout=10), 400)
    _is_problem(requests.get(url + "/rendered", headers={"Accept": "application/pdf"}, timeout=10), 406)
    _is_problem(
        requests.get(
            url,
            headers={
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
            },
            timeout=10,
        ),
        406,
    )
    _still_serving(tessera_server)


def test_wildcards_match_and_sql_metacharacters_are_literal(tessera_server: BackgroundServer) -> None:
    for uid, name in [("1.2.3.1", "Percent%Name"), ("1.2.3.2", "Under_Score"), ("1.2.3.3", "PlainXName")]:
        body = _multipart(
            ct_bytes(
                SOPInstanceUID=uid,
                StudyInstanceUID=uid + ".1",
                SeriesInstanceUID=uid + ".2",
                PatientName=name,
                PatientID=uid,
            )
        )
        assert _stow(tessera_server, body).status_code == 200

    def names(query: str) -> list[str]:
        return sorted(
            s["00100010"]["Value"][0]["Alphabetic"]
            for s in requests.get(f"{tessera_server.url}/dicom-web/studies?{query}", timeout=10).json()
        )

    assert names("PatientName=Percent%25Name") == ["Percent%Name"]
    assert names("PatientName=Under_Score") == ["Under_Score"]
    assert names("PatientName=Plain_Name") == []
    assert names("PatientName=Plain%25") == []
    assert names("PatientName=plain?name") == ["PlainXName"]
    assert names("PatientName=*score") == ["Under_Score"]
    assert names("PatientID=1.2.3.1,1.2.3.3") == []  # PatientID is not a UID list: literal
    assert len(names("StudyInstanceUID=1.2.3.1.1,1.2.3.3.1")) == 2
    assert names("PatientName=under&fuzzymatching=true") == ["Under_Score"]
