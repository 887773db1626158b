"""Single-frame ultrasound images of one acquisition played as one loop.

Some echo machines (and many archives after a conversion) store a cine as a run of
Ultrasound Image Storage instances, one frame each. Played one by one they are useless;
grouped they are a loop like any multi-frame one. The rules (documented in
docs/cardiology.md) are deliberately strict, because a wrong group shows a heart that
never beat that way:

* same series, same acquisition: AcquisitionDateTime (else AcquisitionDate +
  AcquisitionTime) and AcquisitionNumber equal — an image with neither is never grouped;
* same geometry: Rows and Columns. The calibrated regions may change from image to image
  (the sonographer changes depth mid-acquisition); each frame keeps its own image's
  regions and calipers use the regions of the frame they are drawn on;
* ordered by InstanceNumber, then content date/time, then SOP Instance UID;
* timing: FrameTime when the first image has a positive one (uniform), else the deltas
  between content times when every image has one and they strictly increase, else the
  module's default rate with a warning.

A group is addressed as ``group/{SeriesInstanceUID}/{n}``: ``n`` counts the series' groups
(of two images or more) from 1 in the order of their first image.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from modules.cardiology.cine import DEFAULT_FPS, FrameTiming, UltrasoundRegion, _positive, ultrasound_regions
from server.archive.archive import StoredInstance

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
GROUP_PREFIX = "group/"


@dataclass(frozen=True)
class AcquisitionGroup:
    """Single-frame images of one acquisition, in play order, with the loop's timing."""

    series_instance_uid: str
    number: int  # 1-based within the series
    members: tuple[tuple[StoredInstance, Dataset], ...]
    timing: FrameTiming

    @property
    def loop_id(self) -> str:
        return group_id(self.series_instance_uid, self.number)

    def frame_regions(self) -> list[list[UltrasoundRegion]]:
        """Each frame's calibrated regions: its own image's SequenceOfUltrasoundRegions."""
        return [ultrasound_regions(header) for _, header in self.members]


def group_id(series_uid: str, number: int) -> str:
    return f"{GROUP_PREFIX}{series_uid}/{number}"


def parse_group_id(loop_id: str) -> tuple[str, int] | None:
    """(series UID, n) of a ``group/{series}/{n}`` id, None for a SOP Instance UID."""
    if not loop_id.startswith(GROUP_PREFIX):
        return None
    series, _, number = loop_id[len(GROUP_PREFIX) :].partition("/")
    if not series or not number.isdigit():
        return None
    return series, int(number)


def _acquisition_key(header: Dataset) -> tuple[str, str] | None:
    when = str(header.get("AcquisitionDateTime", "") or "").strip()
    if not when:
        date = str(header.get("AcquisitionDate", "") or "").strip()
        time = str(header.get("AcquisitionTime", "") or "").strip()
        when = f"{date}{time}" if time else ""
    number = str(header.get("AcquisitionNumber", "") or "").strip()
    if not when and not number:
        return None  # nothing says which acquisition this image belongs to: never guess
    return when, number


def _geometry_key(instance: StoredInstance) -> tuple[int, int]:
    return instance.rows or 0, instance.columns or 0


def content_time_ms(header: Dataset) -> float | None:
    """ContentDate + ContentTime in ms since the epoch (date optional), None when absent or bad."""
    time = str(header.get("ContentTime", "") or "").strip()
    if not time:
        return None
    date = str(header.get("ContentDate", "") or "").strip() or "19700101"
    whole, _, fraction = time.partition(".")
    whole = whole.ljust(6, "0")
    try:
        moment = dt.datetime.strptime(date + whole[:6], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
        micro = int((fraction + "000000")[:6]) if fraction else 0
    except ValueError:
        return None
    return moment.timestamp() * 1000.0 + micro / 1000.0


def _instance_number(header: Dataset) -> int:
    try:
        return int(header.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _order_key(item: tuple[StoredInstance, Dataset]) -> tuple[int, float, str]:
    instance, header = item
    when = content_time_ms(header)
    return _instance_number(header), when if when is not None else float("inf"), instance.sop_instance_uid


def group_timing(headers: Sequence[Dataset]) -> FrameTiming:
    """FrameTime, else content-time deltas, else the default rate (see the module docstring)."""
    frames = len(headers)
    warnings: list[str] = []
    frame_time = _positive(headers[0].get("FrameTime")) if headers else None
    if frame_time is not None:
        return FrameTiming(tuple(i * frame_time for i in range(frames)), (frame_time,) * frames, "FrameTime")
    if headers and "FrameTime" in headers[0]:
        warnings.append(f"FrameTime {headers[0].get('FrameTime')!r} is not a positive number")
    stamps = [content_time_ms(h) for h in headers]
    if frames >= 2 and all(s is not None for s in stamps):
        times = [float(s) - float(stamps[0]) for s in stamps]  # type: ignore[arg-type]
        deltas = [b - a for a, b in itertools.pairwise(times)]
        if all(d > 0 for d in deltas):
            return FrameTiming(tuple(times), (*deltas, deltas[-1]), "ContentTime", tuple(warnings))
        warnings.append("content times do not strictly increase in instance order")
    else:
        warnings.append("not every image has a ContentTime")
    warnings.append(f"no usable frame timing; played at the default {DEFAULT_FPS:g} frames/s")
    interval = 1000.0 / DEFAULT_FPS
    return FrameTiming(
        tuple(i * interval for i in range(frames)), (interval,) * frames, "default", tuple(warnings)
    )


def acquisition_groups(
    series_uid: str, items: Sequence[tuple[StoredInstance, Dataset]]
) -> list[AcquisitionGroup]:
    """The series' groups of two or more single-frame US images, numbered from 1.

    `items` are the series' instances with their headers; anything that is not a
    single-frame Ultrasound Image, or has no acquisition identity, is left alone.
    """
    buckets: dict[tuple[Any, ...], list[tuple[StoredInstance, Dataset]]] = {}
    for instance, header in items:
        if instance.series_instance_uid != series_uid or instance.sop_class_uid != US_IMAGE:
            continue
        if instance.number_of_frames > 1:
            continue
        acquisition = _acquisition_key(header)
        if acquisition is None:
            continue
        buckets.setdefault((*acquisition, *_geometry_key(instance)), []).append((instance, header))
    ordered = [sorted(members, key=_order_key) for members in buckets.values() if len(members) >= 2]
    ordered.sort(key=lambda members: _order_key(members[0]))
    return [
        AcquisitionGroup(series_uid, n, tuple(members), group_timing([h for _, h in members]))
        for n, members in enumerate(ordered, start=1)
    ]
