"""Loops as fragmented H.264 MP4 through PyAV, with the DICOM's exact frame timing.

Why each choice:

- Timestamps on a 90 kHz clock from the per-frame times (FrameTimeVector included), and
  every packet's duration set, so the last frame shows for its own time too.
- Fragmented MP4 (empty moov, a fragment at least every 250 ms) so a browser starts
  playing while the file still streams.
- One keyframe per loop (up to 600 frames), no scene-cut keyframes, no B-frames (so the
  first frame is at time 0 in fragmented MP4, which has no edit list): a loop has no
  scene cuts, and stepping uses the JPEG frames, not the video.
- RGB → Y'CbCr with the BT.601 matrix into limited ("tv") range, and the stream
  tagged so (SPS VUI and colr box): players that assume full range show it darker.
- Input and output are Python file objects with forced formats: FFmpeg opens no
  protocol and no file by name.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import av
import numpy as np

from modules.cardiology.cine import FrameTiming
from server.isolation import NativeWorkerFailed, media_pool

CLOCK_HZ = 90_000
TIME_BASE = Fraction(1, CLOCK_HZ)
MUXER_OPTIONS = {
    "movflags": "empty_moov+default_base_moof+frag_keyframe",
    "frag_duration": "250000",  # µs
    "video_track_timescale": str(CLOCK_HZ),
}
STREAM_TIMEOUT = 300.0  # seconds: FFmpeg still busy on one stored loop after this is stuck


class VideoError(ValueError):
    """A loop that cannot be made into a video; the message names the cause."""


@dataclass(frozen=True)
class VideoStats:
    frames: int
    duration_ms: float
    encode_seconds: float
    remuxed: bool = False

    @property
    def times_real_time(self) -> float:
        return self.duration_ms / 1000.0 / self.encode_seconds if self.encode_seconds else float("inf")


def _even(array: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column when odd."""
    rows, cols = array.shape[:2]
    if rows % 2:
        array = np.concatenate([array, array[-1:]], axis=0)
    if cols % 2:
        array = np.concatenate([array, array[:, -1:]], axis=1)
    return np.ascontiguousarray(array)


