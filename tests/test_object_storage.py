"""Blobs and derived products in an object store (obstore): machines with their own data folders
share one archive through one index database and one store — a folder (``file://``) or an S3
bucket on moto's S3 server, configured as a real deployment would (endpoint and region in
the URL, credentials in the standard AWS environment variables)."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import obstore
import pytest
import requests
from moto.server import ThreadedMotoServer
from pydicom import dcmread
from pydicom.dataset import FileDataset
from sqlalchemy import func, select

from modules.cardiology.loops import LoopLibrary
from sample_data.cardiology import echo_loop
from sample_data.mammography import CURRENT, mammogram
from sample_data.radiology import ct_series
from server.archive.archive import Archive, StoreStatus
from server.archive.models import Instance
from server.archive.objectstore import BlobMirror
from server.config import ConfigError, Settings
from server.jobs.models import DerivedJob
from server.serve import BackgroundServer
from server.tiles.dicom_image import pyramid_store
from tests.conftest import free_port, make_settings

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port: the S3 protocol over HTTP, as MinIO or AWS speak it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials the way a deployment passes them: the standard AWS environment variables."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tessera-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "tessera-test-secret")


class Store:
    """One test's object store, and direct access to it (as another client of the same store)."""

    def __init__(self, url: str, raw: Any, bucket: str | None = None, endpoint: str = "") -> None:
        self.url = url
        self.raw = raw
        self.bucket = bucket
        self.endpoint = endpoint

    def put(self, key: str, data: bytes) -> None:
        obstore.put(self.raw, key, data)

    def read(self, key: str) -> bytes:
        return bytes(obstore.get(self.raw, key).bytes())

    def has(self, key: str) -> bool:
        try:
            obstore.head(self.raw, key)
        except FileNotFoundError:
            return False
        return True

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION)


def _s3_store(endpoint: str) -> Store:
    bucket = f"tessera-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    url = f"s3://{bucket}/archive?endpoint={endpoint}&region={REGION}&allow_http=true"
    raw = obstore.store.from_url(
        f"s3://{bucket}/archive", endpoint=endpoint, region=REGION, client_options={"allow_http": True}
    )
    return Store(url, raw, bucket, endpoint)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        folder = tmp_path / "object-store"
        folder.mkdir()
        return Store(f"file://{folder}", obstore.store.LocalStore(folder))
    request.getfixturevalue("aws_credentials")
    return _s3_store(str(request.getfixturevalue("s3_endpoint")))


@pytest.fixture
def s3(aws_credentials: None, s3_endpoint: str) -> Store:
    return _s3_store(s3_endpoint)


