"""Native decoders confined to worker processes: a decoder that crashes fails one request only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.uid import RLELossless

from sample_data.radiology import ct_series, encode
from server.archive.archive import StoreStatus
from server.isolation import IsolatedPool, NativeWorkerFailed, decoder_pool
from server.serve import BackgroundServer
from tests.dicom_cases import to_bytes
from tests.hostile_workers import CRASHING_ROWS, crash_on_marked_frames, crashing_video_build, pid, segfault


def test_a_crashing_job_fails_alone_and_the_pool_recovers() -> None:
    pool = IsolatedPool("test", workers=1, preload=["__main__", "server.imaging.codecs"])
    try:
        first = pool.run(pid)
        assert first != os.getpid()
        with pytest.raises(NativeWorkerFailed, match="crashed"):
            pool.run(segfault)
        assert pool.restarts == 2  # the crash was retried once on a fresh pool, then reported
        assert pool.run(pid) not in (first, os.getpid())
    finally:
        pool.shutdown()


def test_segfaulting_decoder_fails_one_request_and_the_server_keeps_serving(
    tessera_server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.imaging.frames as frames

    monkeypatch.setattr(frames, "decode_compressed", crash_on_marked_frames)
    crashing = encode(ct_series(1, size=CRASHING_ROWS)[0], RLELossless)
    healthy = encode(ct_series(1, size=64, series_number=2)[0], RLELossless)
    for ds in (crashing, healthy):
        assert tessera_server.ctx.archive.ingest_bytes(to_bytes(ds)).status is StoreStatus.STORED

    def rendered(ds: Any) -> requests.Response:
        return requests.get(
            f"{tessera_server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/rendered",
            headers={"Accept": "image/png"},
            timeout=60,
        )

    restarts = decoder_pool.restarts
    failed = rendered(crashing)
    assert failed.status_code == 422
    assert failed.headers["Content-Type"].startswith("application/problem+json")
    assert "worker process crashed" in failed.json()["detail"]
    assert decoder_pool.restarts > restarts
    for _ in range(3):  # the server process is alive and the next requests decode normally
        ok = rendered(healthy)
        assert ok.status_code == 200 and ok.content.startswith(b"\x89PNG")
    assert requests.get(tessera_server.url + "/api/health", timeout=10).status_code == 200


def test_ffmpeg_crash_on_a_stored_video_fails_that_video_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modules.cardiology import video
    from modules.cardiology.cine import FrameTiming
    from server.isolation import media_pool

    monkeypatch.setattr(video, "video_stream_to_mp4", crashing_video_build)
    timing = FrameTiming((0.0, 20.0), (20.0, 20.0), "FrameTime")
    with pytest.raises(video.VideoError, match="media worker process crashed"):
        video.confined_stream_to_mp4(b"\x00\x00\x00\x01" * 16, "h264", timing, str(tmp_path / "loop.mp4"))
    assert media_pool.run(pid) != os.getpid()  # the next job gets a fresh worker


_SERVER_WITH_WORKERS = """
import os, sys
from server.isolation import decoder_pool, media_pool
if __name__ == "__main__":
    pids = {decoder_pool.run(os.getpid), decoder_pool.run(os.getppid), media_pool.run(os.getpid)}
    print(" ".join(str(p) for p in sorted(pids)), flush=True)
    sys.stdin.read()
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("ending", ["SIGKILL", "exit"])
def test_worker_processes_end_with_their_server(ending: str) -> None:
    """Workers and the forkserver go when the server goes, even when it is killed outright."""
    import signal
    import subprocess
    import sys
    import time

    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_WITH_WORKERS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    children = [int(p) for p in server.stdout.readline().split()]
    assert len(children) >= 3 and server.pid not in children  # forkserver, decoder(s), media
    assert all(_running(p) for p in children)
    if ending == "SIGKILL":
        server.send_signal(signal.SIGKILL)
    else:
        server.stdin.close()
    server.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(_running(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in children if _running(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert left == [], f"still running after the server ended: {left}"
