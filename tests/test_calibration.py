"""server/imaging/calibration.py: every source in its order, on the orthopedic phantoms, and bad headers."""

from __future__ import annotations

import copy

import pytest
from pydicom.dataset import Dataset

from sample_data.orthopedics import LONG_LEG, PELVIS, long_leg_dataset, pelvis_dataset
from server.imaging.calibration import (
    Calibration,
    CalibrationError,
    CalibrationPlane,
    CalibrationSource,
    calibrate_from_circle,
    calibrate_from_line,
    dicom_calibrations,
    resolve_calibration,
)


@pytest.fixture(scope="module")
def pelvis_header() -> Dataset:
    ds = pelvis_dataset()
    del ds.PixelData
    return ds


@pytest.fixture(scope="module")
def long_leg_header() -> Dataset:
    ds = long_leg_dataset()
    del ds.PixelData
    return ds


def _error(value: float, truth: float) -> float:
    return abs(value / truth - 1)


def test_imager_spacing_divided_by_magnification(pelvis_header: Dataset) -> None:
    active = resolve_calibration(pelvis_header).active
    assert active.source is CalibrationSource.IMAGER_MAGNIFICATION
    assert active.plane is CalibrationPlane.PATIENT
    assert _error(active.column_spacing_mm or 0, PELVIS.patient_pixel_spacing_mm) < 0.01
    assert _error(active.row_spacing_mm or 0, PELVIS.patient_pixel_spacing_mm) < 0.01
    assert active.magnification == pytest.approx(1.15)


def test_pixel_spacing_calibrated_by_geometry(long_leg_header: Dataset) -> None:
    report = resolve_calibration(long_leg_header)
    assert report.active.source is CalibrationSource.PIXEL_SPACING
    assert _error(report.active.column_spacing_mm or 0, LONG_LEG.patient_pixel_spacing_mm) < 0.01
    assert "geometry" in report.active.description
    # The other sources stay available, in order, for a user who wants to choose one.
    assert [c.source for c in report.candidates] == [
        CalibrationSource.PIXEL_SPACING,
        CalibrationSource.IMAGER_MAGNIFICATION,
        CalibrationSource.IMAGER_DETECTOR,
    ]


def test_imager_spacing_alone_is_flagged_detector_plane(pelvis_header: Dataset) -> None:
    header = copy.deepcopy(pelvis_header)
    del header.EstimatedRadiographicMagnificationFactor
    active = resolve_calibration(header).active
    assert active.source is CalibrationSource.IMAGER_DETECTOR
    assert active.plane is CalibrationPlane.DETECTOR
    assert active.column_spacing_mm == pytest.approx(PELVIS.imager_pixel_spacing_mm)
    assert any("detector" in w for w in active.warnings)


def test_pixel_spacing_alone_is_the_patient_plane() -> None:
    header = Dataset()
    header.PixelSpacing = [0.2, 0.25]
    active = resolve_calibration(header).active
    assert active.source is CalibrationSource.PIXEL_SPACING
    assert (active.row_spacing_mm, active.column_spacing_mm) == (0.2, 0.25)


def test_pixel_spacing_equal_to_imager_spacing_is_not_the_patient_plane(pelvis_header: Dataset) -> None:
    header = copy.deepcopy(pelvis_header)
    header.PixelSpacing = list(header.ImagerPixelSpacing)
    active = resolve_calibration(header).active
    assert active.source is CalibrationSource.IMAGER_MAGNIFICATION


def test_pixel_spacing_explained_by_the_magnification_is_accepted(pelvis_header: Dataset) -> None:
    header = copy.deepcopy(pelvis_header)
    spacing = round(PELVIS.patient_pixel_spacing_mm, 6)
    header.PixelSpacing = [spacing, spacing]
    active = resolve_calibration(header).active
    assert active.source is CalibrationSource.PIXEL_SPACING
    assert _error(active.column_spacing_mm or 0, PELVIS.patient_pixel_spacing_mm) < 0.01


def test_contradictory_spacings_give_no_millimetres(pelvis_header: Dataset) -> None:
    header = copy.deepcopy(pelvis_header)
    header.PixelSpacing = [0.1, 0.1]  # neither the detector spacing nor explained by the magnification
    report = resolve_calibration(header)
    assert report.active.source is CalibrationSource.NONE
    assert not report.active.calibrated
    assert report.active.to_json()["mm_per_pixel"] is None
    assert any("contradicts" in p for p in report.problems)
    assert "PixelSpacingCalibrationType" in report.active.description


