"""What a loop is in time and space: frame timing, ultrasound regions, the ECG it carries.

Frame timing precedence (first usable source wins; each skipped source is reported):

1. the attribute FrameIncrementPointer names, when it is FrameTimeVector or FrameTime;
2. FrameTimeVector (0018,1065): per-frame increments, the first one 0 — variable timing;
3. FrameTime (0018,1063): the acquisition interval in ms;
4. CineRate (0018,0040): preferred playback frames per second;
5. RecommendedDisplayFrameRate (0008,2144): frames per second;
6. the default, 30 frames per second, flagged ``timing_source == "default"``.

A value that is absent, zero, negative, not a number, or a vector of the wrong length
is not usable. Acquisition timing (1–3) comes before playback hints (4–5) because a
cardiologist needs the loop at the speed the heart moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from server.imaging.calibration import dicom_calibrations

DEFAULT_FPS = 30.0
FRAME_TIME_TAG = 0x00181063
FRAME_TIME_VECTOR_TAG = 0x00181065

# PS3.3 C.8.5.5.1.1: Physical Units X/Y Direction
PHYSICAL_UNITS = {
    0: "",
    1: "%",
    2: "dB",
    3: "cm",
    4: "s",
    5: "Hz",
    6: "dB/s",
    7: "cm/s",
    8: "cm2",
    9: "cm2/s",
    10: "cm3",
    11: "cm3/s",
    12: "deg",
}
SPATIAL_FORMATS = {0: "none", 1: "2D", 2: "M-mode", 3: "spectral", 4: "waveform", 5: "graphics"}
DATA_TYPES = {
    0: "none",
    1: "tissue",
    2: "colour flow",
    3: "PW spectral Doppler",
    4: "CW spectral Doppler",
    5: "Doppler mean trace",
    6: "Doppler mode trace",
    7: "Doppler max trace",
    8: "volume trace",
    10: "ECG trace",
    11: "pulse trace",
    12: "phonocardiogram trace",
}


@dataclass(frozen=True)
class FrameTiming:
    """Start time of every frame (ms from the first), how long each shows, and where that came from."""

    times_ms: tuple[float, ...]
    durations_ms: tuple[float, ...]
    source: str  # FrameTimeVector | FrameTime | CineRate | RecommendedDisplayFrameRate | default
    warnings: tuple[str, ...] = ()

    @property
    def duration_ms(self) -> float:
        return self.times_ms[-1] + self.durations_ms[-1] if self.times_ms else 0.0

    @property
    def fps(self) -> float:
        return 1000.0 * len(self.times_ms) / self.duration_ms if self.duration_ms else 0.0


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _from_vector(header: Dataset, frames: int) -> FrameTiming | str:
    raw = header.get("FrameTimeVector")
    if raw is None:
        return "FrameTimeVector absent"
    values = [float(v) for v in (raw if isinstance(raw, list | tuple) or hasattr(raw, "__len__") else [raw])]
    if len(values) != frames:
        return f"FrameTimeVector has {len(values)} values for {frames} frames"
    increments = values[1:]
    if any(not math.isfinite(v) or v <= 0 for v in increments):
        return "FrameTimeVector has zero, negative or non-numeric increments"
    times = tuple(float(t) for t in np.cumsum([0.0, *increments]))
    last = increments[-1] if increments else 1000.0 / DEFAULT_FPS
    return FrameTiming(times, (*increments, last), "FrameTimeVector")


def _uniform(interval_ms: float, frames: int, source: str, warnings: list[str]) -> FrameTiming:
    return FrameTiming(
        tuple(i * interval_ms for i in range(frames)), (interval_ms,) * frames, source, tuple(warnings)
    )


def frame_timing(header: Dataset, frames: int) -> FrameTiming:
    """Per-frame timing of a loop by the precedence in this module's docstring."""
    frames = max(int(frames), 1)
    warnings: list[str] = []
    pointer = header.get("FrameIncrementPointer")
    pointers = [int(p) for p in (pointer if isinstance(pointer, list) else [pointer])] if pointer else []
    order = ["vector", "time"]
    if FRAME_TIME_TAG in pointers and FRAME_TIME_VECTOR_TAG not in pointers:
        order = ["time", "vector"]
    for source in order:
        if source == "vector":
            result = _from_vector(header, frames)
            if isinstance(result, FrameTiming):
                return FrameTiming(result.times_ms, result.durations_ms, result.source, tuple(warnings))
            if "absent" not in result or FRAME_TIME_VECTOR_TAG in pointers:
                warnings.append(result)
        else:
            value = _positive(header.get("FrameTime"))
            if value is not None:
                return _uniform(value, frames, "FrameTime", warnings)
            if "FrameTime" in header or FRAME_TIME_TAG in pointers:
                warnings.append(f"FrameTime {header.get('FrameTime')!r} is not a positive number")
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(header.get(keyword))
        if rate is not None:
            return _uniform(1000.0 / rate, frames, keyword, warnings)
        if keyword in header:
            warnings.append(f"{keyword} {header.get(keyword)!r} is not a positive number")
    warnings.append(f"no usable frame timing; played at the default {DEFAULT_FPS:g} frames/s")
    return _uniform(1000.0 / DEFAULT_FPS, frames, "default", warnings)


