"""Synthetic cardiology cases with known answers: echo loops, a stress echo, a 12-lead ECG.

The echo phantom is a beating left ventricle shaped as a truncated half prolate
ellipsoid (apex at the top of the sector, mitral plane at the bottom). Its cavity
seen in the apical four-chamber (A4C) view is a half ellipse of half-width ``a``
and length ``L``; in the apical two-chamber (A2C) view the half-width is ``b``.
The true volume is therefore ``2/3·π·a·b·L`` at every instant, so the
end-diastolic and end-systolic volumes, and the ejection fraction, are known
exactly and a method-of-discs measurement can be checked against them.

Every loop carries SequenceOfUltrasoundRegions (cm per pixel), frame timing
(FrameTime, or FrameTimeVector for the variable-timing loop) and a lead II ECG in
a WaveformSequence whose time zero is the first frame (or, like older machines, in
the retired curve group 5000). A spectral Doppler image of mitral inflow has E and A
waves of known peak velocities and timing. UIDs are derived from names, so two runs
write identical files.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    TwelveLeadECGWaveformStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from sample_data.radiology import (
    Patient,
    Study,
    _instance,
    _new_series,
    encode,
    write,
)

__all__ = [
    "ECG_STUDY",
    "ECHO_STUDY",
    "MITRAL_INFLOW",
    "STRESS_STUDY",
    "LVPhantom",
    "MitralInflow",
    "doppler_image",
    "echo_image_sequence",
    "echo_loop",
    "echo_study",
    "legacy_curve_loop",
    "stress_echo_study",
    "twelve_lead_ecg",
    "write_cardiology_demo",
]

PATIENT = Patient("Ramirez^Elena", "TES-0101", "19580722", "F", "ISO_IR 100")
ECHO_STUDY = Study("20250610", "101500", "ACC-2001", "ECHO TTE COMPLETE", "1")
STRESS_STUDY = Study("20250611", "083000", "ACC-2002", "ECHO STRESS EXERCISE", "1")
ECG_STUDY = Study("20250610", "094500", "ACC-2003", "ECG 12 LEAD RESTING", "1")

ECG_SAMPLING_HZ = 500.0
ECG_LEAD_II = ("5.6.3-9-2", "SCPECG", "Lead II")
# SCP-ECG lead codes (CID 3001) in the standard 12-lead order.
TWELVE_LEADS: tuple[tuple[str, str], ...] = (
    ("5.6.3-9-1", "Lead I"),
    ("5.6.3-9-2", "Lead II"),
    ("5.6.3-9-61", "Lead III"),
    ("5.6.3-9-62", "aVR"),
    ("5.6.3-9-63", "aVL"),
    ("5.6.3-9-64", "aVF"),
    ("5.6.3-9-3", "Lead V1"),
    ("5.6.3-9-4", "Lead V2"),
    ("5.6.3-9-5", "Lead V3"),
    ("5.6.3-9-6", "Lead V4"),
    ("5.6.3-9-7", "Lead V5"),
    ("5.6.3-9-8", "Lead V6"),
)
SYSTOLE_FRACTION = 0.35  # end-systole at 35 % of the R-R interval
RELAXATION_FRACTION = 0.45  # back to end-diastolic size by 80 %
R_WAVE_DELAY_MS = 60.0  # every loop starts 60 ms before its first R wave


@dataclass(frozen=True)
class LVPhantom:
    """LV cavity sizes (cm) at end-diastole and end-systole; volumes follow exactly."""

    a_ed_cm: float = 2.5  # A4C half-width at the mitral plane
    b_ed_cm: float = 2.3  # A2C half-width
    length_ed_cm: float = 8.4
    a_es_cm: float = 1.7
    b_es_cm: float = 1.6
    length_es_cm: float = 7.4
    wall_ed_cm: float = 1.0
    wall_es_cm: float = 1.4

    @staticmethod
    def volume_ml(a_cm: float, b_cm: float, length_cm: float) -> float:
        return 2.0 / 3.0 * math.pi * a_cm * b_cm * length_cm

    @property
    def edv_ml(self) -> float:
        return self.volume_ml(self.a_ed_cm, self.b_ed_cm, self.length_ed_cm)

    @property
    def esv_ml(self) -> float:
        return self.volume_ml(self.a_es_cm, self.b_es_cm, self.length_es_cm)

    @property
    def ef_percent(self) -> float:
        return 100.0 * (self.edv_ml - self.esv_ml) / self.edv_ml

    def at(self, contraction: float) -> tuple[float, float, float, float]:
        """(a, b, L, wall) in cm at a contraction from 0 (end-diastole) to 1 (end-systole)."""

        def mix(ed: float, es: float) -> float:
            return ed + (es - ed) * contraction

        return (
            mix(self.a_ed_cm, self.a_es_cm),
            mix(self.b_ed_cm, self.b_es_cm),
            mix(self.length_ed_cm, self.length_es_cm),
            mix(self.wall_ed_cm, self.wall_es_cm),
        )


def contraction_at(t_ms: float, rr_ms: float) -> float:
    """0 at the R wave (end-diastole), 1 at end-systole, smooth in between."""
    phase = ((t_ms - R_WAVE_DELAY_MS) % rr_ms) / rr_ms
    if phase < SYSTOLE_FRACTION:
        return 0.5 - 0.5 * math.cos(math.pi * phase / SYSTOLE_FRACTION)
    if phase < SYSTOLE_FRACTION + RELAXATION_FRACTION:
        return 0.5 + 0.5 * math.cos(math.pi * (phase - SYSTOLE_FRACTION) / RELAXATION_FRACTION)
    return 0.0


def ecg_lead_ii(duration_ms: float, rr_ms: float, sampling_hz: float = ECG_SAMPLING_HZ) -> np.ndarray:
    """Lead II in mV: P, QRS and T waves as Gaussians, R peaks at 60 ms + k·RR."""
    t = np.arange(round(duration_ms * sampling_hz / 1000.0)) * 1000.0 / sampling_hz
    out = np.zeros_like(t)
    waves = ((-160, 25, 0.15), (-25, 8, -0.12), (0, 10, 1.2), (28, 9, -0.3), (280, 45, 0.3))
    beat = R_WAVE_DELAY_MS - rr_ms
    while beat < duration_ms + rr_ms:
        for offset, width, height in waves:
            scale = 1.0 if offset < 100 else rr_ms / 800.0  # the T wave comes earlier at high rates
            out += height * np.exp(-0.5 * ((t - beat - offset * scale) / width) ** 2)
        beat += rr_ms
    return out


def _waveform_item(channels_mv: np.ndarray, sources: list[tuple[str, str, str]]) -> Dataset:
    """One multiplex group, 16-bit signed samples at 1 µV per unit."""
    n_channels, n_samples = channels_mv.shape
    group = Dataset()
    group.MultiplexGroupTimeOffset = 0.0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = n_channels
    group.NumberOfWaveformSamples = n_samples
    group.SamplingFrequency = ECG_SAMPLING_HZ
    group.MultiplexGroupLabel = "ECG"
    definitions = []
    for value, scheme, meaning in sources:
        channel = Dataset()
        source = Dataset()
        source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = value, scheme, meaning
        channel.ChannelSourceSequence = Sequence([source])
        channel.ChannelLabel = meaning.replace("Lead ", "")
        channel.ChannelSensitivity = "1"
        units = Dataset()
        units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "uV", "UCUM", "microvolt"
        channel.ChannelSensitivityUnitsSequence = Sequence([units])
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.ChannelSampleSkew = "0"
        channel.WaveformBitsStored = 16
        channel.FilterLowFrequency = "0.05"
        channel.FilterHighFrequency = "150"
        definitions.append(channel)
    group.ChannelDefinitionSequence = Sequence(definitions)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    samples = np.clip(np.rint(channels_mv * 1000.0), -32768, 32767).astype("<i2")
    group.WaveformData = samples.T.tobytes()  # interleaved: sample 0 of every channel first
    group["WaveformData"].VR = "OW"
    return group


def _curve_ecg(ds: Dataset, samples_mv: np.ndarray, group: int = 0x5000) -> None:
    """Lead II as a retired Curve (PS3.3-2004 C.10.2) in repeating group `group`: two dimensions,
    time interval-spaced from 0 by the sampling interval in ms (MILS), mV values as 32-bit floats."""
    step_ms = round(1000.0 / ECG_SAMPLING_HZ)
    for element, vr, value in (
        (0x0005, "US", 2),  # CurveDimensions
        (0x0010, "US", int(samples_mv.size)),  # NumberOfPoints
        (0x0020, "CS", "ECG"),  # TypeOfData
        (0x0022, "LO", "Lead II"),  # CurveDescription
        (0x0030, "SH", ["MILS", "MILV"]),  # AxisUnits: x ms, y mV
        (0x0103, "US", 2),  # DataValueRepresentation: float
        (0x0110, "US", [0, 1]),  # CurveDataDescriptor: x interval-spaced, y values
        (0x0112, "US", 0),  # CoordinateStartValue (x)
        (0x0114, "US", step_ms),  # CoordinateStepValue (x)
        (0x2500, "LO", "II"),  # CurveLabel
        (0x3000, "OW", samples_mv.astype("<f4").tobytes()),  # CurveData
    ):
        ds.add_new((group << 16) | element, vr, value)


def _sector_mask(rows: int, cols: int) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    angle = np.abs(np.arctan2(x - cols / 2, y + 2))
    return (angle < math.radians(40)) & (np.hypot(x - cols / 2, y + 2) < rows - 2)


def _speckle(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.rayleigh(1.0, (rows, cols))
    for _ in range(2):  # a little spatial correlation, like real speckle
        noise = (noise + np.roll(noise, 1, 0) + np.roll(noise, 1, 1) + np.roll(noise, -1, 1)) / 4
    return noise / noise.mean()


def _cavity_weight(d_norm: np.ndarray, scale_px: float) -> np.ndarray:
    """Anti-aliased inside-ness of an ellipse from its normalised radius (edge at 1)."""
    return np.clip(0.5 - (d_norm - 1.0) * scale_px, 0.0, 1.0)


def render_frame(
    view: str, a: float, b: float, length: float, wall: float, rows: int, cols: int, cm_per_px: float
) -> np.ndarray:
    """Cavity (dark), myocardium (bright) and surrounding tissue of one view, in [0, 1] weights."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64) + 0.5
    y_cm, x_cm = y * cm_per_px, (x - cols / 2) * cm_per_px
    tissue = np.full((rows, cols), 0.35)
    if view in ("A4C", "A2C"):
        half = a if view == "A4C" else b
        apex = 1.0
        base = apex + length
        z = base - y_cm  # height above the mitral plane
        above = z >= 0
        inner = np.hypot(x_cm / half, z / length)
        outer = np.hypot(x_cm / (half + wall), (z + 0.0) / (length + wall))
        cav = np.where(above, _cavity_weight(inner, half / cm_per_px), 0.0)
        myo = np.where(above, _cavity_weight(outer, (half + wall) / cm_per_px), 0.0) - cav
        atrium = _cavity_weight(np.hypot(x_cm / (half * 0.9), (y_cm - base - 1.8) / 1.8), 30)
        cav = np.maximum(cav, atrium * (~above))
    elif view == "PLAX":  # long axis across the image
        cy, cx = 6.0, 0.5
        inner = np.hypot((x_cm - cx) / length * 1.8, (y_cm - cy) / a)
        outer = np.hypot((x_cm - cx) / (length / 1.8 + wall), (y_cm - cy) / (a + wall))
        cav = _cavity_weight(inner, a / cm_per_px)
        myo = _cavity_weight(outer, (a + wall) / cm_per_px) - cav
    else:  # PSAX: a ring
        cy = 6.0
        r = np.hypot(x_cm, y_cm - cy)
        cav = _cavity_weight(r / a, a / cm_per_px)
        myo = _cavity_weight(r / (a + wall), (a + wall) / cm_per_px) - cav
    tissue = tissue * (1 - cav - myo) + 0.85 * myo + 0.04 * cav
    return tissue