def _bytes(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _machine(tmp_path: Path, name: str, db_url: str, store: Store, **extra: Any) -> Settings:
    """A server's settings: its own data folder, the shared index and the shared object store."""
    shared_db = db_url or f"sqlite:///{tmp_path / 'shared-index.sqlite3'}"
    return make_settings(tmp_path / name, shared_db, blob_store_url=store.url, **extra)


def _stow(url: str, payload: bytes) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return requests.post(
        url + "/dicom-web/studies",
        data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )


def _wait_for_job(archive: Archive, kind: str, key: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        with archive.sessions() as session:
            state = session.scalar(
                select(DerivedJob.state).where(DerivedJob.kind == kind, DerivedJob.key == key)
            )
        if state in ("done", "failed"):
            break
        time.sleep(0.2)
    assert state == "done", f"{kind} job for {key}: {state}"


def test_a_blob_stored_on_one_machine_is_fetched_by_another(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    a = Archive(_machine(tmp_path, "a", db_url, store))
    b = Archive(_machine(tmp_path, "b", db_url, store), run_migrations=False)
    try:
        ds = ct_series(1)[0]
        outcome = a.ingest_bytes(_bytes(ds))
        assert outcome.status is StoreStatus.STORED
        stored = a.instance_by_uid(str(ds.SOPInstanceUID))
        assert stored is not None
        assert store.read(f"{stored.sha256[:2]}/{stored.sha256}") == stored.path.read_bytes()
        assert not b.blobs.path_for(stored.sha256).exists()  # b has never seen it

        seen = b.instance_by_uid(str(ds.SOPInstanceUID))
        assert seen is not None and seen.path == b.blobs.path_for(stored.sha256)
        assert seen.path.read_bytes() == stored.path.read_bytes()  # fetched into b's cache
        assert dcmread(seen.path).SOPInstanceUID == ds.SOPInstanceUID
        assert list(b.blobs.tmp_dir.iterdir()) == []  # the download was renamed into place
    finally:
        a.close()
        b.close()


def test_reconcile_counts_the_object_store_and_indexes_its_orphans(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    a = Archive(_machine(tmp_path, "a", db_url, store))
    b = Archive(_machine(tmp_path, "b", db_url, store), run_migrations=False)
    try:
        first, second = ct_series(2)
        assert a.ingest_bytes(_bytes(first)).ok
        store.put("derived/pyramids/x.zarr/.complete", b"")  # derived products are not blobs
        report = b.reconcile()  # b has no local copy: the object store has it, so nothing is missing
        assert report.missing_files == [] and report.orphan_files == []
        # A crash after the upload, before the index commit: the blob is only in the object store.
        data = _bytes(second)
        digest = hashlib.sha256(data).hexdigest()
        store.put(f"{digest[:2]}/{digest}", data)
        report = b.reconcile(repair=True)
        assert report.orphan_files == [digest]
        assert b.instance_by_uid(str(second.SOPInstanceUID)) is not None
        assert b.reconcile().clean
    finally:
        a.close()
        b.close()


def test_an_upload_that_fails_stores_nothing(tmp_path: Path, store: Store) -> None:
    archive = Archive(_machine(tmp_path, "a", "", store))
    if store.bucket is None:
        for prefix in range(256):  # every key's folder is taken by a file: the store refuses writes
            store.put(f"{prefix:02x}", b"")
    else:
        store.s3().delete_bucket(Bucket=store.bucket)  # the bucket went away under the running server
    outcome = archive.ingest_bytes(_bytes(ct_series(1)[0]))
    try:
        assert outcome.status is StoreStatus.REJECTED and "object store" in outcome.reason
        with archive.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 0
        assert [p for p in archive.blobs.root.glob("??/*")] == []
        assert list(archive.blobs.tmp_dir.iterdir()) == []
    finally:
        archive.close()


@pytest.mark.usefixtures("aws_credentials")
@pytest.mark.parametrize("kind", ["missing folder", "missing bucket", "unknown option"])
def test_a_store_that_cannot_be_opened_is_a_configuration_error(
    tmp_path: Path, s3_endpoint: str, kind: str
) -> None:
    url = {
        "missing folder": f"file://{tmp_path / 'missing'}",
        "missing bucket": f"s3://no-such-bucket/x?endpoint={s3_endpoint}&region={REGION}&allow_http=true",
        "unknown option": f"s3://b/x?endpoint={s3_endpoint}&no_such_option=1",
    }[kind]
    with pytest.raises(ConfigError, match="blob_store_url") as caught:
        Archive(make_settings(tmp_path / "a", blob_store_url=url))
    assert "endpoint=" not in str(caught.value)  # the URL's options are not repeated in messages


def test_s3_settings_from_the_standard_environment_variables(
    s3: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No options in the URL: endpoint, region and plain HTTP from AWS_* variables, as any S3 client."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    mirror = BlobMirror(f"s3://{s3.bucket}/archive")
    blob = tmp_path / "blob"
    blob.write_bytes(b"DICM" * 1000)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    mirror.put(digest, blob)
    assert s3.read(f"{digest[:2]}/{digest}") == blob.read_bytes()
    assert list(mirror.iter_hashes()) == [digest]


def test_a_second_server_serves_what_the_first_stored(tmp_path: Path, db_url: str, store: Store) -> None:
    first = BackgroundServer.start(_machine(tmp_path, "a", db_url, store))
    second = BackgroundServer.start(_machine(tmp_path, "b", db_url, store))
    try:
        ds = ct_series(1)[0]
        assert _stow(first.url, _bytes(ds)).status_code == 200
        base = f"{second.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        retrieved = requests.get(
            f"{base}/instances/{ds.SOPInstanceUID}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=30,
        )
        assert retrieved.status_code == 200 and _bytes(ds)[132:] in retrieved.content
        frame = requests.get(
            f"{base}/instances/{ds.SOPInstanceUID}/frames/1/rendered",
            headers={"Accept": "image/png"},
            timeout=30,
        )
        assert frame.status_code == 200 and frame.content.startswith(b"\x89PNG")
    finally:
        second.stop()
        first.stop()


def test_a_pyramid_built_on_one_machine_is_fetched_by_the_other(
    tmp_path: Path, db_url: str, s3: Store
) -> None:
    first = BackgroundServer.start(_machine(tmp_path, "a", db_url, s3))
    second = BackgroundServer.start(_machine(tmp_path, "b", db_url, s3))
    try:
        mg = mammogram(CURRENT, "L", "CC", 3, seed=11, shape=(1100, 900))
        sop = str(mg.SOPInstanceUID)
        assert _stow(first.url, _bytes(mg)).status_code == 200
        _wait_for_job(first.ctx.archive, "mammography", sop)  # built by whichever server claimed it
        tile = f"/mammography/images/{sop}/frames/0_files/11/1_1.jpeg"
        answers = [requests.get(server.url + tile, timeout=60) for server in (first, second)]
        assert all(r.status_code == 200 for r in answers), [r.text[:200] for r in answers]
        assert answers[0].content == answers[1].content
        stores = [pyramid_store(server.ctx) for server in (first, second)]
        assert sum(s.builds for s in stores) == 1  # built once across both machines...
        assert sum(s.fetches for s in stores) == 1  # ...and downloaded whole by the other
        folders = [next((s.root).glob(f"{sop}-*.zarr")) for s in stores]
        files = [sorted(p.relative_to(f).as_posix() for p in f.rglob("*") if p.is_file()) for f in folders]
        assert files[0] == files[1] and len(files[0]) > 10
        assert all(
            (a / n).read_bytes() == (folders[1] / n).read_bytes() for a in folders[:1] for n in files[0]
        )
        assert s3.has(f"derived/pyramids/{folders[0].name}/.complete")
        assert not any(p.name.startswith(".tmp-") for s in stores for p in s.root.iterdir())
    finally:
        second.stop()
        first.stop()


def test_a_pyramid_is_not_fetched_before_its_upload_is_complete(tmp_path: Path, s3: Store) -> None:
    """Parts of a pyramid without the ``.complete`` marker (an upload cut short) are ignored: rebuilt."""
    server = BackgroundServer.start(_machine(tmp_path, "a", "", s3, extra={"mammography_prebuild": False}))
    try:
        mg = mammogram(CURRENT, "R", "CC", 3, seed=12, shape=(600, 500))
        sop = str(mg.SOPInstanceUID)
        assert server.ctx.archive.ingest_bytes(_bytes(mg)).ok
        instance = server.ctx.archive.instance_by_uid(sop)
        assert instance is not None
        store = pyramid_store(server.ctx)
        s3.put(f"derived/pyramids/{store.key_of(instance)}.zarr/zarr.json", b"{not json")
        tile = requests.get(f"{server.url}/mammography/images/{sop}/frames/0_files/10/0_0.jpeg", timeout=60)
        assert tile.status_code == 200 and (store.builds, store.fetches) == (1, 0)
        assert s3.read(f"derived/pyramids/{store.key_of(instance)}.zarr/zarr.json").startswith(b"{")
        assert s3.has(f"derived/pyramids/{store.key_of(instance)}.zarr/.complete")
    finally:
        server.stop()


def test_a_cine_video_made_on_one_machine_is_fetched_by_the_other(
    tmp_path: Path, db_url: str, s3: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    write_video = LoopLibrary.write_video

    def counted(self: LoopLibrary, instance: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(instance.sop_instance_uid)
        return write_video(self, instance, *args, **kwargs)

    monkeypatch.setattr(LoopLibrary, "write_video", counted)
    first = BackgroundServer.start(_machine(tmp_path, "a", db_url, s3))
    second = BackgroundServer.start(_machine(tmp_path, "b", db_url, s3))
    try:
        loop = echo_loop("A4C", instance_number=1, n_frames=12, rows=120, columns=160)
        sop = str(loop.SOPInstanceUID)
        assert _stow(first.url, _bytes(loop)).status_code == 200
        _wait_for_job(first.ctx.archive, "cardiology", sop)
        videos = [
            requests.get(f"{server.url}/cardiology/loops/{sop}.mp4", timeout=60) for server in (first, second)
        ]
        assert all(v.status_code == 200 and v.headers["Content-Type"] == "video/mp4" for v in videos)
        assert videos[0].content == videos[1].content
        assert made == [sop]  # made once, by the job; the other machine downloaded it
        assert s3.read(f"derived/cardiology/video/{sop}.mp4") == videos[0].content
        for server in (first, second):
            assert (server.settings.derived_dir / "cardiology" / "video" / f"{sop}.mp4").is_file()
    finally:
        second.stop()
        first.stop()


def test_a_video_whose_upload_fails_is_not_kept(tmp_path: Path, s3: Store) -> None:
    """An unpublished product must not stay local (other machines would build theirs): the job retries."""
    server = BackgroundServer.start(
        _machine(tmp_path, "a", "", s3, extra={"cardiology_video_on_ingest": False})
    )
    try:
        loop = echo_loop("A2C", instance_number=2, n_frames=8, rows=100, columns=120)
        sop = str(loop.SOPInstanceUID)
        assert server.ctx.archive.ingest_bytes(_bytes(loop)).ok
        objects = s3.s3().list_objects_v2(Bucket=s3.bucket).get("Contents", [])
        s3.s3().delete_objects(Bucket=s3.bucket, Delete={"Objects": [{"Key": o["Key"]} for o in objects]})
        s3.s3().delete_bucket(Bucket=s3.bucket)
        answer = requests.get(f"{server.url}/cardiology/loops/{sop}.mp4", timeout=60)
        assert answer.status_code >= 500
        assert not (server.settings.derived_dir / "cardiology" / "video" / f"{sop}.mp4").exists()
        assert list((server.settings.derived_dir / "cardiology" / "video").glob("*.part")) == []
    finally:
        server.stop()