@dataclass(frozen=True)
class UltrasoundRegion:
    """One SequenceOfUltrasoundRegions item: a pixel rectangle and its physical scale."""

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: str
    data_type: str
    units_x: str
    units_y: str
    delta_x: float
    delta_y: float
    reference_x0: int = 0
    reference_y0: int = 0
    reference_value_x: float = 0.0
    reference_value_y: float = 0.0
    physical_delta_y: float = 0.0  # signed: negative when values grow upwards (Doppler velocities)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 + 1 and self.y0 <= y <= self.y1 + 1

    def as_json(self) -> dict[str, Any]:
        return {
            "bounds": [self.x0, self.y0, self.x1, self.y1],
            "spatial_format": self.spatial_format,
            "data_type": self.data_type,
            "units": [self.units_x, self.units_y],
            "delta": [self.delta_x, self.delta_y],
            "reference_pixel": [self.reference_x0, self.reference_y0],
            "reference_value": [self.reference_value_x, self.reference_value_y],
            "physical_delta_y": self.physical_delta_y,
        }

    def value_y(self, y: float) -> float:
        """The physical value on the y axis at image row `y` (a velocity in a spectral region): the
        reference pixel's value plus signed deltas from its row. The reference pixel is relative to
        the region's top-left corner (PS3.3 C.8.5.5.1.16), not the image origin."""
        delta = self.physical_delta_y or self.delta_y
        return self.reference_value_y + (y - self.y0 - self.reference_y0) * delta

    def value_x(self, x: float) -> float:
        """The physical value on the x axis at image column `x` (a time in an M-mode/Doppler region)."""
        return self.reference_value_x + (x - self.x0 - self.reference_x0) * self.delta_x


def ultrasound_regions(header: Dataset) -> list[UltrasoundRegion]:
    """The calibrated regions; an item without a positive delta in both directions is left out."""
    return _regions_of(header.get("SequenceOfUltrasoundRegions", []))


def _regions_of(items: Any) -> list[UltrasoundRegion]:
    regions = []
    for item in items:
        dx, dy = (
            _positive(item.get("PhysicalDeltaX")),
            _positive(abs(float(item.get("PhysicalDeltaY", 0) or 0))),
        )
        if dx is None or dy is None:
            continue
        regions.append(
            UltrasoundRegion(
                x0=int(item.get("RegionLocationMinX0", 0)),
                y0=int(item.get("RegionLocationMinY0", 0)),
                x1=int(item.get("RegionLocationMaxX1", 0)),
                y1=int(item.get("RegionLocationMaxY1", 0)),
                spatial_format=SPATIAL_FORMATS.get(int(item.get("RegionSpatialFormat", 0)), "other"),
                data_type=DATA_TYPES.get(int(item.get("RegionDataType", 0)), "other"),
                units_x=PHYSICAL_UNITS.get(int(item.get("PhysicalUnitsXDirection", 0)), ""),
                units_y=PHYSICAL_UNITS.get(int(item.get("PhysicalUnitsYDirection", 0)), ""),
                delta_x=dx,
                delta_y=dy,
                reference_x0=int(item.get("ReferencePixelX0", 0) or 0),
                reference_y0=int(item.get("ReferencePixelY0", 0) or 0),
                reference_value_x=float(item.get("ReferencePixelPhysicalValueX", 0) or 0),
                reference_value_y=float(item.get("ReferencePixelPhysicalValueY", 0) or 0),
                physical_delta_y=float(item.get("PhysicalDeltaY", 0) or 0),
            )
        )
    return regions