def _frame_times(n_frames: int, frame_time_ms: float, variable: bool) -> list[float]:
    if not variable:
        return [i * frame_time_ms for i in range(n_frames)]
    increments = [0.0] + [frame_time_ms * (0.8, 1.0, 1.2)[i % 3] for i in range(n_frames - 1)]
    return list(np.cumsum(increments))


def echo_loop(
    view: str,
    *,
    study: Study = ECHO_STUDY,
    series_number: int = 1,
    instance_number: int = 1,
    phantom: LVPhantom | None = None,
    heart_rate_bpm: float = 75.0,
    n_frames: int = 48,
    frame_time_ms: float = 20.0,
    variable_timing: bool = False,
    rows: int = 300,
    columns: int = 400,
    cm_per_px: float = 0.04,
    colour: bool = False,
    stage: tuple[int, str, int] | None = None,
    transfer_syntax_uid: str = JPEGBaseline8Bit,
    ecg_in_curve: bool = False,
) -> FileDataset:
    """One US multi-frame loop of `view` (A4C, A2C, PLAX, PSAX) with regions, timing and ECG.

    `stage` is (stage number, stage name, number of stages) for stress echo. With
    `ecg_in_curve` the ECG is in the retired curve group 5000 instead of a WaveformSequence.
    """
    phantom = phantom or LVPhantom()
    rr_ms = 60000.0 / heart_rate_bpm
    description = "STRESS ECHO" if stage else "ECHO"
    series = _new_series(PATIENT, study, series_number, "US", description, "HEART")
    ds = _instance(
        UltrasoundMultiFrameImageStorage, PATIENT, study, "ECHO", series, instance_number,
        ["ORIGINAL", "PRIMARY", "CARDIAC", "0001"],
    )  # fmt: skip
    times = _frame_times(n_frames, frame_time_ms, variable_timing)
    mask = _sector_mask(rows, columns)
    speckle = _speckle(rows, columns, seed=instance_number * 7 + series_number)
    frames = np.empty((n_frames, rows, columns), np.uint8)
    for i, t in enumerate(times):
        a, b, length, wall = phantom.at(contraction_at(t, rr_ms))
        weights = render_frame(view, a, b, length, wall, rows, columns, cm_per_px)
        speck = np.roll(speckle, i % 3, axis=1)
        pixels = 255.0 * weights * np.where(weights > 0.1, speck * 0.35 + 0.65, 1.0)
        frames[i] = np.where(mask, np.clip(pixels, 0, 255), 0).astype(np.uint8)

    ds.ImageType = ["ORIGINAL", "PRIMARY", "CARDIAC", "0001"]
    ds.ViewName = view
    ds.HeartRate = round(heart_rate_bpm)
    ds.PreferredPlaybackSequencing = 0
    if variable_timing:
        ds.FrameTimeVector = [float(x) for x in np.diff([0.0, *times])]
        ds.FrameIncrementPointer = Tag(0x0018, 0x1065)
    else:
        ds.FrameTime = frame_time_ms
        ds.FrameIncrementPointer = Tag(0x0018, 0x1063)
        ds.CineRate = round(1000.0 / frame_time_ms)
        ds.RecommendedDisplayFrameRate = round(1000.0 / frame_time_ms)
    ds.TransducerType = "SECTOR_PHASED"
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = columns - 1
    region.RegionLocationMaxY1 = rows - 1
    region.ReferencePixelX0 = columns // 2
    region.ReferencePixelY0 = 0
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.ReferencePixelPhysicalValueX = 0.0
    region.ReferencePixelPhysicalValueY = 0.0
    region.PhysicalDeltaX = cm_per_px
    region.PhysicalDeltaY = cm_per_px
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    if stage is not None:
        number, name, count = stage
        ds.StageNumber, ds.StageName, ds.NumberOfStages = number, name, count
        ds.ViewNumber = (
            ("PLAX", "PSAX", "A4C", "A2C").index(view) + 1 if view in ("PLAX", "PSAX", "A4C", "A2C") else 1
        )
        ds.NumberOfViewsInStage = 4
    duration_ms = times[-1] + (frame_time_ms if not variable_timing else float(np.diff(times)[-1]))
    ecg = ecg_lead_ii(duration_ms, rr_ms)[None, :]
    if ecg_in_curve:
        _curve_ecg(ds, ecg[0])
    else:
        ds.WaveformSequence = Sequence([_waveform_item(ecg, [ECG_LEAD_II])])
    ds.ImageComments = (
        f"LV phantom: EDV {phantom.edv_ml:.1f} ml, ESV {phantom.esv_ml:.1f} ml, EF {phantom.ef_percent:.1f} %"
    )
    if colour:
        rgb = np.repeat(frames[..., None], 3, axis=3)
        rgb[..., 0] = np.clip(rgb[..., 0].astype(np.int16) + 12, 0, 255).astype(np.uint8) * (frames > 0)
        ds.set_pixel_data(rgb, "RGB", 8, generate_instance_uid=False)
    else:
        ds.set_pixel_data(frames, "MONOCHROME2", 8, generate_instance_uid=False)
    if UID(transfer_syntax_uid) == ExplicitVRLittleEndian:
        return ds
    return encode(ds, transfer_syntax_uid)


