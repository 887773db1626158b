"""Loops of the archive as the viewer needs them: timing JSON, JPEG frames, ECG, cached MP4.

All methods block (file and SQL access, decoding, encoding); handlers call them through
the executor. Videos are made on their own single worker so that encoding never takes
the threads that answer frame requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from sqlalchemy import select

from modules.cardiology.cine import (
    FrameTiming,
    UltrasoundRegion,
    frame_regions,
    frame_timing,
    loop_ecg,
    projection_region,
    region_sets,
    waveform_channels,
)
from modules.cardiology.groups import (
    AcquisitionGroup,
    acquisition_groups,
    parse_group_id,
)
from modules.cardiology.video import (
    VideoError,
    VideoStats,
    confined_jpeg_to_mp4,
    confined_stream_to_mp4,
    encode_mp4,
    read_ahead,
)
from server.archive.archive import Archive, StoredInstance
from server.archive.models import Series, Study
from server.archive.pixeldata import H264_SYNTAXES, HEVC_SYNTAXES, VIDEO_SYNTAXES
from server.imaging.codecs import CodestreamMismatch, FrameGeometry, check_codestream
from server.imaging.frames import FrameDecodeError, HeaderCache, decode_frame, read_frame_bytes
from server.imaging.rendering import encode_image, to_display

log = logging.getLogger(__name__)

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
XA_IMAGE = "1.2.840.10008.5.1.4.1.1.12.1"
ENHANCED_XA_IMAGE = "1.2.840.10008.5.1.4.1.1.12.1.1"
TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
LOOP_CLASSES = frozenset({US_MULTIFRAME, US_IMAGE, XA_IMAGE, ENHANCED_XA_IMAGE})
WAVEFORM_CLASSES = frozenset({TWELVE_LEAD_ECG, GENERAL_ECG})
CARDIAC_BODY_PARTS = frozenset({"", "HEART", "CHEST", "THORAX"})
JPEG_PASSTHROUGH_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50"})
JPEG_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
)


class LoopError(ValueError):
    """A loop request that cannot be answered; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def is_cardiac_loop(sop_class_uid: str, body_part: str, description: str = "") -> bool:
    """US of the heart (or unlabelled US), and every XA: what this module plays as loops."""
    if sop_class_uid in (XA_IMAGE, ENHANCED_XA_IMAGE):
        return True
    return sop_class_uid in LOOP_CLASSES and (
        body_part.upper() in CARDIAC_BODY_PARTS or "ECHO" in description.upper()
    )


def check_jpeg_codestream(data: bytes, frame: int) -> bytes:
    """A stored JPEG frame with its start and end markers, else an error naming the frame (1-based)."""
    end = len(data)
    while end > 0 and data[end - 1] == 0:  # DICOM pads fragments to even length
        end -= 1
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise FrameDecodeError(f"frame {frame + 1} is not a JPEG codestream (no start-of-image marker)")
    if data[end - 2 : end] != b"\xff\xd9":
        raise FrameDecodeError(f"frame {frame + 1} is a truncated JPEG codestream (no end-of-image marker)")
    return data[:end]


@dataclass(frozen=True)
class MeasuredFrame:
    """What a caliper on one frame of a loop refers to: the image it was made on (and the frame
    within it), and the regions that calibrate that frame."""

    instance: StoredInstance
    header: Dataset
    frame_number: int | None  # 1-based within a multi-frame image; None for a single-frame image
    regions: list[UltrasoundRegion]


@dataclass(frozen=True)
class LoopFrames:
    """Every frame of a loop (multi-frame image or acquisition group) for measuring."""

    loop_id: str
    study_instance_uid: str
    frames: list[MeasuredFrame]

    def frame(self, number: int) -> MeasuredFrame:
        """The 1-based frame `number`, else a LoopError naming the valid range."""
        if not 1 <= number <= len(self.frames):
            raise LoopError(422, f"frame {number} is outside 1..{len(self.frames)} of loop {self.loop_id}")
        return self.frames[number - 1]


