"""Orthopedic maths against the phantoms' known geometry: measurements, marker detection, templates at scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from modules.orthopedics.marker import MarkerNotFound, find_marker
from modules.orthopedics.measurements import MEASUREMENTS, MeasurementError, Plane, fit_circle, measure
from modules.orthopedics.templates import (
    TEMPLATE_DIR,
    TemplateError,
    TemplateLibrary,
    TemplatePlacement,
    parse_template,
    placed_landmarks,
    placed_outlines,
)
from sample_data.orthopedics import LONG_LEG, PELVIS, RadiographPhantom, write_orthopedics_demo
from server.imaging.calibration import (
    Calibration,
    CalibrationError,
    CalibrationSource,
    calibrate_from_circle,
    resolve_calibration,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dataset]:
    paths = write_orthopedics_demo(tmp_path_factory.mktemp("ortho"))
    return {"pelvis": pydicom.dcmread(paths[0]), "long_leg": pydicom.dcmread(paths[1])}


def _plane(phantom: RadiographPhantom) -> Plane:
    s = phantom.patient_pixel_spacing_mm
    return Plane(Calibration(CalibrationSource.USER, s, s), phantom.columns)


# -- measurements ----------------------------------------------------------------------------


def test_length_and_circle_on_the_pelvis() -> None:
    plane, px = _plane(PELVIS), PELVIS.px
    length = measure("length", [px("teardrop_r"), px("teardrop_l")], plane)
    assert length.value("length") == pytest.approx(PELVIS.truth["inter_teardrop_mm"], abs=1e-6)
    centre, radius = PELVIS.landmarks["head_centre_r"], PELVIS.truth["head_radius_r"]
    edge = [
        PELVIS.pixel((centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a)))
        for a in (0.3, 1.9, 4.0)
    ]
    circle = measure("circle", edge, plane)
    assert circle.value("diameter") == pytest.approx(2 * radius, abs=1e-6)
    assert (circle.value("centre_x"), circle.value("centre_y")) == pytest.approx(px("head_centre_r"))


def test_hip_measurements_match_the_phantom() -> None:
    plane, px, truth = _plane(PELVIS), PELVIS.px, PELVIS.truth
    cup = measure(
        "cup-inclination",
        [px("cup_rim_lateral_l"), px("cup_rim_medial_l"), px("teardrop_r"), px("teardrop_l")],
        plane,
    )
    assert cup.value("inclination") == pytest.approx(truth["cup_inclination_l"], abs=1e-6)
    for side in "rl":
        offset = measure(
            "femoral-offset",
            [px(f"head_centre_{side}"), px(f"shaft_top_{side}"), px(f"shaft_bottom_{side}")],
            plane,
        )
        assert offset.value("femoral_offset") == pytest.approx(truth[f"offset_{side}"], abs=1e-6)
    lld = measure(
        "leg-length",
        [px("teardrop_l"), px("teardrop_r"), px("lesser_trochanter_r"), px("lesser_trochanter_l")],
        plane,
    )
    assert lld.value("difference_right_minus_left") == pytest.approx(truth["leg_length_difference_r_minus_l"])
    assert lld.labels["leg_length"] == "left longer"


@pytest.mark.parametrize("side", ["r", "l"])
def test_long_leg_alignment_matches_the_phantom(side: str) -> None:
    plane, px, truth = _plane(LONG_LEG), LONG_LEG.px, LONG_LEG.truth
    hka = measure("hka", [px(f"hip_{side}"), px(f"knee_{side}"), px(f"ankle_{side}")], plane)
    assert hka.value("deviation") == pytest.approx(truth[f"hka_deviation_{side}"], abs=1e-6)
    assert hka.value("hka") == pytest.approx(180 - abs(truth[f"hka_deviation_{side}"]), abs=1e-6)
    if truth[f"hka_deviation_{side}"] > 0:
        assert hka.labels["alignment"].startswith("varus")
    mldfa = measure(
        "mldfa",
        [px(f"hip_{side}"), px(f"knee_{side}"), px(f"condyle_medial_{side}"), px(f"condyle_lateral_{side}")],
        plane,
    )
    assert mldfa.value("mldfa") == pytest.approx(truth[f"mldfa_{side}"], abs=1e-6)
    mpta = measure(
        "mpta",
        [
            px(f"knee_{side}"),
            px(f"ankle_{side}"),
            px(f"plateau_lateral_{side}"),
            px(f"plateau_medial_{side}"),
        ],
        plane,
    )
    assert mpta.value("mpta") == pytest.approx(truth[f"mpta_{side}"], abs=1e-6)


def test_angles_and_cobb() -> None:
    plane = Plane(Calibration(CalibrationSource.USER, 0.2, 0.2))
    assert measure("angle", [(10, 0), (0, 0), (0, 10)], plane).value("angle") == pytest.approx(90)
    assert measure("line-angle", [(0, 0), (10, 0), (0, 0), (10, 10)], plane).value("angle") == pytest.approx(
        45
    )
    # Cobb: endplates tilted +12° and −20° → 32°.
    a, b = math.radians(12), math.radians(-20)
    pts = [(0, 0), (40 * math.cos(a), 40 * math.sin(a)), (0, 100), (40 * math.cos(b), 100 + 40 * math.sin(b))]
    assert measure("cobb", pts, plane).value("cobb_angle") == pytest.approx(32)
    assert measure("perpendicular", [(0, 0), (10, 0), (3, 25)], plane).value("distance") == pytest.approx(
        25 * 0.2
    )
    assert measure("parallel", [(0, 0), (10, 10), (0, 10)], plane).value("distance") == pytest.approx(
        10 / math.sqrt(2) * 0.2
    )


def test_anisotropic_pixels_are_converted_before_geometry() -> None:
    plane = Plane(Calibration(CalibrationSource.PIXEL_SPACING, 0.2, 0.1))  # rows 0.2 mm apart, columns 0.1
    assert measure("length", [(0, 0), (100, 0)], plane).value("length") == pytest.approx(10)
    assert measure("length", [(0, 0), (0, 100)], plane).value("length") == pytest.approx(20)
    assert measure("angle", [(100, 0), (0, 0), (100, 50)], plane).value("angle") == pytest.approx(45)


def test_uncalibrated_lengths_are_pixels_never_mm() -> None:
    plane = Plane(resolve_calibration(Dataset()).active)
    result = measure("length", [(0, 0), (30, 40)], plane)
    assert result.quantities[0].unit == "px" and result.value("length") == pytest.approx(50)
    assert "mm" not in result.summary()
    assert measure("angle", [(1, 0), (0, 0), (0, 1)], plane).quantities[0].unit == "deg"


@pytest.mark.parametrize(
    ("kind", "points", "message"),
    [
        ("length", [(0, 0)], "needs 2 points"),
        ("angle", [(0, 0), (0, 0), (1, 1)], "coincide"),
        ("circle", [(0, 0), (1, 1), (2, 2)], "straight line"),
        ("volume", [(0, 0)], "unknown measurement"),
    ],
)
def test_bad_measurement_input(kind: str, points: list[tuple[float, float]], message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        measure(kind, points, Plane(Calibration(CalibrationSource.USER, 1, 1)))


def test_every_kind_is_listed_with_its_points() -> None:
    for kind, (count, _, names) in MEASUREMENTS.items():
        assert len(names) == count, kind


def test_fit_circle_least_squares() -> None:
    pts = [(50 + 20 * math.cos(a / 10), 40 + 20 * math.sin(a / 10)) for a in range(63)]
    centre, radius = fit_circle(pts)
    assert centre == pytest.approx((50, 40)) and radius == pytest.approx(20)


# -- marker detection ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pelvis", "long_leg"])
def test_marker_detection_finds_the_sphere(files: dict[str, Dataset], name: str) -> None:
    phantom = PELVIS if name == "pelvis" else LONG_LEG
    ds = files[name]
    proposal = find_marker(ds.pixel_array, ds)
    assert math.dist(proposal.centre, phantom.marker_centre_px) < 0.5
    assert abs(proposal.radius_px / phantom.marker_radius_px - 1) < 0.01
    # The calibration it gives is within 1 % of the phantom's patient-plane spacing.
    user = calibrate_from_circle(proposal.centre, proposal.radius_px, 25.0, ds)
    assert abs((user.column_spacing_mm or 0) / phantom.patient_pixel_spacing_mm - 1) < 0.01


def test_marker_detection_near_a_click_and_where_there_is_none(files: dict[str, Dataset]) -> None:
    ds = files["pelvis"]
    x, y = PELVIS.marker_centre_px
    proposal = find_marker(ds.pixel_array, ds, near=(x + 15, y - 10))
    assert math.dist(proposal.centre, (x, y)) < 0.5
    with pytest.raises(MarkerNotFound, match="25 mm"):
        find_marker(ds.pixel_array, ds, near=(1000, 150), search_radius_px=60)  # inside the iliac wing


# -- templates -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library() -> TemplateLibrary:
    return TemplateLibrary()


def test_library_has_the_usual_ranges(library: TemplateLibrary) -> None:
    cup = library.get("generic-cup-hemispherical")
    assert [int(s.size) for s in cup.sizes] == list(range(40, 68, 2))
    types = {t.type for t in library.templates.values()}
    assert {"acetabular-cup", "femoral-stem", "knee-femoral", "knee-tibial", "plate", "screw"} <= types
    fixations = {t.fixation for t in library.templates.values() if t.type == "femoral-stem"}
    assert fixations == {"cemented", "uncemented"}
    assert cup.step("40", -1) == "40" and cup.step("50", 2) == "54" and cup.step("66", 3) == "66"


@pytest.mark.parametrize("spacing", [(0.2, 0.2), (0.139, 0.139), (0.3, 0.15)])
def test_templates_are_drawn_at_exact_scale(library: TemplateLibrary, spacing: tuple[float, float]) -> None:
    calibration = Calibration(CalibrationSource.USER, *spacing)
    cup = library.get("generic-cup-hemispherical")
    placement = TemplatePlacement(cup.id, "52", 500, 400)
    landmarks = placed_landmarks(cup, placement, calibration)
    width_px = landmarks["rim_lateral"][0] - landmarks["rim_medial"][0]
    assert width_px * spacing[1] == pytest.approx(52.0)  # 52 mm across, whatever the pixel size
    rotated = placed_landmarks(cup, TemplatePlacement(cup.id, "52", 500, 400, rotation_deg=90), calibration)
    assert (rotated["rim_lateral"][1] - rotated["rim_medial"][1]) * spacing[0] == pytest.approx(52.0)
    stem = library.get("generic-stem-uncemented-standard")
    size = stem.size("5")
    placed = placed_landmarks(stem, TemplatePlacement(stem.id, "5", 300, 300), calibration)
    offset_mm = (placed["head_centre"][0] - placed["shaft_axis_top"][0]) * spacing[1]
    assert offset_mm == pytest.approx(size.properties["offset_mm"])
    mirrored = placed_landmarks(stem, TemplatePlacement(stem.id, "5", 300, 300, mirror=True), calibration)
    assert mirrored["shaft_axis_top"][0] - 300 == pytest.approx(300 - placed["shaft_axis_top"][0])


def test_outline_magnification_is_divided_out(library: TemplateLibrary) -> None:
    document = json.loads((TEMPLATE_DIR / "generic-cup-hemispherical.json").read_text())
    document["id"] = "acetate-115"
    for size in document["sizes"]:
        for outline in size["outlines"]:
            outline["points"] = [[x * 1.15, y * 1.15] for x, y in outline["points"]]
        size["landmarks"] = {k: [v[0] * 1.15, v[1] * 1.15] for k, v in size["landmarks"].items()}
    document["outline_magnification"] = 1.15
    template = parse_template(document)
    assert template.size("50").landmarks["rim_lateral"][0] == pytest.approx(25.0)


def test_placing_a_template_needs_a_calibration(library: TemplateLibrary) -> None:
    cup = library.get("generic-cup-hemispherical")
    with pytest.raises(CalibrationError, match="calibrate"):
        placed_outlines(cup, TemplatePlacement(cup.id, "50", 1, 1), resolve_calibration(Dataset()).active)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other/1"}, "format"),
        ({"type": "toaster"}, "type"),
        ({"sizes": []}, "no sizes"),
        ({"anchor": "nowhere"}, "anchor"),
        ({"outline_magnification": 10}, "implausible"),
    ],
)
def test_bad_template_files_are_refused(change: dict[str, object], message: str) -> None:
    document = json.loads((TEMPLATE_DIR / "generic-screw-cortical-3.5.json").read_text())
    document.update(change)
    with pytest.raises(TemplateError, match=message):
        parse_template(document)


def test_duplicate_template_ids_are_an_error(tmp_path: Path) -> None:
    source = TEMPLATE_DIR / "generic-screw-cortical-3.5.json"
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(source.read_text())
    with pytest.raises(TemplateError, match="twice"):
        TemplateLibrary([tmp_path])