def echo_study() -> list[FileDataset]:
    """A4C and A2C of one phantom (EF known), and a PLAX in colour with variable frame timing."""
    return [
        echo_loop("A4C", instance_number=1),
        echo_loop("A2C", instance_number=2),
        echo_loop("PLAX", instance_number=3, colour=True, variable_timing=True, n_frames=40),
    ]


def echo_image_sequence(
    *,
    study: Study = ECHO_STUDY,
    series_number: int = 4,
    acquisitions: tuple[tuple[int, str], ...] = ((1, "101812"), (2, "101840")),
    n_frames: int = 12,
    frame_time_ms: float = 40.0,
    with_frame_time: bool = False,
    rows: int = 150,
    columns: int = 200,
    depth_change_at: int | None = None,
    deep_cm_per_px: float = 0.1,
) -> list[FileDataset]:
    """Single-frame Ultrasound Image instances of short A4C acquisitions in one series.

    Some machines (and conversions) store a cine as one image per frame; the viewer groups
    them back into loops. Each (AcquisitionNumber, AcquisitionTime) in `acquisitions` gives
    `n_frames` images, InstanceNumbers running on across the series, ContentTime stepping
    by `frame_time_ms` (FrameTime only when `with_frame_time`). From image `depth_change_at`
    (0-based, within each acquisition) on, the sonographer has gone deeper: those images are
    rendered, and calibrated, at `deep_cm_per_px` instead of 0.08 cm per pixel.
    """
    loop = echo_loop(
        "A4C", study=study, series_number=series_number, n_frames=n_frames, frame_time_ms=frame_time_ms,
        rows=rows, columns=columns, cm_per_px=0.08, transfer_syntax_uid=ExplicitVRLittleEndian,
    )  # fmt: skip
    deep = echo_loop(
        "A4C", study=study, series_number=series_number, n_frames=n_frames, frame_time_ms=frame_time_ms,
        rows=rows, columns=columns, cm_per_px=deep_cm_per_px, transfer_syntax_uid=ExplicitVRLittleEndian,
    ) if depth_change_at is not None else loop  # fmt: skip
    frames = loop.pixel_array
    deep_frames = deep.pixel_array
    series = _new_series(PATIENT, study, series_number, "US", "ECHO STILLS", "HEART")
    out = []
    number = 0
    for acquisition, acquired_at in acquisitions:
        start = dt.datetime.strptime(study.date + acquired_at, "%Y%m%d%H%M%S")
        for i in range(n_frames):
            number += 1
            ds = _instance(
                UltrasoundImageStorage, PATIENT, study, "ECHO", series, number,
                ["ORIGINAL", "PRIMARY", "CARDIAC"],
            )  # fmt: skip
            ds.ViewName = "A4C"
            ds.HeartRate = loop.HeartRate
            ds.AcquisitionNumber = acquisition
            ds.AcquisitionDateTime = f"{study.date}{acquired_at}"
            ds.AcquisitionDate, ds.AcquisitionTime = study.date, acquired_at
            ds.ContentTime = (start + dt.timedelta(milliseconds=i * frame_time_ms)).strftime("%H%M%S.%f")
            if with_frame_time:
                ds.FrameTime = frame_time_ms
            deeper = depth_change_at is not None and i >= depth_change_at
            source = deep if deeper else loop
            ds.SequenceOfUltrasoundRegions = Sequence([copy.deepcopy(source.SequenceOfUltrasoundRegions[0])])
            pixels = deep_frames[i] if deeper else frames[i]
            ds.set_pixel_data(pixels, "MONOCHROME2", 8, generate_instance_uid=False)
            out.append(encode(ds, JPEGBaseline8Bit))
    return out


