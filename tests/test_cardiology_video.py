"""Loop → MP4: frame count, exact (also variable) timing, PSNR against the decoded DICOM, bad input."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from modules.cardiology.cine import caliper_distance
from modules.cardiology.loops import LoopError, LoopLibrary
from modules.cardiology.video import VideoError, read_mp4_frames
from sample_data.cardiology import echo_loop
from sample_data.radiology import write
from server.archive.archive import Archive
from server.config import Settings
from server.imaging.frames import FrameDecodeError, HeaderCache

MPEG4_AVC_HIGH = UID("1.2.840.10008.1.2.4.102")


@pytest.fixture
def library(sqlite_settings: Settings) -> Iterator[LoopLibrary]:
    archive = Archive(sqlite_settings)
    lib = LoopLibrary(archive, HeaderCache(), sqlite_settings.derived_dir)
    yield lib
    lib.close()
    archive.close()


def _store(library: LoopLibrary, ds: FileDataset, tmp_path: Path) -> str:
    outcome = library.archive.ingest_path(write(ds, tmp_path / "in"))
    assert outcome.ok, outcome.reason
    return str(ds.SOPInstanceUID)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize(
    ("view", "options"),
    [("A4C", {}), ("PLAX", {"colour": True, "variable_timing": True, "n_frames": 40})],
    ids=["grey-uniform", "colour-variable"],
)
def test_mp4_has_the_dicom_frames_and_timing(
    library: LoopLibrary, tmp_path: Path, view: str, options: dict[str, object]
) -> None:
    sop = _store(library, echo_loop(view, rows=200, columns=260, cm_per_px=0.06, **options), tmp_path)  # type: ignore[arg-type]
    instance, header = library.loop(sop)
    timing = library.timing(instance, header)
    data = library.make_video(sop).read_bytes()
    times, frames, tags = read_mp4_frames(data)
    assert len(frames) == instance.number_of_frames
    assert times == pytest.approx(list(timing.times_ms), abs=0.02)  # 90 kHz clock: exact to 11 µs
    if options.get("variable_timing"):
        assert len(set(np.round(np.diff(times), 3))) > 1
    for index, decoded in enumerate(frames):
        reference = library.display_frame(instance, header, index)
        if reference.ndim == 2:
            reference = np.repeat(reference[..., None], 3, axis=2)
        assert _psnr(reference, decoded[: reference.shape[0], : reference.shape[1]]) >= 35.0, (
            f"frame {index + 1}"
        )
    assert tags["color_range"] == 1  # limited ("tv") range, tagged
    assert tags["keyframes"] == 1  # one keyframe per loop
    assert data.count(b"moof") >= 3  # short fragments: a 0.8-1 s loop in several pieces
    container = av.open(io.BytesIO(data), format="mp4")
    duration = container.streams.video[0].duration * container.streams.video[0].time_base * 1000
    container.close()
    assert float(duration) == pytest.approx(timing.duration_ms, abs=0.05)  # the last frame keeps its time


def _rejpeg(ds: FileDataset, frames: np.ndarray) -> FileDataset:
    """`ds` with its frames replaced by `frames`, stored as baseline JPEG (one per fragment)."""
    out = copy.deepcopy(ds)
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", quality=95)
        data = buffer.getvalue()
        encoded.append(data + (b"\0" if len(data) % 2 else b""))
    out.PixelData = encapsulate(encoded, has_bot=True)
    out.NumberOfFrames = len(frames)
    return out


@pytest.mark.parametrize(
    ("options", "window", "made_by_ffmpeg"),
    [({}, False, True), ({"colour": True}, False, True), ({}, True, False)],
    ids=["grey-narrow-range", "colour", "grey-windowed"],
)
def test_jpeg_loops_go_to_ffmpeg_as_stored_and_look_like_the_display_frames(
    library: LoopLibrary,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, object],
    window: bool,
    made_by_ffmpeg: bool,
) -> None:
    """Baseline JPEG loops are decoded by FFmpeg in the media worker, except grey frames that a
    window or LUT changes for display; either way the MP4 matches ``display_frame`` (here grey
    frames in 40..200, which the display stretches to 0..255 frame by frame)."""
    from modules.cardiology import loops as loops_module

    ds = echo_loop("A4C", n_frames=6, rows=120, columns=160, **options)  # type: ignore[arg-type]
    if not options:
        ds = _rejpeg(ds, (40 + ds.pixel_array.astype(np.uint16) * 160 // 255).astype(np.uint8))
    if window:
        ds.WindowCenter, ds.WindowWidth = 100, 120
    calls: list[int] = []
    confined = loops_module.confined_jpeg_to_mp4

    def counted(jpegs: list[bytes], *rest: Any) -> Any:
        calls.append(len(jpegs))
        return confined(jpegs, *rest)

    monkeypatch.setattr(loops_module, "confined_jpeg_to_mp4", counted)
    sop = _store(library, ds, tmp_path)
    instance, header = library.loop(sop)
    _times, frames, _tags = read_mp4_frames(library.make_video(sop).read_bytes())
    assert calls == ([6] if made_by_ffmpeg else [])
    assert len(frames) == 6
    for index, decoded in enumerate(frames):
        reference = library.display_frame(instance, header, index)
        if reference.ndim == 2:
            reference = np.repeat(reference[..., None], 3, axis=2)
        assert _psnr(reference, decoded) >= 35.0, f"frame {index + 1}"


def _with_broken_frame(ds: FileDataset, frame: int) -> FileDataset:
    broken = copy.deepcopy(ds)
    fragments = list(generate_frames(broken.PixelData, number_of_frames=int(broken.NumberOfFrames)))
    cut = fragments[frame - 1][: len(fragments[frame - 1]) // 2]
    fragments[frame - 1] = cut + (b"\0" if len(cut) % 2 else b"")
    broken.PixelData = encapsulate(fragments, has_bot=True)
    return broken


def test_truncated_jpeg_frame_is_named_and_the_video_fails_cleanly(
    library: LoopLibrary, tmp_path: Path
) -> None:
    sop = _store(
        library, _with_broken_frame(echo_loop("A4C", n_frames=8, rows=120, columns=160), 5), tmp_path
    )
    instance, header = library.loop(sop)
    assert library.frame_jpeg(instance, header, 3)[:2] == b"\xff\xd8"
    with pytest.raises(FrameDecodeError, match="frame 5 is a truncated JPEG"):
        library.frame_jpeg(instance, header, 4)
    with pytest.raises(VideoError, match="frame 5"):
        library.make_video(sop)
    assert library.video_status(sop).startswith("failed: frame 5")
    assert not library.video_path(sop).exists()
    assert not list(library.video_dir.glob("*.part"))


def _h264_dicom(
    n_frames: int, frame_time_ms: float, payload: bytes | None = None, b_frames: int = 0
) -> FileDataset:
    ds = echo_loop("A4C", n_frames=n_frames, rows=120, columns=160, frame_time_ms=frame_time_ms)
    ds.decompress(generate_instance_uid=False)
    frames = ds.pixel_array
    if payload is None:
        out = io.BytesIO()
        container = av.open(out, mode="w", format="h264")
        stream = container.add_stream("libx264", rate=Fraction(1000, int(frame_time_ms)))
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.options = {"x264-params": f"bframes={b_frames}"}
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(frame, format="gray").reformat(format="yuv420p")
            ):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        container.close()
        payload = out.getvalue()
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([payload + (b"\0" if len(payload) % 2 else b"")], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = MPEG4_AVC_HIGH
    ds.LossyImageCompression = "01"
    return ds


@pytest.mark.parametrize("b_frames", [0, 2], ids=["copied", "reordered-reencoded"])
def test_encapsulated_h264_plays_with_the_dicom_timing(
    library: LoopLibrary, tmp_path: Path, b_frames: int
) -> None:
    sop = _store(library, _h264_dicom(12, 40.0, b_frames=b_frames), tmp_path)
    info = library.loop_info(sop)
    assert info["video"]["encapsulated"] and info["frames_url"] is None
    instance, header = library.loop(sop)
    with pytest.raises(LoopError, match="encapsulated video"):
        library.frame_jpeg(instance, header, 0)
    times, frames, _ = read_mp4_frames(library.make_video(sop).read_bytes())
    assert len(frames) == 12
    assert times == pytest.approx([40.0 * i for i in range(12)], abs=0.05)


def test_video_with_fewer_pictures_than_it_claims_is_refused(library: LoopLibrary, tmp_path: Path) -> None:
    ds = _h264_dicom(12, 40.0)
    ds.NumberOfFrames = 20
    sop = _store(library, ds, tmp_path)
    with pytest.raises(VideoError, match="holds 12 pictures, NumberOfFrames says 20"):
        library.make_video(sop)


def test_fake_video_is_refused_with_a_reason(library: LoopLibrary, tmp_path: Path) -> None:
    fake = _h264_dicom(4, 40.0, payload=b"this is not an H.264 stream at all" * 64)
    sop = _store(library, fake, tmp_path)
    with pytest.raises(VideoError, match=r"H\.264"):
        library.make_video(sop)
    assert "H.264" in library.video_status(sop)


def test_uncompressed_loop_frames_are_rendered_to_jpeg(library: LoopLibrary, tmp_path: Path) -> None:
    ds = echo_loop(
        "PLAX", n_frames=4, rows=120, columns=160, colour=True, transfer_syntax_uid=ExplicitVRLittleEndian
    )
    sop = _store(library, ds, tmp_path)
    instance, header = library.loop(sop)
    jpeg = library.frame_jpeg(instance, header, 2)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert _psnr(ds.pixel_array[2], decoded) >= 35.0


def test_encapsulated_mpeg2_is_reencoded_as_h264(library: LoopLibrary, tmp_path: Path) -> None:
    ds = _h264_dicom(10, 40.0)
    frames = echo_loop("A4C", n_frames=10, rows=120, columns=160, frame_time_ms=40.0).pixel_array
    out = io.BytesIO()
    container = av.open(out, mode="w", format="mpeg2video")
    stream = container.add_stream("mpeg2video", rate=25)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    for frame in frames:
        for packet in stream.encode(
            av.VideoFrame.from_ndarray(frame, format="gray").reformat(format="yuv420p")
        ):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    payload = out.getvalue()
    ds.PixelData = encapsulate([payload + (b"\0" if len(payload) % 2 else b"")], has_bot=False)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile / Main Level
    sop = _store(library, ds, tmp_path)
    data = library.make_video(sop).read_bytes()
    times, decoded, _ = read_mp4_frames(data)
    assert len(decoded) == 10 and times == pytest.approx([40.0 * i for i in range(10)], abs=0.05)
    container = av.open(io.BytesIO(data), format="mp4")
    assert container.streams.video[0].codec_context.name == "h264"
    container.close()


def test_angiography_loop_calibrated_by_the_shared_pixel_spacing_rules(
    library: LoopLibrary, tmp_path: Path
) -> None:
    xa = echo_loop("A4C", n_frames=4, rows=100, columns=120, instance_number=7)
    xa.SOPClassUID = xa.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.12.1")
    xa.Modality = "XA"
    del xa.SequenceOfUltrasoundRegions
    xa.ImagerPixelSpacing = [0.2, 0.2]
    xa.EstimatedRadiographicMagnificationFactor = 1.25
    sop = _store(library, xa, tmp_path)
    info = library.loop_info(sop)
    (region,) = info["regions"]
    assert region["spatial_format"] == "projection" and region["delta"] == pytest.approx([0.016, 0.016])
    assert "patient plane" in region["data_type"]
    distance = caliper_distance(library.frame_regions(*library.loop(sop))[0], (10, 20), (110, 20))
    assert (distance.value, distance.unit) == (pytest.approx(16.0), "mm")  # 0.2 mm / 1.25 per pixel
    bare = echo_loop("A4C", n_frames=4, rows=100, columns=120, instance_number=8)
    bare.SOPClassUID = bare.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.12.1")
    bare.Modality = "XA"
    del bare.SequenceOfUltrasoundRegions
    assert library.loop_info(_store(library, bare, tmp_path))["regions"] == []  # pixels, never a guess
