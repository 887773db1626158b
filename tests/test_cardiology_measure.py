"""Cardiology maths against the phantom's known geometry: timing rules, calipers, method of discs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from modules.cardiology.cine import (
    DEFAULT_FPS,
    caliper_distance,
    frame_timing,
    loop_ecg,
    polygon_area,
    to_mm,
    ultrasound_regions,
)
from modules.cardiology.lv_volume import (
    ContourError,
    disc_profile,
    ejection_fraction,
    lv_volumes,
    volume_biplane_ml,
    volume_monoplane_ml,
)
from sample_data.cardiology import (
    R_WAVE_DELAY_MS,
    LVPhantom,
    contraction_at,
    echo_loop,
    write_cardiology_demo,
)

APEX_CM = 1.0  # where the phantom puts the apex below the top of the image
CM_PER_PX = 0.04
ED_FRAME, ES_FRAME = 3, 17  # 60 ms (R wave) and 340 ms (35 % of an 800 ms R-R) at 20 ms per frame


@pytest.fixture(scope="module")
def apical_loops() -> dict[str, Dataset]:
    return {view: echo_loop(view, instance_number=i + 1) for i, view in enumerate(("A4C", "A2C"))}


# -- frame timing ------------------------------------------------------------------------------------


def _header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_frame_time_gives_uniform_timing() -> None:
    timing = frame_timing(_header(FrameTime=33.3), 4)
    assert timing.source == "FrameTime"
    assert timing.times_ms == pytest.approx((0, 33.3, 66.6, 99.9))
    assert timing.fps == pytest.approx(1000 / 33.3)


def test_frame_time_vector_gives_variable_timing_and_wins_when_pointed_to() -> None:
    header = _header(
        FrameTimeVector=[0, 10, 30, 20], FrameTime=50.0, FrameIncrementPointer=Tag(0x0018, 0x1065)
    )
    timing = frame_timing(header, 4)
    assert timing.source == "FrameTimeVector"
    assert timing.times_ms == (0, 10, 40, 60)
    assert timing.durations_ms == (10, 30, 20, 20)


def test_pointer_to_frame_time_beats_a_vector() -> None:
    header = _header(
        FrameTimeVector=[0, 10, 30, 20], FrameTime=50.0, FrameIncrementPointer=Tag(0x0018, 0x1063)
    )
    assert frame_timing(header, 4).source == "FrameTime"


def test_acquisition_timing_before_playback_hints() -> None:
    assert (
        frame_timing(_header(FrameTime=20.0, CineRate=30, RecommendedDisplayFrameRate=25), 3).source
        == "FrameTime"
    )
    assert frame_timing(_header(CineRate=30, RecommendedDisplayFrameRate=25), 3).source == "CineRate"
    assert frame_timing(_header(RecommendedDisplayFrameRate=25), 3).fps == pytest.approx(25)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"FrameTime": 0.0},
        {"FrameTime": -5.0, "CineRate": 0},
        {"FrameTimeVector": [0, 0, 0]},
        {"FrameTimeVector": [0, 10]},
    ],
)
def test_zero_or_absent_timing_falls_back_to_the_documented_default(values: dict[str, object]) -> None:
    timing = frame_timing(_header(**values), 3)
    assert timing.source == "default"
    assert timing.fps == pytest.approx(DEFAULT_FPS)
    assert timing.warnings and "default" in timing.warnings[-1]


def test_zero_frame_time_is_skipped_for_the_next_source_with_a_warning() -> None:
    timing = frame_timing(_header(FrameTime=0.0, CineRate=25), 5)
    assert timing.source == "CineRate"
    assert any("FrameTime" in w for w in timing.warnings)


# -- regions and calipers -----------------------------------------------------------------------------


def test_missing_regions_measure_in_pixels_never_mm() -> None:
    distance = caliper_distance([], (0, 0), (30, 40))
    assert (distance.value, distance.unit, distance.calibrated) == (50, "px", False)
    assert polygon_area([], [(0, 0), (10, 0), (10, 10)]).unit == "px2"
    assert to_mm([], [(0, 0)]) is None


def test_caliper_outside_the_region_stays_in_pixels(apical_loops: dict[str, Dataset]) -> None:
    regions = ultrasound_regions(apical_loops["A4C"])
    assert caliper_distance(regions, (10, 10), (500, 10)).unit == "px"
    inside = caliper_distance(regions, (10, 10), (110, 10))
    assert inside.unit == "mm" and inside.value == pytest.approx(100 * CM_PER_PX * 10)


def test_anisotropic_region_and_m_mode_axes() -> None:
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 99, 99
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.1, 0.05
    mmode = Dataset()
    mmode.RegionLocationMinX0, mmode.RegionLocationMinY0 = 0, 100
    mmode.RegionLocationMaxX1, mmode.RegionLocationMaxY1 = 99, 199
    mmode.PhysicalUnitsXDirection, mmode.PhysicalUnitsYDirection = 4, 3  # seconds, cm
    mmode.PhysicalDeltaX, mmode.PhysicalDeltaY = 0.01, 0.1
    header = Dataset()
    header.SequenceOfUltrasoundRegions = [region, mmode]
    regions = ultrasound_regions(header)
    assert caliper_distance(regions, (0, 0), (30, 40)).value == pytest.approx(10 * math.hypot(3.0, 2.0))
    timed = caliper_distance(regions, (10, 120), (60, 150))
    assert (timed.unit, timed.value) == ("ms", pytest.approx(500))
    assert timed.extra == {"y": pytest.approx(3.0), "y_unit": "cm"}


def _cavity_edges(row: np.ndarray, centre: float) -> tuple[float, float] | None:
    """Sub-pixel left/right crossings of the half level between dark cavity and bright wall."""
    threshold = 0.5 * (float(np.median(row[int(centre) - 3 : int(centre) + 3])) + 217.0)
    c = int(centre)
    if row[c] >= threshold:
        return None
    right = c
    while right + 1 < row.size and row[right + 1] < threshold:
        right += 1
    left = c
    while left > 0 and row[left - 1] < threshold:
        left -= 1
    # pixel centres are at +0.5; interpolate where the profile crosses the threshold
    r = right + (threshold - row[right]) / (row[right + 1] - row[right]) + 0.5
    l_ = left - (threshold - row[left]) / (row[left - 1] - row[left]) + 0.5
    return float(l_), float(r)


def test_cavity_width_measured_on_the_image_within_1_percent(apical_loops: dict[str, Dataset]) -> None:
    ds = apical_loops["A4C"]
    phantom = LVPhantom()
    frame = ds.pixel_array[ED_FRAME].astype(np.float64)
    regions = ultrasound_regions(ds)
    for z_cm in (0.5, 2.0, 4.0):  # heights above the mitral plane at end-diastole
        y_cm = APEX_CM + phantom.length_ed_cm - z_cm
        row = int(y_cm / CM_PER_PX)
        z_at_row = APEX_CM + phantom.length_ed_cm - (row + 0.5) * CM_PER_PX
        expected_mm = 20 * phantom.a_ed_cm * math.sqrt(1 - (z_at_row / phantom.length_ed_cm) ** 2)
        edges = _cavity_edges(frame[row], ds.Columns / 2)
        assert edges is not None
        measured = caliper_distance(regions, (edges[0], row + 0.5), (edges[1], row + 0.5))
        assert measured.unit == "mm"
        assert measured.value == pytest.approx(expected_mm, rel=0.01)


# -- method of discs ----------------------------------------------------------------------------------


def _half_ellipse_mm(half_width_mm: float, length_mm: float, n: int = 60) -> list[tuple[float, float]]:
    """Annulus → apex → annulus, apex upwards (smaller y)."""
    return [(-half_width_mm * math.cos(t), -length_mm * math.sin(t)) for t in np.linspace(0, math.pi, n)]


def test_analytic_contours_give_the_phantom_volumes_and_ef() -> None:
    phantom = LVPhantom()
    contours = {
        "A4C-ED": _half_ellipse_mm(10 * phantom.a_ed_cm, 10 * phantom.length_ed_cm),
        "A2C-ED": _half_ellipse_mm(10 * phantom.b_ed_cm, 10 * phantom.length_ed_cm),
        "A4C-ES": _half_ellipse_mm(10 * phantom.a_es_cm, 10 * phantom.length_es_cm),
        "A2C-ES": _half_ellipse_mm(10 * phantom.b_es_cm, 10 * phantom.length_es_cm),
    }
    result = lv_volumes(contours)
    assert result.method == "biplane"
    assert result.edv_ml == pytest.approx(phantom.edv_ml, rel=0.02)
    assert result.esv_ml == pytest.approx(phantom.esv_ml, rel=0.02)
    assert abs(result.ef_percent - phantom.ef_percent) < 2.0


def test_monoplane_of_a_circular_ventricle_is_exact() -> None:
    contour = _half_ellipse_mm(25, 80, n=200)
    assert volume_monoplane_ml(contour) == pytest.approx(2 / 3 * math.pi * 2.5 * 2.5 * 8.0, rel=0.01)
    assert volume_biplane_ml(contour, contour) == pytest.approx(volume_monoplane_ml(contour))


def test_disc_profile_does_not_depend_on_orientation() -> None:
    contour = _half_ellipse_mm(20, 70, n=61)  # odd: the apex is a contour point
    turned = [
        (x * math.cos(1.0) - y * math.sin(1.0) + 5, x * math.sin(1.0) + y * math.cos(1.0) - 3)
        for x, y in contour
    ]
    assert disc_profile(turned).length_mm == pytest.approx(70, rel=1e-6)
    assert volume_monoplane_ml(turned) == pytest.approx(volume_monoplane_ml(contour), rel=1e-9)


def test_bad_contours_are_refused_with_a_reason() -> None:
    with pytest.raises(ContourError, match="at least 5 points"):
        disc_profile([(0, 0), (1, 1)])
    with pytest.raises(ContourError, match="EF needs"):
        ejection_fraction(40, 60)
    with pytest.raises(ContourError, match="end-diastolic and end-systolic"):
        lv_volumes({"A4C-ED": _half_ellipse_mm(20, 70)})


def _traced_contour(ds: Dataset, frame_index: int, t_ms: float) -> list[tuple[float, float]]:
    """What a careful user traces: the cavity border row by row from the annulus (known mitral
    plane) round the apex and back, found on the decoded image."""
    phantom = LVPhantom()
    _, _, length, _ = phantom.at(contraction_at(t_ms, 800.0))
    frame = ds.pixel_array[frame_index].astype(np.float64)
    base_row = int((APEX_CM + length) / CM_PER_PX) - 1
    left, right = [], []
    for row in range(base_row, 0, -1):
        edges = _cavity_edges(frame[row], ds.Columns / 2)
        if edges is None:
            break
        left.append((edges[0], row + 0.5))
        right.append((edges[1], row + 0.5))
    apex_y = left[-1][1] - 0.5
    # annulus → apex on the left, the apex point, apex → annulus on the right
    pixels = [*left, (ds.Columns / 2, apex_y), *reversed(right)]
    mm = to_mm(ultrasound_regions(ds), pixels)
    assert mm is not None
    # the mitral plane lies at the bottom edge of the base row
    return [(x, y + 0.5 * CM_PER_PX * 10 if i in (0, len(mm) - 1) else y) for i, (x, y) in enumerate(mm)]


def test_ef_from_contours_traced_on_the_phantom_images(apical_loops: dict[str, Dataset]) -> None:
    phantom = LVPhantom()
    times = {ED_FRAME: ED_FRAME * 20.0, ES_FRAME: ES_FRAME * 20.0}
    assert contraction_at(times[ED_FRAME], 800) == 0 and contraction_at(
        times[ES_FRAME], 800
    ) == pytest.approx(1)
    contours = {
        f"{view}-{phase}": _traced_contour(apical_loops[view], index, times[index])
        for view in ("A4C", "A2C")
        for phase, index in (("ED", ED_FRAME), ("ES", ES_FRAME))
    }
    biplane = lv_volumes(contours)
    assert biplane.method == "biplane"
    assert abs(biplane.ef_percent - phantom.ef_percent) < 2.0
    assert biplane.edv_ml == pytest.approx(phantom.edv_ml, rel=0.05)
    mono = lv_volumes({k: v for k, v in contours.items() if k.startswith("A4C")})
    assert mono.method == "monoplane-A4C"  # a circular-disc model of an elliptic LV: EF still close
    assert abs(mono.ef_percent - phantom.ef_percent) < 4.0


# -- ECG carried by the loop ----------------------------------------------------------------------------


def test_loop_ecg_r_waves_at_the_phantom_end_diastole(apical_loops: dict[str, Dataset]) -> None:
    ecg = loop_ecg(apical_loops["A4C"])
    assert ecg is not None and ecg.label == "II"
    assert ecg.r_waves_ms == pytest.approx((R_WAVE_DELAY_MS, R_WAVE_DELAY_MS + 800.0), abs=2.0)
    assert float(ecg.samples_mv.max()) == pytest.approx(1.2, abs=0.1)


def test_demo_writes_echo_stress_and_ecg(tmp_path: Path) -> None:
    paths = write_cardiology_demo(tmp_path)
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    by_study: dict[str, list[Dataset]] = {}
    for ds in headers:
        by_study.setdefault(str(ds.AccessionNumber), []).append(ds)
    echo = [ds for ds in by_study["ACC-2001"] if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    assert [str(ds.ViewName) for ds in echo] == ["A4C", "A2C", "PLAX", "A4C"]
    assert "WaveformSequence" not in echo[3] and str(echo[3][0x50000020].value) == "ECG"  # curve ECG
    stills = [ds for ds in by_study["ACC-2001"] if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"]
    assert len(stills) == 25 and {int(ds.AcquisitionNumber) for ds in stills} == {1, 2, 9}
    (doppler,) = [ds for ds in stills if ds.SeriesDescription == "DOPPLER MV INFLOW"]
    assert [int(r.RegionDataType) for r in doppler.SequenceOfUltrasoundRegions] == [1, 3]
    # the second acquisition of stills goes deeper after its sixth image
    deltas = [float(ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY) for ds in stills if ds is not doppler]
    assert sorted(set(deltas)) == [0.08, 0.1]
    stress = by_study["ACC-2002"]
    assert len(stress) == 16 and {str(ds.StageName) for ds in stress} == {
        "REST",
        "LOW DOSE",
        "PEAK",
        "RECOVERY",
    }
    assert all("SequenceOfUltrasoundRegions" in ds and "WaveformSequence" in ds for ds in stress)
    (ecg,) = by_study["ACC-2003"]
    assert ecg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert ecg.WaveformSequence[0].NumberOfWaveformChannels == 12
    assert "FrameTimeVector" in echo[2]