@dataclass(frozen=True)
class MitralInflow:
    """A pulsed-wave Doppler sweep of mitral inflow with known E and A waves.

    Each beat starts at its R wave; the E wave rises (quarter sine) to its peak and falls
    linearly over the deceleration time, the A wave (atrial kick) likewise, later. Peak
    times fall on whole columns so the peaks are drawn exactly.
    """

    heart_rate_bpm: float = 75.0  # R-R 800 ms
    first_r_ms: float = 100.0
    e_peak_cm_s: float = 82.0
    a_peak_cm_s: float = 54.0
    e_onset_ms: float = 400.0  # after the R wave
    e_rise_ms: float = 92.0
    e_deceleration_ms: float = 160.0
    a_onset_ms: float = 660.0
    a_rise_ms: float = 72.0
    a_fall_ms: float = 68.0  # closes at the next R wave
    sweep_ms_per_px: float = 4.0
    cm_s_per_px: float = 0.5
    columns: int = 640
    rows: int = 400
    spectral_top: int = 150  # the spectral region's first row
    baseline_row: int = 370  # zero velocity (image row)

    @property
    def rr_ms(self) -> float:
        return 60000.0 / self.heart_rate_bpm

    def e_peaks_ms(self) -> list[float]:
        return self._peaks(self.e_onset_ms + self.e_rise_ms)

    def a_peaks_ms(self) -> list[float]:
        return self._peaks(self.a_onset_ms + self.a_rise_ms)

    def _peaks(self, after_r_ms: float) -> list[float]:
        sweep = self.columns * self.sweep_ms_per_px
        out, r = [], self.first_r_ms - self.rr_ms
        while r < sweep:
            if 0 <= r + after_r_ms < sweep:
                out.append(r + after_r_ms)
            r += self.rr_ms
        return out

    def velocity(self, t_ms: np.ndarray) -> np.ndarray:
        """Peak (envelope) velocity in cm/s at sweep times `t_ms`."""
        phase = (t_ms - self.first_r_ms) % self.rr_ms

        def wave(onset: float, rise: float, fall: float, peak: float) -> np.ndarray:
            up = (phase >= onset) & (phase < onset + rise)
            down = (phase >= onset + rise) & (phase < onset + rise + fall)
            out = np.zeros_like(phase)
            out[up] = peak * np.sin(0.5 * math.pi * (phase[up] - onset) / rise)
            out[down] = peak * (1.0 - (phase[down] - onset - rise) / fall)
            return out

        e = wave(self.e_onset_ms, self.e_rise_ms, self.e_deceleration_ms, self.e_peak_cm_s)
        a = wave(self.a_onset_ms, self.a_rise_ms, self.a_fall_ms, self.a_peak_cm_s)
        return np.maximum(e, a)