def _functional_group_regions(item: Dataset) -> Any | None:
    """SequenceOfUltrasoundRegions in one functional-groups item: directly, or one level down in
    a functional group macro sequence (where vendors that put it per frame place it)."""
    if "SequenceOfUltrasoundRegions" in item:
        return item.SequenceOfUltrasoundRegions
    for element in item:
        if element.VR == "SQ":
            for inner in element.value:
                if "SequenceOfUltrasoundRegions" in inner:
                    return inner.SequenceOfUltrasoundRegions
    return None


def frame_regions(header: Dataset, frames: int) -> list[list[UltrasoundRegion]]:
    """The calibrated regions of every frame of a multi-frame image: a frame's own regions from
    PerFrameFunctionalGroupsSequence when it has them, else the shared functional groups', else
    the image's SequenceOfUltrasoundRegions (the same for every frame)."""
    common: Any = header.get("SequenceOfUltrasoundRegions", [])
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        common = _functional_group_regions(shared[0]) or common
    base = _regions_of(common)
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        return [base] * max(frames, 1)
    out: list[list[UltrasoundRegion]] = []
    for item in per_frame:
        own = _functional_group_regions(item)
        out.append(_regions_of(own) if own is not None else base)
    return out


def region_sets(per_frame: list[list[UltrasoundRegion]]) -> tuple[list[list[UltrasoundRegion]], list[int]]:
    """The distinct region sets of a loop in first-use order and each frame's index into them:
    the loop JSON sends each set once however many frames share it."""
    sets: list[list[UltrasoundRegion]] = []
    index: list[int] = []
    for regions in per_frame:
        if regions not in sets:
            sets.append(regions)
        index.append(sets.index(regions))
    return sets, index


def projection_region(header: Dataset, rows: int, columns: int) -> UltrasoundRegion | None:
    """An angiogram's calibration as one whole-image region, from the core's one set of pixel-spacing
    rules (server.imaging.calibration: patient plane preferred, detector plane flagged)."""
    active = dicom_calibrations(header).active
    if not active.calibrated or active.row_spacing_mm is None or active.column_spacing_mm is None:
        return None
    return UltrasoundRegion(
        x0=0,
        y0=0,
        x1=columns - 1,
        y1=rows - 1,
        spatial_format="projection",
        data_type=f"{active.source.value} ({active.plane.value} plane)",
        units_x="cm",
        units_y="cm",
        delta_x=active.column_spacing_mm / 10.0,
        delta_y=active.row_spacing_mm / 10.0,
    )


