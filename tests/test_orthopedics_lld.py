"""Leg-length discrepancy against the ischial line (lowest points of the ischial tuberosities), the
alternative to the inter-teardrop line: measured on the pelvis phantom, used by plans, drawn in the SC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modules.orthopedics.measurements import MEASUREMENTS, Plane, measure
from modules.orthopedics.overlay import burn_in, measurement_kinds
from modules.orthopedics.plans import evaluate_plan, parse_plan
from modules.orthopedics.templates import TemplateLibrary
from sample_data.orthopedics import PELVIS
from server.imaging.calibration import Calibration, CalibrationSource

TROCHANTERS = ("lesser_trochanter_r", "lesser_trochanter_l")


def _plane() -> Plane:
    s = PELVIS.patient_pixel_spacing_mm
    return Plane(Calibration(CalibrationSource.USER, s, s), PELVIS.columns)


def test_the_phantom_has_ischial_landmarks_and_kept_its_others() -> None:
    lm = PELVIS.landmarks
    assert lm["teardrop_r"] == (135.0, 190.0) and lm["lesser_trochanter_l"] == (265.0, 258.0)
    assert lm["ischial_tuberosity_r"][1] == lm["ischial_tuberosity_l"][1] > lm["teardrop_r"][1]
    assert PELVIS.truth["leg_length_difference_r_minus_l"] == -10.0


def test_ischial_lld_matches_the_phantom() -> None:
    px, truth = PELVIS.px, PELVIS.truth
    lld = measure(
        "leg-length-ischial",
        [px("ischial_tuberosity_l"), px("ischial_tuberosity_r"), *(px(n) for n in TROCHANTERS)],
        _plane(),
    )
    assert lld.kind == "leg-length-ischial"
    assert lld.value("right_below_reference") == pytest.approx(truth["lesser_trochanter_below_ischial_r"])
    assert lld.value("left_below_reference") == pytest.approx(truth["lesser_trochanter_below_ischial_l"])
    assert lld.value("difference_right_minus_left") == pytest.approx(truth["leg_length_difference_r_minus_l"])
    assert lld.labels == {"leg_length": "left longer", "reference": "vs ischial line"}
    assert "ischial line" in lld.summary()
    teardrop = measure(
        "leg-length", [px("teardrop_r"), px("teardrop_l"), *(px(n) for n in TROCHANTERS)], _plane()
    )
    assert "reference" not in teardrop.labels  # the default reference keeps its old wording


def test_a_tilted_ischial_line_changes_the_answer_as_geometry_says() -> None:
    """An oblique reference (left tuberosity 6 mm higher): each trochanter's distance is measured
    perpendicular to that line, not vertically."""
    right_mm, left_mm = PELVIS.landmarks["ischial_tuberosity_r"], PELVIS.landmarks["ischial_tuberosity_l"]
    left_mm = (left_mm[0], left_mm[1] - 6.0)
    points = [PELVIS.pixel(right_mm), PELVIS.pixel(left_mm), *(PELVIS.px(n) for n in TROCHANTERS)]
    lld = measure("leg-length-ischial", points, _plane())
    dx, dy = left_mm[0] - right_mm[0], left_mm[1] - right_mm[1]

    def below(name: str) -> float:
        x, y = PELVIS.landmarks[name]
        return (dx * (y - right_mm[1]) - dy * (x - right_mm[0])) / math.hypot(dx, dy)

    expected = below("lesser_trochanter_r") - below("lesser_trochanter_l")
    assert lld.value("difference_right_minus_left") == pytest.approx(expected, abs=1e-6)
    assert abs(expected - PELVIS.truth["leg_length_difference_r_minus_l"]) > 1.0


def test_the_viewer_catalogue_offers_both_references() -> None:
    kinds = measurement_kinds()
    assert kinds["leg-length"]["points"][:2] == ["teardrop", "teardrop"]
    assert kinds["leg-length-ischial"]["points"][:2] == ["ischial tuberosity", "ischial tuberosity"]
    assert kinds["leg-length-ischial"]["count"] == MEASUREMENTS["leg-length-ischial"][0] == 4


def test_plan_reconstruction_uses_the_ischial_line_and_names_it() -> None:
    library = TemplateLibrary()
    px = PELVIS.px
    head = px("head_centre_r")
    s = PELVIS.patient_pixel_spacing_mm
    calibration = Calibration(CalibrationSource.USER, s, s)
    document = {
        "measurements": [
            {
                "id": "lld",
                "kind": "leg-length-ischial",
                "points": [
                    px("ischial_tuberosity_r"),
                    px("ischial_tuberosity_l"),
                    *(px(n) for n in TROCHANTERS),
                ],
            }
        ],
        "templates": [
            {
                "id": "c1",
                "template_id": "generic-cup-hemispherical",
                "size": "52",
                "x": head[0],
                "y": head[1],
            },
            {
                "id": "s1",
                "template_id": "generic-stem-uncemented-standard",
                "size": "5",
                "x": head[0],
                "y": head[1] + 46,
            },
        ],
    }
    evaluated = evaluate_plan(parse_plan(document, library), calibration, library, PELVIS.columns)
    (reconstruction,) = evaluated["reconstruction"]
    assert reconstruction["reference"] == "ischial line"
    assert reconstruction["leg_length_change"]["value"] == pytest.approx(46 * s, abs=1e-3)
    assert evaluated["measurements"][0]["result"]["quantities"][2]["value"] == pytest.approx(-10.0, abs=1e-3)
    image = burn_in(np.zeros((PELVIS.rows, PELVIS.columns), dtype=np.uint16), evaluated, calibration, library)
    assert image.size == (PELVIS.columns, PELVIS.rows)