MITRAL_INFLOW = MitralInflow()


def doppler_image(
    inflow: MitralInflow = MITRAL_INFLOW, *, study: Study = ECHO_STUDY, series_number: int = 5
) -> FileDataset:
    """A single-frame spectral Doppler image: a small A4C with the sample gate above, the PW
    spectrum of mitral inflow below (velocity up from the baseline, time to the right), each
    part calibrated by its own SequenceOfUltrasoundRegions item."""
    series = _new_series(PATIENT, study, series_number, "US", "DOPPLER MV INFLOW", "HEART")
    ds = _instance(
        UltrasoundImageStorage, PATIENT, study, "ECHO", series, 1, ["ORIGINAL", "PRIMARY", "CARDIAC"]
    )
    rows, cols, top, base = inflow.rows, inflow.columns, inflow.spectral_top, inflow.baseline_row
    image = np.zeros((rows, cols), np.float64)
    # the 2D view the gate was placed on (rows 0..top-11), 0.1 cm per pixel
    two_d_rows, two_d_cols, two_d_left = top - 10, 200, (cols - 200) // 2
    phantom = LVPhantom()
    a, b, length, wall = phantom.at(0.0)
    view = render_frame("A4C", a, b, length, wall, two_d_rows, two_d_cols, 0.1)
    view *= _sector_mask(two_d_rows, two_d_cols) * _speckle(two_d_rows, two_d_cols, seed=51)
    image[:two_d_rows, two_d_left : two_d_left + two_d_cols] = 200.0 * np.clip(view, 0, 1.2)
    gate_x, gate_y = two_d_left + two_d_cols // 2, int(two_d_rows * 0.85)
    image[gate_y - 1 : gate_y + 2, gate_x - 4 : gate_x + 5] = 255.0
    # the spectrum: each column a moment, each row a velocity; bright toward the envelope
    t = np.arange(cols) * inflow.sweep_ms_per_px  # column x shows the moment x·Δt
    envelope = inflow.velocity(t)
    spectral_rows = np.arange(top, rows, dtype=np.float64)
    velocity = (base - spectral_rows) * inflow.cm_s_per_px  # row r shows (baseline - r)·Δv
    rng = np.random.default_rng(55)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(envelope[None, :] > 0, velocity[:, None] / envelope[None, :], 2.0)
    # coverage of each pixel row [v - d, v] by the band 0..envelope, for an anti-aliased edge
    coverage = np.clip(
        (envelope[None, :] - (velocity[:, None] - inflow.cm_s_per_px)) / inflow.cm_s_per_px, 0, 1
    )
    coverage *= velocity[:, None] > 0
    brightness = 120.0 + 110.0 * np.clip(fraction, 0, 1) ** 2
    spectrum = coverage * brightness * (0.85 + 0.15 * rng.random((spectral_rows.size, cols)))
    spectrum += 12.0 * rng.random((spectral_rows.size, cols))  # background noise, far below the band
    spectrum[base - top, :] = np.maximum(spectrum[base - top, :], 90.0)  # the baseline
    image[top:, :] = spectrum
    pixels = np.clip(image, 0, 255).astype(np.uint8)

    two_d = Dataset()
    two_d.RegionSpatialFormat, two_d.RegionDataType, two_d.RegionFlags = 1, 1, 0
    two_d.RegionLocationMinX0, two_d.RegionLocationMinY0 = two_d_left, 0
    two_d.RegionLocationMaxX1, two_d.RegionLocationMaxY1 = two_d_left + two_d_cols - 1, two_d_rows - 1
    two_d.ReferencePixelX0, two_d.ReferencePixelY0 = two_d_cols // 2, 0
    two_d.PhysicalUnitsXDirection = two_d.PhysicalUnitsYDirection = 3  # cm
    two_d.PhysicalDeltaX = two_d.PhysicalDeltaY = 0.1
    spectral = Dataset()
    spectral.RegionSpatialFormat = 3  # spectral
    spectral.RegionDataType = 3  # PW spectral Doppler
    spectral.RegionFlags = 0
    spectral.RegionLocationMinX0, spectral.RegionLocationMinY0 = 0, top
    spectral.RegionLocationMaxX1, spectral.RegionLocationMaxY1 = cols - 1, rows - 1
    spectral.ReferencePixelX0 = 0  # relative to the region's top-left corner: time 0 at its left edge
    spectral.ReferencePixelY0 = base - top  # the baseline, zero velocity
    spectral.ReferencePixelPhysicalValueX = 0.0
    spectral.ReferencePixelPhysicalValueY = 0.0
    spectral.PhysicalUnitsXDirection = 4  # seconds
    spectral.PhysicalUnitsYDirection = 7  # cm/s
    spectral.PhysicalDeltaX = inflow.sweep_ms_per_px / 1000.0
    spectral.PhysicalDeltaY = -inflow.cm_s_per_px  # velocity grows upwards, rows grow downwards
    spectral.DopplerSampleVolumeXPosition = gate_x - two_d_left
    spectral.DopplerSampleVolumeYPosition = gate_y
    ds.SequenceOfUltrasoundRegions = Sequence([two_d, spectral])
    ds.ViewName = "A4C"
    ds.HeartRate = round(inflow.heart_rate_bpm)
    ds.AcquisitionNumber = 9
    ds.AcquisitionDateTime = f"{study.date}102200"
    ds.ImageComments = (
        f"Mitral inflow: E {inflow.e_peak_cm_s:g} cm/s, A {inflow.a_peak_cm_s:g} cm/s, "
        f"E deceleration {inflow.e_deceleration_ms:g} ms, R-R {inflow.rr_ms:g} ms"
    )
    ds.set_pixel_data(pixels, "MONOCHROME2", 8, generate_instance_uid=False)
    return ds