@dataclass(frozen=True)
class Distance:
    """A caliper: value and unit, or pixels when no calibrated region holds both ends."""

    value: float
    unit: str  # "mm" | "px" | "s" | "cm/s" ...
    calibrated: bool
    region: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def caliper_distance(
    regions: list[UltrasoundRegion], p: tuple[float, float], q: tuple[float, float]
) -> Distance:
    """Distance between two pixel points. Both ends must lie in the same region whose axes are both
    cm (2D); in an M-mode/Doppler region (x in s) the time and the y difference are reported
    separately. Anything else stays in pixels: never a made-up mm."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    for index, region in enumerate(regions):
        if not (region.contains(*p) and region.contains(*q)):
            continue
        if region.units_x == "cm" and region.units_y == "cm":
            mm = 10.0 * math.hypot(dx * region.delta_x, dy * region.delta_y)
            return Distance(mm, "mm", True, index)
        if region.units_x == "s" and region.units_y:
            seconds = abs(dx) * region.delta_x
            along_y = abs(dy) * region.delta_y
            return Distance(seconds * 1000.0, "ms", True, index, {"y": along_y, "y_unit": region.units_y})
    return Distance(math.hypot(dx, dy), "px", False)


def point_value(regions: list[UltrasoundRegion], p: tuple[float, float]) -> Distance:
    """The value a single caliper point reads in a spectral Doppler or waveform region (x in s):
    the velocity (or frequency) of its row against the region's baseline. Outside such a region a
    point has no value: unit "" and not calibrated."""
    for index, region in enumerate(regions):
        if region.contains(*p) and region.units_x == "s" and region.units_y in ("cm/s", "Hz"):
            return Distance(
                region.value_y(p[1]), region.units_y, True, index, {"time_s": region.value_x(p[0])}
            )
    return Distance(0.0, "", False)


def polygon_area(regions: list[UltrasoundRegion], points: list[tuple[float, float]]) -> Distance:
    """Shoelace area; cm² when every vertex is in one 2D region calibrated in cm, else px²."""
    twice = 0.0
    for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]], strict=True):
        twice += x0 * y1 - x1 * y0
    pixels = abs(twice) / 2.0
    for index, region in enumerate(regions):
        if region.units_x == region.units_y == "cm" and all(region.contains(*pt) for pt in points):
            return Distance(pixels * region.delta_x * region.delta_y, "cm2", True, index)
    return Distance(pixels, "px2", False)


def to_mm(
    regions: list[UltrasoundRegion], points: list[tuple[float, float]]
) -> list[tuple[float, float]] | None:
    """Pixel points to mm in the region (2D, cm) that holds them all; None when there is none."""
    for region in regions:
        if region.units_x == region.units_y == "cm" and all(region.contains(*pt) for pt in points):
            return [(x * region.delta_x * 10.0, y * region.delta_y * 10.0) for x, y in points]
    return None


@dataclass(frozen=True)
class EcgTrace:
    """One ECG lead, in mV, with its time axis relative to the loop's first frame."""

    label: str
    sampling_hz: float
    offset_ms: float
    samples_mv: np.ndarray
    r_waves_ms: tuple[float, ...]
    source: str = "WaveformSequence"
    unit: str = "mV"  # a curve whose y axis is not in volts keeps its own unit (samples unscaled)


def _channel_mv(group: Dataset, data: np.ndarray, channel: int) -> tuple[str, np.ndarray]:
    definition = group.ChannelDefinitionSequence[channel]
    sensitivity = float(definition.get("ChannelSensitivity", 1) or 1)
    correction = float(definition.get("ChannelSensitivityCorrectionFactor", 1) or 1)
    baseline = float(definition.get("ChannelBaseline", 0) or 0)
    units = definition.get("ChannelSensitivityUnitsSequence")
    unit = str(units[0].CodeValue) if units else "uV"
    to_mv = {"uV": 0.001, "mV": 1.0, "V": 1000.0}.get(unit, 0.001)
    values = (data[:, channel].astype(np.float64) * sensitivity * correction + baseline) * to_mv
    source = definition.get("ChannelSourceSequence")
    label = str(definition.get("ChannelLabel", "")) or (
        str(source[0].CodeMeaning) if source else f"{channel + 1}"
    )
    return label, values


