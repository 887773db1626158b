"""Cost of the hostile-input guards on frame decoding, against the same decode without them.

    .venv/bin/python -m tests.bench.bench_confinement [--repeat 400]

* JPEG baseline (echo loops, the hot path): ``decode_frame`` with the SOF check, against the
  same call with the check switched off; both in this process, interleaved.
* JPEG 2000 and RLE: decoding in the confined worker pool (``server.isolation``), against
  decoding the same frame in this process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

import server.imaging.frames as frames
from sample_data.radiology import ct_series, encode, us_multiframe
from server.archive.archive import Archive
from server.imaging.codecs import FrameGeometry
from server.imaging.frames import HeaderCache, decode_frame, read_frame_bytes
from server.isolation import decoder_pool
from tests.conftest import make_settings
from tests.dicom_cases import to_bytes


def _rate(fn: Callable[[], object], repeat: int) -> float:
    """Frames per second: the median of five batches."""
    batch = max(repeat // 5, 1)
    rates = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(batch):
            fn()
        rates.append(batch / (time.perf_counter() - started))
    return statistics.median(rates)


def _no_check(*_args: object) -> None:
    return None


def _in_process(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    return fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        archive = Archive(make_settings(Path(folder) / "data"))
        echo = encode(us_multiframe(4, rows=300, columns=400), JPEGBaseline8Bit)
        j2k = encode(ct_series(1, size=256)[0], JPEG2000Lossless)
        rle = encode(ct_series(1, size=256, series_number=2)[0], RLELossless)
        for ds in (echo, j2k, rle):
            archive.ingest_bytes(to_bytes(ds))
        headers = HeaderCache()
        rows = []
        echo_instance = archive.instance_by_uid(str(echo.SOPInstanceUID))
        assert echo_instance is not None
        header = headers.get(echo_instance)
        real_check = frames.check_codestream
        guarded, unguarded = [], []
        for _ in range(3):  # interleaved: the machine's load drifts between batches
            guarded.append(_rate(lambda: decode_frame(echo_instance, header, 1), args.repeat))
            frames.check_codestream = _no_check  # type: ignore[assignment]
            unguarded.append(_rate(lambda: decode_frame(echo_instance, header, 1), args.repeat))
            frames.check_codestream = real_check
        rows.append(("JPEG baseline 300x400 (in process)", max(guarded), max(unguarded)))
        frame = read_frame_bytes(echo_instance, 1)
        geometry = FrameGeometry(300, 400, 3, 8)
        started = time.perf_counter()
        for _ in range(10000):
            real_check(JPEGBaseline8Bit, frame, geometry)
        check_us = (time.perf_counter() - started) / 10000 * 1e6
        decoder_pool.run(time.time)  # workers started outside the timings
        for name, ds in (("JPEG 2000 256x256", j2k), ("RLE 256x256", rle)):
            instance = archive.instance_by_uid(str(ds.SOPInstanceUID))
            assert instance is not None
            header = headers.get(instance)
            confined = _rate(partial(decode_frame, instance, header, 0), args.repeat // 4)
            frames.decoder_pool.run = _in_process  # type: ignore[method-assign]
            direct = _rate(partial(decode_frame, instance, header, 0), args.repeat // 4)
            del frames.decoder_pool.run
            rows.append((f"{name} (worker pool vs in process)", confined, direct))
        archive.close()
    print(f"the JPEG SOF check alone: {check_us:.1f} us a frame")
    print(f"{'frames/s':44} {'guarded':>10} {'baseline':>10} {'ratio':>7}")
    for name, with_guard, without in rows:
        print(f"{name:44} {with_guard:10.0f} {without:10.0f} {with_guard / without:7.2f}")
    decoder_pool.shutdown()


if __name__ == "__main__":
    main()