STRESS_STAGES: tuple[tuple[str, float, LVPhantom], ...] = (
    ("REST", 70.0, LVPhantom()),
    ("LOW DOSE", 95.0, LVPhantom(a_es_cm=1.55, b_es_cm=1.45, length_es_cm=7.2)),
    ("PEAK", 135.0, LVPhantom(a_es_cm=1.35, b_es_cm=1.25, length_es_cm=7.0)),
    ("RECOVERY", 90.0, LVPhantom(a_es_cm=1.6, b_es_cm=1.5, length_es_cm=7.3)),
)
STRESS_VIEWS = ("PLAX", "PSAX", "A4C", "A2C")


def stress_echo_study(rows: int = 180, columns: int = 240) -> list[FileDataset]:
    """Four stages x four views, each loop one R-R interval plus 100 ms, 20 ms per frame."""
    out = []
    for s, (name, rate, phantom) in enumerate(STRESS_STAGES, start=1):
        frames = round((60000.0 / rate + 100.0) / 20.0)
        for v, view in enumerate(STRESS_VIEWS, start=1):
            out.append(
                echo_loop(
                    view, study=STRESS_STUDY, series_number=s, instance_number=v, phantom=phantom,
                    heart_rate_bpm=rate, n_frames=frames, rows=rows, columns=columns,
                    cm_per_px=0.067, stage=(s, name, len(STRESS_STAGES)),
                )
            )  # fmt: skip
    return out