class LoopLibrary:
    """Timing, frames, ECG and videos of the archive's loops; videos cached under derived_dir."""

    def __init__(self, archive: Archive, headers: HeaderCache, derived_dir: Path) -> None:
        self.archive = archive
        self.headers = headers
        self.video_dir = derived_dir / "cardiology" / "video"
        self.video_dir.mkdir(parents=True, exist_ok=True)
        self.video_worker = ThreadPoolExecutor(1, thread_name_prefix="tessera-cine")
        self._pending: dict[str, Future[Path]] = {}
        self._lock = threading.Lock()

    # -- lookup ---------------------------------------------------------------------------------

    def instance(self, sop_uid: str) -> tuple[StoredInstance, Dataset]:
        instance = self.archive.instance_by_uid(sop_uid)
        if instance is None:
            raise LoopError(404, f"no instance {sop_uid} in the archive")
        return instance, self.headers.get(instance)

    def loop(self, sop_uid: str) -> tuple[StoredInstance, Dataset]:
        """A multi-frame loop's instance (an acquisition group is several: see loop_frames)."""
        if parse_group_id(sop_uid) is not None:
            raise LoopError(409, f"{sop_uid} is a loop of single-frame images, not one instance")
        instance, header = self.instance(sop_uid)
        if instance.sop_class_uid not in LOOP_CLASSES:
            raise LoopError(409, f"instance {sop_uid} is not an ultrasound or angiography image")
        return instance, header

    def study_of_series(self, series_uid: str) -> str | None:
        """The study holding a series: group ids name only the series, to stay short and stable."""
        query = (
            select(Study.study_instance_uid)
            .join(Series, Series.study_pk == Study.id)
            .where(Series.series_instance_uid == series_uid)
        )
        with self.archive.sessions() as session:
            return session.execute(query).scalars().first()

    def series_groups(self, study_uid: str, series_uid: str) -> list[AcquisitionGroup]:
        stored = self.archive.stored_instances(study_uid, series_uid, with_frame_index=True)
        items = [(i, self.headers.get(i)) for i in stored]
        return acquisition_groups(series_uid, items)

    def group(self, loop_id: str) -> AcquisitionGroup:
        """The acquisition group a ``group/{series}/{n}`` id names (404 when there is none)."""
        parsed = parse_group_id(loop_id)
        if parsed is None:
            raise LoopError(404, f"{loop_id!r} is not a loop id")
        series_uid, number = parsed
        study_uid = self.study_of_series(series_uid)
        groups = self.series_groups(study_uid, series_uid) if study_uid else []
        if not 1 <= number <= len(groups):
            raise LoopError(
                404, f"series {series_uid} has no acquisition group {number} ({len(groups)} groups)"
            )
        return groups[number - 1]

    def check_loop(self, loop_id: str) -> None:
        """404/409 for an id that is not a loop, before any work is started for it."""
        if parse_group_id(loop_id) is not None:
            self.group(loop_id)
        else:
            self.loop(loop_id)

    def frame_source(self, loop_id: str) -> tuple[int, Callable[[int], bytes]]:
        """(frame count, 0-based frame → JPEG) for a multi-frame loop or an acquisition group,
        so the frame routes serve both the same way."""
        if parse_group_id(loop_id) is not None:
            group = self.group(loop_id)

            def member_jpeg(frame: int) -> bytes:
                if not 0 <= frame < len(group.members):
                    raise LoopError(404, f"frame {frame + 1} is outside 1..{len(group.members)}")
                member, header = group.members[frame]
                try:
                    return self.frame_jpeg(member, header, 0)
                except FrameDecodeError as exc:  # name the image, not "frame 1" of it
                    raise FrameDecodeError(f"frame {frame + 1} ({member.sop_instance_uid}): {exc}") from exc

            return len(group.members), member_jpeg
        instance, header = self.loop(loop_id)
        return instance.number_of_frames, lambda frame: self.frame_jpeg(instance, header, frame)

    def frame_regions(self, instance: StoredInstance, header: Dataset) -> list[list[UltrasoundRegion]]:
        """Calibrated regions of every frame: SequenceOfUltrasoundRegions for ultrasound (per frame
        where the functional groups define it); for angiography the pixel spacing as one
        whole-image region. Never a guess: no calibration, no region."""
        frames = max(instance.number_of_frames, 1)
        if instance.sop_class_uid in (XA_IMAGE, ENHANCED_XA_IMAGE):
            region = projection_region(header, instance.rows or 0, instance.columns or 0)
            return [[region] if region is not None else []] * frames
        return frame_regions(header, frames)

    def loop_frames(self, loop_id: str) -> LoopFrames:
        """Every frame of a loop with the image it comes from and its own regions: what the
        measurements, the SR and the export with calipers need, for both kinds of loop."""
        if parse_group_id(loop_id) is not None:
            group = self.group(loop_id)
            per_frame = group.frame_regions()
            frames = [
                MeasuredFrame(member, header, None, regions)
                for (member, header), regions in zip(group.members, per_frame, strict=True)
            ]
            study = group.members[0][0].study_instance_uid
        else:
            instance, header = self.loop(loop_id)
            frames = [
                MeasuredFrame(instance, header, n, regions)
                for n, regions in enumerate(self.frame_regions(instance, header), start=1)
            ]
            study = instance.study_instance_uid
        if not study:
            raise LoopError(409, f"loop {loop_id} has no study")
        return LoopFrames(loop_id, study, frames)

    def display_frames(
        self, loop_id: str
    ) -> tuple[StoredInstance, Dataset, Iterator[np.ndarray], FrameTiming]:
        """(first instance, its header, display frames in play order, timing) of either kind of loop."""
        if parse_group_id(loop_id) is not None:
            group = self.group(loop_id)
            first, header = group.members[0]
            frames = (self.display_frame(m, h, 0) for m, h in group.members)
            return first, header, frames, group.timing
        instance, header = self.loop(loop_id)
        return instance, header, self.iter_display_frames(instance, header), self.timing(instance, header)

    @staticmethod
    def regions_json(per_frame: list[list[UltrasoundRegion]]) -> dict[str, Any]:
        """The loop JSON's regions: those of frame 1, and when frames differ, each distinct set once
        (``region_sets``) with every frame's index into them (``frame_region_set``)."""
        sets, index = region_sets(per_frame)
        varies = len(sets) > 1
        return {
            "regions": [r.as_json() for r in sets[0]] if sets else [],
            "region_sets": [[r.as_json() for r in regions] for regions in sets] if varies else None,
            "frame_region_set": index if varies else None,
        }

    def timing(self, instance: StoredInstance, header: Dataset) -> FrameTiming:
        return frame_timing(header, instance.number_of_frames)

    # -- JSON --------------------------------------------------------------------------------------

    def loop_info(self, sop_uid: str) -> dict[str, Any]:
        if parse_group_id(sop_uid) is not None:
            return self.group_info(sop_uid)
        instance, header = self.loop(sop_uid)
        timing = self.timing(instance, header)
        ecg = loop_ecg(header)
        base = f"/cardiology/loops/{sop_uid}"
        video = instance.transfer_syntax_uid in VIDEO_SYNTAXES
        return {
            "sop_instance_uid": sop_uid,
            "study_instance_uid": instance.study_instance_uid,
            "series_instance_uid": instance.series_instance_uid,
            "sop_class_uid": instance.sop_class_uid,
            "rows": instance.rows,
            "columns": instance.columns,
            "number_of_frames": instance.number_of_frames,
            "frame_times_ms": [round(t, 3) for t in timing.times_ms],
            "frame_durations_ms": [round(d, 3) for d in timing.durations_ms],
            "duration_ms": round(timing.duration_ms, 3),
            "fps": round(timing.fps, 3),
            "timing_source": timing.source,
            "timing_warnings": list(timing.warnings),
            **self.regions_json(self.frame_regions(instance, header)),
            "ecg": {
                "present": ecg is not None,
                "url": f"{base}/ecg" if ecg else None,
                "lead": ecg.label if ecg else None,
                "source": ecg.source if ecg else None,
                "r_waves_ms": [round(t, 1) for t in ecg.r_waves_ms] if ecg else [],
            },
            "view": str(header.get("ViewName", "")),
            "stage": {"number": int(header.StageNumber), "name": str(header.get("StageName", ""))}
            if "StageNumber" in header
            else None,
            "heart_rate": int(header.HeartRate) if header.get("HeartRate") else None,
            "video": {"url": f"{base}.mp4", "status": self.video_status(sop_uid), "encapsulated": video},
            "frame_url": None if video else f"{base}/frames/{{n}}.jpg",
            "frames_url": None if video else f"{base}/frames",
        }

    def group_info(self, loop_id: str) -> dict[str, Any]:
        """The loop JSON of an acquisition group: the same keys as a multi-frame loop's, plus
        the member images in play order. Single images carry no loop ECG here."""
        group = self.group(loop_id)
        first, header = group.members[0]
        timing = group.timing
        base = f"/cardiology/loops/{loop_id}"
        return {
            "sop_instance_uid": loop_id,
            "study_instance_uid": first.study_instance_uid,
            "series_instance_uid": first.series_instance_uid,
            "sop_class_uid": first.sop_class_uid,
            "rows": first.rows,
            "columns": first.columns,
            "number_of_frames": len(group.members),
            "frame_times_ms": [round(t, 3) for t in timing.times_ms],
            "frame_durations_ms": [round(d, 3) for d in timing.durations_ms],
            "duration_ms": round(timing.duration_ms, 3),
            "fps": round(timing.fps, 3),
            "timing_source": timing.source,
            "timing_warnings": list(timing.warnings),
            **self.regions_json(group.frame_regions()),
            "ecg": {"present": False, "url": None, "lead": None, "source": None, "r_waves_ms": []},
            "view": str(header.get("ViewName", "")),
            "stage": {"number": int(header.StageNumber), "name": str(header.get("StageName", ""))}
            if "StageNumber" in header
            else None,
            "heart_rate": int(header.HeartRate) if header.get("HeartRate") else None,
            "video": {"url": f"{base}.mp4", "status": self.video_status(loop_id), "encapsulated": False},
            "frame_url": f"{base}/frames/{{n}}.jpg",
            "frames_url": f"{base}/frames",
            "group": {
                "members": [m.sop_instance_uid for m, _ in group.members],
                "acquisition_number": str(header.get("AcquisitionNumber", "") or ""),
            },
        }

    def ecg_info(self, sop_uid: str) -> dict[str, Any]:
        if parse_group_id(sop_uid) is not None:
            self.group(sop_uid)
            raise LoopError(404, f"loop {sop_uid} carries no ECG")
        _, header = self.loop(sop_uid)
        ecg = loop_ecg(header)
        if ecg is None:
            raise LoopError(404, f"instance {sop_uid} carries no ECG")
        return {
            "lead": ecg.label,
            "source": ecg.source,
            "unit": ecg.unit,
            "sampling_hz": ecg.sampling_hz,
            "offset_ms": ecg.offset_ms,
            "samples_mv": np.round(ecg.samples_mv, 4).tolist(),
            "r_waves_ms": [round(t, 1) for t in ecg.r_waves_ms],
        }

    def waveform_info(self, sop_uid: str) -> dict[str, Any]:
        """Every channel of a 12-lead / general ECG, in mV."""
        instance, _ = self.instance(sop_uid)
        if instance.sop_class_uid not in WAVEFORM_CLASSES:
            raise LoopError(409, f"instance {sop_uid} is not an ECG waveform")
        ds = dcmread(instance.path)  # waveform data sits outside the cached header
        groups = ds.get("WaveformSequence", [])
        if not groups:
            raise LoopError(422, f"ECG {sop_uid} has no WaveformSequence")
        try:
            hz, offset, channels = waveform_channels(groups[0])
        except (AttributeError, ValueError, KeyError) as exc:
            raise LoopError(422, f"ECG {sop_uid} cannot be read: {exc}") from exc
        return {
            "sop_instance_uid": sop_uid,
            "sampling_hz": hz,
            "offset_ms": offset,
            "duration_ms": 1000.0 * len(channels[0][1]) / hz if channels else 0,
            "channels": [{"label": label, "samples_mv": np.round(v, 4).tolist()} for label, v in channels],
        }

    def first_loop_id(self, study_uid: str, series_uid: str) -> str:
        """The loop the viewer shows first: the series' first loop, else the study's first."""
        loops = self.study_index(study_uid)["loops"]
        first = next(
            (e for e in loops if e["series_instance_uid"] == series_uid), loops[0] if loops else None
        )
        if first is None:
            raise LoopError(404, f"study {study_uid} has no loops")
        return str(first["sop_instance_uid"])

    def study_index(self, study_uid: str, series_uid: str = "") -> dict[str, Any]:
        """The study's loops (with stage/view for the stress layout) and ECG waveforms; with
        `series_uid`, also the loop JSON of the loop the viewer shows first (``first``), which
        saves the viewer a round trip before frame 1."""
        loops: list[dict[str, Any]] = []
        waveforms: list[dict[str, Any]] = []
        instances = self.archive.stored_instances(study_uid)
        grouped: dict[str, AcquisitionGroup] = {}  # member SOP → its group
        for still_series in dict.fromkeys(
            i.series_instance_uid for i in instances if i.sop_class_uid == US_IMAGE
        ):
            items = [(i, self.headers.get(i)) for i in instances if i.series_instance_uid == still_series]
            for group in acquisition_groups(still_series, items):
                grouped.update((m.sop_instance_uid, group) for m, _ in group.members)
        for instance in instances:
            header = self.headers.get(instance)
            owner = grouped.get(instance.sop_instance_uid)
            if owner is not None:
                if owner.members[0][0].sop_instance_uid != instance.sop_instance_uid:
                    continue  # the group is listed once, at its first image
                entry_header = owner.members[0][1]
                if is_cardiac_loop(
                    US_IMAGE,
                    str(entry_header.get("BodyPartExamined", "")),
                    str(entry_header.get("SeriesDescription", "")),
                ):
                    loops.append(
                        {
                            "sop_instance_uid": owner.loop_id,
                            "series_instance_uid": instance.series_instance_uid,
                            "number_of_frames": len(owner.members),
                            "group": True,
                            "view": str(entry_header.get("ViewName", "")),
                            "stage_number": int(entry_header.StageNumber)
                            if "StageNumber" in entry_header
                            else None,
                            "stage_name": str(entry_header.get("StageName", "")),
                            "series_number": int(entry_header.get("SeriesNumber", 0) or 0),
                            "instance_number": int(entry_header.get("InstanceNumber", 0) or 0),
                        }
                    )
                continue
            entry = {
                "sop_instance_uid": instance.sop_instance_uid,
                "series_instance_uid": instance.series_instance_uid,
                "number_of_frames": instance.number_of_frames,
            }
            if instance.sop_class_uid in WAVEFORM_CLASSES:
                waveforms.append(entry)
            elif is_cardiac_loop(
                instance.sop_class_uid,
                str(header.get("BodyPartExamined", "")),
                str(header.get("SeriesDescription", "")),
            ):
                entry.update(
                    view=str(header.get("ViewName", "")),
                    stage_number=int(header.StageNumber) if "StageNumber" in header else None,
                    stage_name=str(header.get("StageName", "")),
                    series_number=int(header.get("SeriesNumber", 0) or 0),
                    instance_number=int(header.get("InstanceNumber", 0) or 0),
                )
                loops.append(entry)
        index: dict[str, Any] = {"study_instance_uid": study_uid, "loops": loops, "waveforms": waveforms}
        if series_uid and loops:
            first = next((e for e in loops if e["series_instance_uid"] == series_uid), loops[0])
            with contextlib.suppress(LoopError):  # the viewer asks again and shows the problem in its cell
                index["first"] = self.loop_info(str(first["sop_instance_uid"]))
        return index

    # -- frames ------------------------------------------------------------------------------------

    def frame_jpeg(self, instance: StoredInstance, header: Dataset, frame: int) -> bytes:
        """A 0-based frame as JPEG: stored baseline JPEG passed through, anything else rendered."""
        if instance.transfer_syntax_uid in VIDEO_SYNTAXES:
            raise LoopError(409, "frames of an encapsulated video are played from its MP4")
        if not 0 <= frame < instance.number_of_frames:
            raise LoopError(404, f"frame {frame + 1} is outside 1..{instance.number_of_frames}")
        photometric = instance.photometric_interpretation.upper()
        if instance.transfer_syntax_uid in JPEG_PASSTHROUGH_SYNTAXES and photometric in (
            "MONOCHROME2",
            "YBR_FULL_422",
            "YBR_FULL",
        ):
            return check_jpeg_codestream(read_frame_bytes(instance, frame), frame)
        return encode_image(self.display_frame(instance, header, frame), "image/jpeg", quality=92)

    def display_frame(self, instance: StoredInstance, header: Dataset, frame: int) -> np.ndarray:
        """A 0-based frame as 8-bit display pixels (grey or RGB); corrupt JPEG frames named."""
        if instance.transfer_syntax_uid in JPEG_SYNTAXES and instance.frame_index is not None:
            check_jpeg_codestream(read_frame_bytes(instance, frame), frame)
        return to_display(decode_frame(instance, header, frame), header)

    def iter_display_frames(self, instance: StoredInstance, header: Dataset) -> Iterator[np.ndarray]:
        for frame in range(instance.number_of_frames):
            yield self.display_frame(instance, header, frame)

    # -- video -------------------------------------------------------------------------------------

    def _video_stem(self, loop_id: str) -> str:
        """File name of a loop's video; a group's carries a digest of its members, so an image
        added to the acquisition later gives a new video instead of a stale one."""
        parsed = parse_group_id(loop_id)
        if parsed is None:
            return loop_id
        members = "\\".join(m.sop_instance_uid for m, _ in self.group(loop_id).members)
        digest = hashlib.sha256(members.encode("ascii")).hexdigest()[:16]
        return f"group-{parsed[0]}-{parsed[1]}-{digest}"

    def video_path(self, sop_uid: str) -> Path:
        return self.video_dir / f"{self._video_stem(sop_uid)}.mp4"

    def _error_path(self, sop_uid: str) -> Path:
        return self.video_dir / f"{self._video_stem(sop_uid)}.error"

    def video_status(self, sop_uid: str) -> str:
        if self.video_path(sop_uid).exists():
            return "ready"
        if self._error_path(sop_uid).exists():
            return "failed: " + self._error_path(sop_uid).read_text(encoding="utf-8")
        with self._lock:
            return "pending" if sop_uid in self._pending else "not made"

    def schedule_video(self, sop_uid: str) -> Future[Path]:
        """Make the MP4 on the video worker (once, however often it is asked)."""
        with self._lock:
            future = self._pending.get(sop_uid)
            if future is None:
                future = self.video_worker.submit(self.make_video, sop_uid)
                self._pending[sop_uid] = future
                future.add_done_callback(lambda _f: self._forget(sop_uid))
            return future

    def _forget(self, sop_uid: str) -> None:
        with self._lock:
            self._pending.pop(sop_uid, None)

    def make_video(self, sop_uid: str) -> Path:
        """The cached MP4, made now if needed (blocking); a failure is remembered with its reason."""
        path = self.video_path(sop_uid)
        if path.exists():
            return path
        mirror, name = self.archive.blobs.mirror, f"cardiology/video/{path.name}"  # docs/deployment.md
        if mirror is not None and mirror.fetch_product_file(name, path):
            return path  # made by another machine
        error = self._error_path(sop_uid)
        if error.exists():
            raise VideoError(error.read_text(encoding="utf-8"))
        try:
            if parse_group_id(sop_uid) is not None:
                first, header, frames, timing = self.display_frames(sop_uid)
                self.write_video(first, header, path, frames=frames, timing=timing)
            else:
                instance, header = self.loop(sop_uid)
                self.write_video(instance, header, path)
        except (VideoError, FrameDecodeError, LoopError, ValueError) as exc:
            error.write_text(str(exc), encoding="utf-8")
            log.warning("no video for %s: %s", sop_uid, exc)
            raise VideoError(str(exc)) from exc
        if mirror is not None:
            mirror.publish_product_file(name, path)
        return path

    def write_video(
        self,
        instance: StoredInstance,
        header: Dataset,
        path: Path,
        frames: Iterator[np.ndarray] | None = None,
        timing: FrameTiming | None = None,
    ) -> VideoStats:
        """Encode (or remux) to a temporary file beside `path`, then rename: never a half video.
        `frames` and `timing` stand in for the instance's own (an acquisition group's images)."""
        timing = timing or self.timing(instance, header)
        fd, temp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                syntax = instance.transfer_syntax_uid
                if frames is None and syntax in VIDEO_SYNTAXES:
                    stream = self._encapsulated_stream(instance)
                    container = "hevc" if syntax in HEVC_SYNTAXES else "mpegvideo"
                    if syntax in H264_SYNTAXES:
                        container = "h264"
                    stats = confined_stream_to_mp4(stream, container, timing, temp)
                elif frames is None and (stretch_grey := self._jpeg_video_path(instance, header)) is not None:
                    jpegs = [
                        self._checked_jpeg(instance, header, n) for n in range(instance.number_of_frames)
                    ]
                    size = (int(header.Columns), int(header.Rows))
                    stats = confined_jpeg_to_mp4(jpegs, size, stretch_grey, timing, temp)
                else:
                    stats = encode_mp4(
                        read_ahead(frames or self.iter_display_frames(instance, header)), timing, out
                    )
            os.replace(temp, path)
            return stats
        finally:
            Path(temp).unlink(missing_ok=True)

    @staticmethod
    def _jpeg_video_path(instance: StoredInstance, header: Dataset) -> bool | None:
        """Whether the MP4 can be made from the stored baseline JPEG frames by FFmpeg's decoder
        (``confined_jpeg_to_mp4``) and show what ``display_frame`` shows: None if not, else
        whether grey frames take ``to_display``'s per-frame min..max stretch. Colour 8-bit is
        shown as decoded; grey with a modality LUT, VOI LUT or window takes the general path."""
        if instance.transfer_syntax_uid not in JPEG_PASSTHROUGH_SYNTAXES or instance.frame_index is None:
            return None
        if int(header.get("BitsAllocated", 0)) != 8 or int(header.get("BitsStored", 8)) != 8:
            return None
        photometric = str(header.get("PhotometricInterpretation", "")).upper()
        samples = int(header.get("SamplesPerPixel", 1))
        if photometric in ("YBR_FULL_422", "YBR_FULL") and samples == 3:
            return False
        if photometric != "MONOCHROME2" or samples != 1:
            return None
        if any(k in header for k in ("ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth")):
            return None
        slope = float(header.get("RescaleSlope", 1) or 1)
        intercept = float(header.get("RescaleIntercept", 0) or 0)
        return True if (slope, intercept) == (1.0, 0.0) else None

    @staticmethod
    def _checked_jpeg(instance: StoredInstance, header: Dataset, frame: int) -> bytes:
        """A stored frame for FFmpeg's JPEG decoder, checked here first as ``decode_frame`` does
        (markers, and a SOF that agrees with the data set), so a bad frame is named."""
        data = check_jpeg_codestream(read_frame_bytes(instance, frame), frame)
        geometry = FrameGeometry(
            int(header.Rows), int(header.Columns), int(header.get("SamplesPerPixel", 1)), 8
        )
        try:
            check_codestream(str(instance.transfer_syntax_uid), data, geometry)
        except CodestreamMismatch as exc:
            raise FrameDecodeError(f"frame {frame + 1} is refused: {exc}") from exc
        return data

    @staticmethod
    def _encapsulated_stream(instance: StoredInstance) -> bytes:
        ds = dcmread(instance.path)
        try:  # the first item is the Basic Offset Table, not part of the stream
            return b"".join(list(generate_fragments(ds.PixelData))[1:])
        except (ValueError, AttributeError) as exc:
            raise VideoError(f"the encapsulated video's pixel data is malformed: {exc}") from exc

    def close(self) -> None:
        self.video_worker.shutdown(wait=False, cancel_futures=True)