def waveform_channels(group: Dataset) -> tuple[float, float, list[tuple[str, np.ndarray]]]:
    """(sampling Hz, time offset ms, [(label, mV samples)]) of one multiplex group."""
    channels = int(group.NumberOfWaveformChannels)
    samples = int(group.NumberOfWaveformSamples)
    bits = int(group.WaveformBitsAllocated)
    kind = str(group.WaveformSampleInterpretation)
    dtype = {("SS", 16): "<i2", ("US", 16): "<u2", ("SB", 8): "i1", ("UB", 8): "u1"}.get((kind, bits))
    if dtype is None:
        raise ValueError(f"waveform samples {kind} {bits}-bit are not supported")
    raw = np.frombuffer(bytes(group.WaveformData), dtype=dtype)
    if raw.size < channels * samples:
        raise ValueError(f"waveform data holds {raw.size} samples, expected {channels * samples}")
    data = raw[: channels * samples].reshape(samples, channels)
    return (
        float(group.SamplingFrequency),
        float(group.get("MultiplexGroupTimeOffset", 0) or 0),
        [_channel_mv(group, data, c) for c in range(channels)],
    )


def r_waves(samples_mv: np.ndarray, sampling_hz: float) -> tuple[float, ...]:
    """R-peak times (ms): local maxima above 60 % of the tallest, at least 250 ms apart."""
    if samples_mv.size < 3:
        return ()
    centred = samples_mv - np.median(samples_mv)
    threshold = 0.6 * float(centred.max())
    if threshold <= 0:
        return ()
    refractory = int(0.25 * sampling_hz)
    peaks: list[int] = []
    candidates = (
        np.flatnonzero(
            (centred[1:-1] >= threshold) & (centred[1:-1] >= centred[:-2]) & (centred[1:-1] > centred[2:])
        )
        + 1
    )
    for index in candidates:
        if peaks and index - peaks[-1] < refractory:
            if centred[index] > centred[peaks[-1]]:
                peaks[-1] = int(index)
            continue
        peaks.append(int(index))
    return tuple(1000.0 * p / sampling_hz for p in peaks)


# Retired Curve module (PS3.3-2004 C.10.2): repeating groups 50xx, xx even, 00..1E.
CURVE_GROUPS = tuple(range(0x5000, 0x5020, 2))
CURVE_VALUE_TYPES = {0: "u2", 1: "i2", 2: "f4", 3: "f8", 4: "i4"}  # DataValueRepresentation
CURVE_TIME_UNITS_MS = {"SEC": 1000.0, "MILS": 1.0, "MSEC": 1.0, "MS": 1.0}  # AxisUnits of x
CURVE_VOLT_UNITS_MV = {"MILV": 1.0, "MV": 1.0, "MICV": 0.001, "UV": 0.001, "VOLT": 1000.0, "V": 1000.0}


class CurveError(ValueError):
    """A curve in group 50xx that says it is an ECG but cannot be read; the message says why."""


def _curve(header: Dataset, group: int, keyword_element: int) -> Any:
    element = header.get((group << 16) | keyword_element)
    return None if element is None else element.value