def twelve_lead_ecg(duration_s: float = 10.0, heart_rate_bpm: float = 72.0) -> FileDataset:
    """A resting 12-lead ECG from a rotating heart-vector model (limb leads obey Einthoven)."""
    series = _new_series(PATIENT, ECG_STUDY, 1, "ECG", "RESTING 12 LEAD", "HEART")
    ds = _instance(TwelveLeadECGWaveformStorage, PATIENT, ECG_STUDY, "ECG", series, 1, [])
    del ds.ImageType
    del ds.BodyPartExamined
    rr = 60000.0 / heart_rate_bpm
    duration_ms = duration_s * 1000.0
    frontal = ecg_lead_ii(duration_ms, rr)  # magnitude along the 60° axis
    lateral = ecg_lead_ii(duration_ms, rr) * 0.35
    t = np.arange(frontal.size)
    lateral = np.roll(lateral, 6)  # a little later than the frontal component: distinct lead shapes
    # heart vector: x to the patient's left, y downwards (frontal), z to the back (horizontal)
    hx = frontal * math.cos(math.radians(60)) + lateral
    hy = frontal * math.sin(math.radians(60))
    hz = -0.6 * frontal + 0.5 * lateral
    wander = 0.02 * np.sin(2 * math.pi * 0.3 * t / ECG_SAMPLING_HZ)  # breathing, in the heart vector
    hx, hy = hx + wander, hy + 0.5 * wander
    lead_i = hx
    lead_ii = hx * 0.5 + hy * math.sqrt(3) / 2
    lead_iii = lead_ii - lead_i
    avr = -(lead_i + lead_ii) / 2
    avl = lead_i - lead_ii / 2
    avf = lead_ii - lead_i / 2
    precordial = []
    for angle in (115, 95, 75, 55, 30, 0):  # V1..V6 in the horizontal plane
        rad = math.radians(angle)
        precordial.append(hx * math.cos(rad) - hz * math.sin(rad))
    leads = np.vstack([lead_i, lead_ii, lead_iii, avr, avl, avf, *precordial])
    ds.WaveformSequence = Sequence(
        [_waveform_item(leads, [(code, "SCPECG", meaning) for code, meaning in TWELVE_LEADS])]
    )
    ds.AcquisitionDateTime = f"{ECG_STUDY.date}{ECG_STUDY.time}"
    return ds


def legacy_curve_loop() -> FileDataset:
    """An A4C loop whose ECG is in the retired curve group 5000, as older machines wrote it."""
    return echo_loop("A4C", series_number=6, n_frames=40, ecg_in_curve=True)


def write_cardiology_demo(out_dir: Path) -> list[Path]:
    """Write the echo study (with a series of single-frame stills grouped into loops, the depth
    changing in the second acquisition, a spectral Doppler image and a loop with a curve-data
    ECG), the stress echo and the 12-lead ECG under `out_dir`."""
    instances = [
        *echo_study(),
        *echo_image_sequence(depth_change_at=6),
        doppler_image(),
        legacy_curve_loop(),
        *stress_echo_study(),
        twelve_lead_ecg(),
    ]
    return [write(ds, Path(out_dir)) for ds in instances]