def test_missing_spacing_says_so() -> None:
    report = resolve_calibration(Dataset())
    assert not report.active.calibrated
    assert "pixels" in report.active.description
    with pytest.raises(CalibrationError, match="pixels"):
        report.active.to_mm(1, 1)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("ImagerPixelSpacing", [0.0, 0.0], "not positive"),
        ("ImagerPixelSpacing", [-0.1, 0.1], "not positive"),
        ("ImagerPixelSpacing", [0.1], "not 2"),
        ("EstimatedRadiographicMagnificationFactor", 0.5, "outside"),
    ],
)
def test_invalid_values_are_reported_and_ignored(
    pelvis_header: Dataset, keyword: str, value: object, message: str
) -> None:
    header = copy.deepcopy(pelvis_header)
    setattr(header, keyword, value)
    report = dicom_calibrations(header)
    assert any(message in p for p in report.problems), report.problems
    if keyword == "EstimatedRadiographicMagnificationFactor":
        assert report.active.source is CalibrationSource.IMAGER_DETECTOR
    else:
        assert not report.active.calibrated


def test_marker_circle_calibration(pelvis_header: Dataset) -> None:
    user = calibrate_from_circle(PELVIS.marker_centre_px, PELVIS.marker_radius_px, 25.0, pelvis_header)
    assert user.source is CalibrationSource.USER
    assert _error(user.column_spacing_mm or 0, PELVIS.patient_pixel_spacing_mm) < 1e-9
    assert user.magnification == pytest.approx(PELVIS.marker_magnification)
    assert user.marker is not None and user.marker.radius_px == pytest.approx(PELVIS.marker_radius_px)
    # The user's calibration wins over every DICOM source, and survives a JSON round trip.
    restored = Calibration.from_json(user.to_json())
    assert restored == user
    assert resolve_calibration(pelvis_header, restored).active == user


def test_line_calibration_keeps_the_pixel_aspect() -> None:
    header = Dataset()
    header.PixelSpacing = [0.2, 0.1]  # rows twice as far apart as columns
    vertical = calibrate_from_line((10, 10), (10, 110), 50.0, header)
    assert vertical.row_spacing_mm == pytest.approx(0.5)
    assert vertical.column_spacing_mm == pytest.approx(0.25)
    horizontal = calibrate_from_line((10, 10), (110, 10), 50.0, header)
    assert horizontal.column_spacing_mm == pytest.approx(0.5)


@pytest.mark.parametrize("size", [0, -25, float("nan"), "abc"])
def test_marker_of_size_zero_or_nonsense_is_refused(size: object) -> None:
    with pytest.raises(CalibrationError, match="diameter"):
        calibrate_from_circle((100, 100), 50, size)  # type: ignore[arg-type]


def test_degenerate_marker_and_line_are_refused() -> None:
    with pytest.raises(CalibrationError, match="radius"):
        calibrate_from_circle((100, 100), 0, 25)
    with pytest.raises(CalibrationError, match="shorter than one pixel"):
        calibrate_from_line((5, 5), (5.2, 5), 10)
    with pytest.raises(CalibrationError, match="greater than zero"):
        calibrate_from_line((5, 5), (50, 5), 0)


def test_user_may_choose_a_dicom_source(long_leg_header: Dataset) -> None:
    chosen = resolve_calibration(long_leg_header, prefer=CalibrationSource.IMAGER_DETECTOR).active
    assert chosen.source is CalibrationSource.IMAGER_DETECTOR and chosen.chosen_by_user
    header = Dataset()
    header.PixelSpacing = [0.2, 0.2]
    report = resolve_calibration(header, prefer=CalibrationSource.IMAGER_MAGNIFICATION)
    assert report.active.source is CalibrationSource.PIXEL_SPACING
    assert any("not available" in p for p in report.problems)
    assert not resolve_calibration(header, prefer=CalibrationSource.NONE).active.calibrated


def test_enhanced_pixel_measures_are_read() -> None:
    measures = Dataset()
    measures.PixelSpacing = [0.1, 0.1]
    group = Dataset()
    group.PixelMeasuresSequence = [measures]
    header = Dataset()
    header.SharedFunctionalGroupsSequence = [group]
    assert resolve_calibration(header).active.column_spacing_mm == pytest.approx(0.1)