# 8-bit full range ("JPEG") to limited range ("tv", BT.601): luma 0..255 → 16..235, chroma → 16..240.
_LUMA_TV = ((np.arange(256, dtype=np.uint32) * 219 + 127) // 255 + 16).astype(np.uint8)
_CHROMA_TV = ((np.arange(256, dtype=np.uint32) * 224 + 127) // 255 + 16).astype(np.uint8)


def _to_yuv420p(array: np.ndarray) -> av.VideoFrame:
    """Display pixels to limited-range BT.601 Y'CbCr 4:2:0. Grey needs no matrix: Y' is a
    rescale and chroma is neutral, done by table in numpy (15× faster than swscale's range path)."""
    if array.ndim == 2:
        rows, cols = array.shape
        yuv = np.empty((rows * 3 // 2, cols), np.uint8)
        np.take(_LUMA_TV, array, out=yuv[:rows])
        yuv[rows:] = 128
        return av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    source = av.VideoFrame.from_ndarray(array, format="rgb24")
    return source.reformat(
        format="yuv420p", src_color_range="JPEG", dst_colorspace="ITU601", dst_color_range="MPEG"
    )


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    """One plane of a decoded picture as an array view (no copy; rows padded to line_size)."""
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def _halve_rows(plane: np.ndarray) -> np.ndarray:
    return ((plane[0::2].astype(np.uint16) + plane[1::2] + 1) >> 1).astype(np.uint8)


def _halve_columns(plane: np.ndarray) -> np.ndarray:
    return ((plane[:, 0::2].astype(np.uint16) + plane[:, 1::2] + 1) >> 1).astype(np.uint8)


def _stretch(grey: np.ndarray) -> np.ndarray:
    """What ``server.imaging.rendering.to_display`` does to 8-bit MONOCHROME2 without modality
    LUT, VOI LUT or window: the frame's own minimum..maximum to 0..255 (identity for 0..255)."""
    low, high = int(grey.min()), int(grey.max())
    if (low, high) == (0, 255):
        return grey
    if high == low:
        return np.zeros_like(grey)
    out = (grey.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _jpeg_picture_to_yuv420p(picture: av.VideoFrame, stretch_grey: bool) -> av.VideoFrame:
    """A picture from FFmpeg's JPEG decoder to limited-range 4:2:0, from its own planes.

    A colour JPEG is already BT.601 Y'CbCr (full range): only the range changes and the chroma
    is averaged down to 4:2:0, with no RGB round trip. Grey is the luma table. Anything else
    (odd sizes, Adobe RGB/CMYK JPEGs) goes through RGB like decoded frames do."""
    name = picture.format.name
    if name == "gray":
        grey = _plane(picture, 0)
        return _to_yuv420p(_even(_stretch(grey) if stretch_grey else grey))
    width, height = picture.width, picture.height
    if name not in ("yuvj420p", "yuvj422p", "yuvj444p") or width % 2 or height % 2:
        return _to_yuv420p(_even(picture.to_ndarray(format="rgb24")))
    out = av.VideoFrame(width, height, "yuv420p")
    np.take(_LUMA_TV, _plane(picture, 0), out=_plane(out, 0))
    for index in (1, 2):
        chroma = _plane(picture, index)
        if name != "yuvj420p":
            chroma = _halve_rows(chroma)
        if name == "yuvj444p":
            chroma = _halve_columns(chroma)
        np.take(_CHROMA_TV, chroma, out=_plane(out, index))
    return out


def read_ahead(frames: Iterable[np.ndarray], depth: int = 8) -> Iterator[np.ndarray]:
    """Produce frames in a second thread so decoding overlaps encoding (x264 and the JPEG
    decoders release the GIL); an error in the producer is raised here, in order."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    return
                slots.put(("frame", frame))
            slots.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="tessera-cine-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def _ticks(ms: float) -> int:
    return round(ms * CLOCK_HZ / 1000.0)


def _checked_pictures(frames: Iterable[np.ndarray]) -> Iterator[av.VideoFrame]:
    for index, array in enumerate(frames):
        if array.dtype != np.uint8:
            raise VideoError(f"frame {index + 1} is {array.dtype}, not 8-bit display pixels")
        yield _to_yuv420p(_even(array))


def encode_mp4(
    frames: Iterable[np.ndarray],
    timing: FrameTiming,
    out: BinaryIO,
    *,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 2,
) -> VideoStats:
    """Encode 8-bit frames (H×W grey or H×W×3 RGB) as fragmented H.264 MP4 into `out`."""
    return encode_pictures(_checked_pictures(frames), timing, out, crf=crf, preset=preset, threads=threads)


def encode_pictures(
    pictures: Iterable[av.VideoFrame],
    timing: FrameTiming,
    out: BinaryIO,
    *,
    crf: int = 18,
    preset: str = "veryfast",
    threads: int = 2,
) -> VideoStats:
    """Encode limited-range yuv420p pictures (even sizes) as fragmented H.264 MP4 into `out`."""
    started = time.perf_counter()
    count = len(timing.times_ms)
    container = av.open(out, mode="w", format="mp4", options=MUXER_OPTIONS)
    stream = None
    durations: dict[int, int] = {}
    written = 0
    try:
        for index, frame in enumerate(pictures):
            if index >= count:
                raise VideoError(f"more frames than the timing describes ({count})")
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(round(timing.fps * 1000), 1000) or 30)
                stream.width, stream.height = frame.width, frame.height
                stream.pix_fmt = "yuv420p"
                stream.time_base = TIME_BASE
                stream.codec_context.time_base = TIME_BASE
                stream.codec_context.color_range = 1  # MPEG / tv / limited
                stream.codec_context.colorspace = 6  # SMPTE 170M (BT.601)
                stream.codec_context.color_primaries = 6
                stream.codec_context.color_trc = 6
                stream.codec_context.thread_count = threads
                keyint = max(1, min(count, 600))
                stream.codec_context.options = {
                    "preset": preset,
                    "crf": str(crf),
                    "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0",
                }
            elif (frame.width, frame.height) != (stream.width, stream.height):
                raise VideoError(
                    f"frame {index + 1} is {frame.width}×{frame.height}, frame 1 {stream.width}×{stream.height}"
                )
            frame.pts = _ticks(timing.times_ms[index])
            frame.time_base = TIME_BASE
            durations[frame.pts] = max(1, _ticks(timing.durations_ms[index]))
            for packet in stream.encode(frame):
                packet.duration = durations.get(packet.pts or 0, 0)
                container.mux(packet)
            written += 1
        if stream is None:
            raise VideoError("the loop has no frames")
        for packet in stream.encode(None):
            packet.duration = durations.get(packet.pts or 0, 0)
            container.mux(packet)
    finally:
        container.close()
    if written != count:
        raise VideoError(f"got {written} frames, the loop has {count}")
    return VideoStats(written, timing.duration_ms, time.perf_counter() - started)


def decode_jpeg_pictures(
    jpegs: Iterable[bytes], size: tuple[int, int], stretch_grey: bool
) -> Iterator[av.VideoFrame]:
    """Baseline JPEG frames through FFmpeg's own decoder, straight to yuv420p pictures (no RGB
    and no pydicom on the way). Every frame must decode to one picture of `size` (width,
    height); a frame that does not is named."""
    decoder = av.CodecContext.create(
        "mjpeg", "r"
    )  # as tolerant as Pillow: markers and SOF are checked before
    for index, data in enumerate(jpegs):
        try:
            pictures = decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            raise VideoError(f"frame {index + 1} cannot be decoded: {exc}") from exc
        if len(pictures) != 1 or (pictures[0].width, pictures[0].height) != size:
            raise VideoError(f"frame {index + 1} does not decode to one {size[0]}×{size[1]} picture")
        yield _jpeg_picture_to_yuv420p(pictures[0], stretch_grey)


def jpeg_frames_to_mp4(
    jpegs: list[bytes], size: tuple[int, int], stretch_grey: bool, timing: FrameTiming, path: str
) -> VideoStats:
    """Stored baseline JPEG frames into an MP4 file at ``path`` (runs in the media worker).
    The decoder runs a frame ahead in a second thread while x264 encodes on its own two."""
    with open(path, "wb") as out:
        return encode_pictures(read_ahead(decode_jpeg_pictures(jpegs, size, stretch_grey)), timing, out)


def confined_jpeg_to_mp4(
    jpegs: list[bytes], size: tuple[int, int], stretch_grey: bool, timing: FrameTiming, path: str
) -> VideoStats:
    """FFmpeg decodes the stored (untrusted) JPEG frames in the media worker, as it does stored
    video streams: a crash fails this loop's video, not the server. It also takes the work off
    the server process, which decoding through pydicom would hold (and its GIL) for most of it."""
    try:
        return media_pool.run(
            jpeg_frames_to_mp4, jpegs, size, stretch_grey, timing, path, timeout=STREAM_TIMEOUT
        )
    except NativeWorkerFailed as exc:
        raise VideoError(f"the loop's JPEG frames cannot be processed: {exc}") from exc


def remux_h264(elementary_stream: bytes, timing: FrameTiming, out: BinaryIO) -> VideoStats:
    """An H.264 elementary stream (DICOM MPEG-4 AVC) into fragmented MP4.

    A raw stream carries no timestamps, so the pictures are decoded once to learn their
    presentation order. Without reordering (no B-frames: what ultrasound encoders send)
    the packets are copied as they are, stamped with the DICOM timing; with reordering
    they are re-encoded, because fragmented MP4 would otherwise shift the first frame.
    """
    started = time.perf_counter()
    try:
        source = av.open(io.BytesIO(elementary_stream), mode="r", format="h264")
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"the encapsulated video is not an H.264 stream: {exc}") from exc
    try:  # the source stays open while its stream is the output's template
        if not source.streams.video:
            raise VideoError("the encapsulated video holds no video stream")
        in_stream = source.streams.video[0]
        if not in_stream.codec_context.width:
            raise VideoError("the encapsulated video is not a decodable H.264 stream (no picture size found)")
        packets = [packet for packet in source.demux(in_stream) if packet.size]
        payloads = [(bytes(packet), packet.is_keyframe) for packet in packets]
        decoder = av.CodecContext.create("h264", "r")
        order: list[int] = []
        for index, packet in enumerate(packets):
            packet.pts = packet.dts = index
            order.extend(int(frame.pts) for frame in decoder.decode(packet))
        order.extend(int(frame.pts) for frame in decoder.decode(None))
        if not order:
            raise VideoError("the encapsulated video holds no decodable H.264 pictures")
        if len(order) != len(timing.times_ms):
            raise VideoError(
                f"the encapsulated video holds {len(order)} pictures, NumberOfFrames says {len(timing.times_ms)}"
            )
        if order != list(range(len(payloads))):
            stats = encode_mp4(decode_video_frames(elementary_stream, "h264"), timing, out)
            return VideoStats(stats.frames, stats.duration_ms, time.perf_counter() - started)
        container = av.open(out, mode="w", format="mp4", options=MUXER_OPTIONS)
        try:
            out_stream = container.add_stream_from_template(in_stream)
            out_stream.time_base = TIME_BASE
            for index, (payload, keyframe) in enumerate(payloads):
                packet = av.Packet(payload)
                packet.stream = out_stream
                packet.is_keyframe = keyframe
                packet.time_base = TIME_BASE
                packet.pts = packet.dts = _ticks(timing.times_ms[index])
                packet.duration = max(1, _ticks(timing.durations_ms[index]))
                container.mux(packet)
        finally:
            container.close()
    except av.FFmpegError as exc:
        raise VideoError(f"the encapsulated video cannot be read as H.264: {exc}") from exc
    finally:
        source.close()
    return VideoStats(len(payloads), timing.duration_ms, time.perf_counter() - started, remuxed=True)


def decode_video_frames(data: bytes, container_format: str) -> Iterator[np.ndarray]:
    """RGB frames of an encapsulated MPEG-2/HEVC stream, for re-encoding as H.264."""
    try:
        source = av.open(io.BytesIO(data), mode="r", format=container_format)
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"the encapsulated video is not {container_format}: {exc}") from exc
    try:
        for frame in source.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise VideoError(f"the encapsulated video cannot be decoded as {container_format}: {exc}") from exc
    finally:
        source.close()


def video_stream_to_mp4(stream: bytes, container_format: str, timing: FrameTiming, path: str) -> VideoStats:
    """An encapsulated video stream into an MP4 file at ``path`` (runs in the media worker)."""
    with open(path, "wb") as out:
        if container_format == "h264":
            return remux_h264(stream, timing, out)
        return encode_mp4(decode_video_frames(stream, container_format), timing, out)


def confined_stream_to_mp4(
    stream: bytes, container_format: str, timing: FrameTiming, path: str
) -> VideoStats:
    """FFmpeg demuxing and decoding a stored (untrusted) video stream runs in a worker process,
    so a crash in it fails this loop's video and not the server (``server.isolation``).
    Encoding loops from decoded frames stays in-process: FFmpeg then reads only our own arrays."""
    try:
        return media_pool.run(
            video_stream_to_mp4, stream, container_format, timing, path, timeout=STREAM_TIMEOUT
        )
    except NativeWorkerFailed as exc:
        raise VideoError(f"the encapsulated video cannot be processed: {exc}") from exc


def read_mp4_frames(data: bytes) -> tuple[list[float], list[np.ndarray], dict[str, int]]:
    """Decode an MP4 back: presentation times (ms), RGB frames, colour tags. For tests and benchmarks."""
    container = av.open(io.BytesIO(data), mode="r", format="mp4")
    try:
        stream = container.streams.video[0]
        times, frames = [], []
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base * 1000))
            frames.append(frame.to_ndarray(format="rgb24"))
        context = stream.codec_context
        tags = {
            "color_range": int(context.color_range),
            "colorspace": int(context.colorspace),
            "keyframes": 0,
        }
        container.seek(0)
        tags["keyframes"] = sum(1 for p in container.demux(stream) if p.is_keyframe)
        return times, frames, tags
    finally:
        container.close()