def curve_ecg_samples(header: Dataset, group: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(times ms, values, y unit) of the ECG curve in repeating group `group`, None when that group
    holds no ECG. Data values interleave the dimensions point by point; a dimension the Curve Data
    Descriptor marks as interval-spaced (0) is not stored but runs from Coordinate Start Value by
    Coordinate Step Value. x must be time (SEC or MILS): an ECG with no time axis is not placed."""
    kind = _curve(header, group, 0x0020)
    if kind is None or str(kind).strip().upper() != "ECG":
        return None
    data = _curve(header, group, 0x3000)
    if data is None:
        raise CurveError(f"curve {group:04X} says ECG but has no CurveData")
    try:
        dimensions = int(_curve(header, group, 0x0005) or 1)
        points = int(_curve(header, group, 0x0010) or 0)
        representation = int(_curve(header, group, 0x0103) or 0)
    except (TypeError, ValueError) as exc:
        raise CurveError(f"curve {group:04X}: {exc}") from exc
    if dimensions not in (1, 2) or points < 2:
        raise CurveError(f"curve {group:04X}: {dimensions} dimensions, {points} points")
    kind_code = CURVE_VALUE_TYPES.get(representation)
    if kind_code is None:
        raise CurveError(f"curve {group:04X}: DataValueRepresentation {representation} is not defined")
    units = [str(u).strip().upper() for u in _as_list(_curve(header, group, 0x0030))]
    units += [""] * (2 - len(units))
    descriptor = [int(v) == 0 for v in _as_list(_curve(header, group, 0x0110))]
    # 1-D: the values are y and time is interval-spaced; 2-D: the descriptor says, else both stored
    spaced = [True, False] if dimensions == 1 else [*descriptor, False, False][:2]
    starts = _as_floats(_curve(header, group, 0x0112))
    steps = _as_floats(_curve(header, group, 0x0114))
    stored = [not s for s in spaced]
    order = "<" if getattr(header, "is_little_endian", True) is not False else ">"
    values = np.frombuffer(bytes(data), dtype=order + kind_code).astype(np.float64)
    width = sum(stored)
    if width == 0 or values.size < points * width:
        raise CurveError(
            f"curve {group:04X}: CurveData holds {values.size} values, expected {points * width}"
        )
    values = values[: points * width].reshape(points, width)
    axes: list[np.ndarray] = []
    column = 0
    spaced_index = 0
    for dim in range(2):
        if stored[dim]:
            axes.append(values[:, column])
            column += 1
        else:
            if spaced_index >= len(steps) or not steps[spaced_index]:
                raise CurveError(
                    f"curve {group:04X}: an interval-spaced axis needs Coordinate Start/Step Value"
                )
            start = starts[spaced_index] if spaced_index < len(starts) else 0.0
            axes.append(start + steps[spaced_index] * np.arange(points, dtype=np.float64))
            spaced_index += 1
    to_ms = CURVE_TIME_UNITS_MS.get(units[0])
    if to_ms is None:
        raise CurveError(f"curve {group:04X}: x axis unit {units[0] or 'absent'!r} is not time (SEC or MILS)")
    y_scale = CURVE_VOLT_UNITS_MV.get(units[1])
    return axes[0] * to_ms, axes[1] * (y_scale if y_scale is not None else 1.0), "mV" if y_scale else units[1]


def _as_list(value: Any) -> list[Any]:
    """A DICOM value as a list: multi-valued elements are sequences (MultiValue), single ones not."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _as_floats(value: Any) -> list[float]:
    return [float(v) for v in _as_list(value)]


def curve_ecg(header: Dataset) -> EcgTrace | None:
    """The first readable ECG in the retired curve groups 5000-501E, resampled to its median
    sampling interval (2-D curves may list their times), or None."""
    for group in CURVE_GROUPS:
        try:
            found = curve_ecg_samples(header, group)
        except CurveError:
            continue
        if found is None:
            continue
        times, values, unit = found
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        step = float(np.median(np.diff(times)))
        if not math.isfinite(step) or step <= 0:
            continue
        uniform = np.arange(times[0], times[-1] + step / 2, step)
        samples = np.interp(uniform, times, values)
        hz = 1000.0 / step
        label = str(_curve(header, group, 0x2500) or _curve(header, group, 0x0022) or "ECG")
        offset = float(times[0])
        return EcgTrace(
            label,
            hz,
            offset,
            samples,
            tuple(t + offset for t in r_waves(samples, hz)),
            f"CurveData {group:04X}",
            unit if unit and unit != "NONE" else "arbitrary",
        )
    return None


def loop_ecg(header: Dataset) -> EcgTrace | None:
    """The ECG a loop carries: its WaveformSequence (lead II preferred), else the retired curve
    data (group 50xx, TypeOfData ECG) that older ultrasound objects use; None without either."""
    trace = _waveform_ecg(header)
    return trace if trace is not None else curve_ecg(header)


def _waveform_ecg(header: Dataset) -> EcgTrace | None:
    for group in header.get("WaveformSequence", []):
        try:
            hz, offset, channels = waveform_channels(group)
        except (AttributeError, ValueError, KeyError):
            continue
        if not channels:
            continue
        label, values = next(((lb, v) for lb, v in channels if lb.upper() in ("II", "LEAD II")), channels[0])
        return EcgTrace(label, hz, offset, values, tuple(t + offset for t in r_waves(values, hz)))
    return None
