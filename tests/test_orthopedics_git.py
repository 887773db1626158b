"""DICOM Generic Implant Template import: HPGL drawings become true-size outlines in mm, listed and
placed like the JSON templates; a malformed drawing is refused with a message and the rest still import."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from modules.orthopedics.implant_git import (
    HpglError,
    parse_hpgl,
    template_size_from_dataset,
    templates_from_datasets,
)
from modules.orthopedics.templates import TemplatePlacement, placed_outlines
from sample_data.orthopedics import GIT_DRAWING_ORIGIN_MM, PELVIS, generic_implant_template, pelvis_dataset
from server.imaging.calibration import Calibration, CalibrationPlane, CalibrationSource
from tests.test_orthopedics_http import call


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reread(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(part10(ds)))


def dome_error_mm(
    points: list[tuple[float, float]] | tuple[tuple[float, float], ...], centre: Any, radius: float
) -> float:
    """Largest distance of the drawn points from the true circle, and all on the dome (y ≤ centre)."""
    assert all(p[1] <= centre[1] + 1e-6 for p in points)
    return max(abs(math.dist(p, centre) - radius) for p in points)


def test_imported_cup_outline_is_the_drawn_geometry_in_mm() -> None:
    result = templates_from_datasets(
        (str(d), reread(generic_implant_template(d))) for d in (52.0, 48.0, 50.0)
    )
    assert result.problems == []
    [template] = result.templates
    assert template.source == "DICOM GIT" and template.type == "acetabular-cup"
    assert template.manufacturer == "Tessera Generic Implants"
    assert [s.size for s in template.sizes] == ["48", "50", "52"]  # ordered, so size steps work
    size = template.size("52")
    centre = size.landmarks["centre"]
    # The planning landmark (printed mm, y up) is the anchor, at 1:1 and y flipped.
    assert centre == pytest.approx((GIT_DRAWING_ORIGIN_MM[0], -GIT_DRAWING_ORIGIN_MM[1]))
    shell = next(o for o in size.outlines if o.name == "shell")
    assert shell.closed and not shell.dashed
    assert dome_error_mm(shell.points, centre, 26.0) < 0.1
    xs = [p[0] - centre[0] for p in shell.points]
    assert min(xs) == pytest.approx(-26.0, abs=0.1) and max(xs) == pytest.approx(26.0, abs=0.1)
    assert min(p[1] - centre[1] for p in shell.points) == pytest.approx(-26.0, abs=0.1)
    bearing = next(o for o in size.outlines if o.name == "bearing")
    assert bearing.dashed  # not the contour pen: an auxiliary line
    assert max(abs(math.dist(p, centre) - 18.0) for p in bearing.points) < 0.1
    assert size.properties["part_number"] == "CUP-52"
    assert "Hip joint" in size.properties["target_anatomy"]


def test_hpgl_document_scaling_is_real_mm_per_printed_mm() -> None:
    """Printed at half size with scaling 2.0: the true size is unchanged (PS3.3 C.29.1.2.1.1)."""
    from sample_data.orthopedics import hemispherical_cup_hpgl

    half = generic_implant_template(52.0, hpgl=hemispherical_cup_hpgl(26.0), scaling=2.0)
    size = template_size_from_dataset(reread(half))
    shell = next(o for o in size["outlines"] if o["name"] == "shell")
    centre = size["landmarks"]["centre"]
    assert dome_error_mm([tuple(p) for p in shell["points"]], centre, 26.0) < 0.1


def test_placed_git_template_is_drawn_at_true_scale() -> None:
    [template] = templates_from_datasets([("1", reread(generic_implant_template(52.0)))]).templates
    calibration = Calibration(CalibrationSource.USER, 0.2, 0.2, CalibrationPlane.PATIENT)
    placement = TemplatePlacement(template.id, "52", 500.0, 400.0)
    [(shell, pixels), _] = placed_outlines(template, placement, calibration)
    assert shell.name == "shell"
    assert max(abs(math.dist(p, (500.0, 400.0)) - 130.0) for p in pixels) < 0.5  # 26 mm / 0.2 mm/px


def test_hpgl_reader_is_tolerant_where_harmless() -> None:
    paths = parse_hpgl(b"IN;DF;SP1;LBcup 52\x03PU0,0;PD40,0,40,40;PR-40,0;PU;SP2;LT2;PA;PD0,80\n80,80;SP0;\0")
    assert [(p.pen, p.dashed) for p in paths] == [(1, False), (2, True)]
    assert paths[0].points == [(0.0, 0.0), (40.0, 0.0), (40.0, 40.0), (0.0, 40.0)]  # PR: relative
    assert paths[1].points == [(0.0, 40.0), (0.0, 80.0), (80.0, 80.0)]
    assert parse_hpgl("pu 0 0 ; pd 10 0 ;")[0].points == [(0.0, 0.0), (10.0, 0.0)]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"", "empty"),
        (b"IN;SP1;PU0,0;", "draws nothing"),
        (b"IN;SC0,100,0,100;PD10,10;", "plotter scaling (SC)"),
        (b"IN;PU0,0;AA10,10,90;", "arcs (AA)"),
        (b"IN;PU0,0;PD10,10,20;", "x,y pairs"),
        (b"IN;PU0,0;PD1.2.3,5;", "unreadable parameters"),
        (b"IN;\xff\xfe", "expected a two-letter command"),
        (b"IN;ZZ1;", "'ZZ' is not supported"),
    ],
)
def test_unreadable_hpgl_is_refused_with_a_message(document: bytes, message: str) -> None:
    with pytest.raises(HpglError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_hpgl(document)


def test_missing_scale_or_drawing_refuses_that_instance_only() -> None:
    no_scale = generic_implant_template(44.0)
    del no_scale.HPGLDocumentSequence[0].HPGLDocumentScaling
    no_drawing = generic_implant_template(46.0)
    del no_drawing.HPGLDocumentSequence
    malformed = generic_implant_template(54.0, hpgl=b"IN;SP1;PU0,0;PD10,10,20;")
    good = generic_implant_template(52.0)
    result = templates_from_datasets(
        (ds.SOPInstanceUID, reread(ds)) for ds in (no_scale, no_drawing, malformed, good)
    )
    assert [t.sizes[0].size for t in result.templates] == ["52"]
    messages = {p["sop_instance_uid"]: p["message"] for p in result.problems}
    assert "HPGL Document Scaling" in messages[no_scale.SOPInstanceUID]
    assert "no 2D drawing" in messages[no_drawing.SOPInstanceUID]
    assert "x,y pairs" in messages[malformed.SOPInstanceUID]


def test_archive_templates_are_listed_and_placed_over_http(
    tessera_server_factory: Callable[..., Any], tmp_path: Any
) -> None:
    server = tessera_server_factory(data_dir=tmp_path / "git")
    archive = server.ctx.archive
    malformed = generic_implant_template(54.0, hpgl=b"IN;SP1;PU0,0;PD10,10,20;")
    for ds in (generic_implant_template(50.0), generic_implant_template(52.0), malformed):
        assert archive.ingest_bytes(part10(ds)).ok
    status, listing = call(server.url, "GET", "/orthopedics/templates")
    assert status == 200
    imported = [t for t in listing["templates"] if t["source"] == "DICOM GIT"]
    assert [(t["name"], t["sizes"], t["type"]) for t in imported] == [
        ("Hemispherical press-fit cup", ["50", "52"], "acetabular-cup")
    ]
    assert any(t["source"] == "JSON" and t["id"] == "generic-cup-hemispherical" for t in listing["templates"])
    [problem] = listing["problems"]
    assert problem["sop_instance_uid"] == malformed.SOPInstanceUID and "x,y pairs" in problem["message"]
    template_id = imported[0]["id"]
    status, document = call(server.url, "GET", f"/orthopedics/templates/{template_id}")
    assert status == 200 and document["source"] == "DICOM GIT" and document["units"] == "mm"
    shell = next(o for o in document["sizes"][1]["outlines"] if o["name"] == "shell")
    centre = document["sizes"][1]["landmarks"]["centre"]
    assert dome_error_mm([tuple(p) for p in shell["points"]], centre, 26.0) < 0.1

    # A plan naming the imported template is evaluated by a server started later on the same
    # archive: the import runs on start, before any listing.
    pelvis = pelvis_dataset()
    assert archive.ingest_bytes(part10(pelvis)).ok
    head = PELVIS.px("head_centre_r")
    plan = {"templates": [{"id": "c1", "template_id": template_id, "size": "52", "x": head[0], "y": head[1]}]}
    sop = pelvis.SOPInstanceUID
    assert call(server.url, "PUT", f"/orthopedics/images/{sop}/plan", plan)[0] == 200
    later = tessera_server_factory(data_dir=tmp_path / "git")
    status, reopened = call(later.url, "GET", f"/orthopedics/images/{sop}/plan")
    assert status == 200
    [placed] = reopened["plan"]["templates"]
    assert "error" not in placed and placed["name"] == "Hemispherical press-fit cup"
    assert placed["landmarks_px"]["centre"] == pytest.approx(list(head))


def test_malformed_attributes_and_view_choice() -> None:
    """A broken attribute value is a problem for that instance; a lateral view listed first is
    passed over for the AP drawing."""
    broken = generic_implant_template(44.0)
    broken.HPGLDocumentSequence[0].HPGLContourPenNumber = None
    broken.PlanningLandmarkPointSequence[0].TwoDPointCoordinatesSequence[0].TwoDPointCoordinates = [1.0]
    broken.HPGLDocumentSequence[0].HPGLPenSequence[0].HPGLPenNumber = None
    two_views = generic_implant_template(52.0)
    lateral = Dataset()
    lateral.HPGLDocumentID = 2
    lateral.HPGLDocumentLabel = "Lateral"
    lateral.HPGLDocumentScaling = 1.0
    lateral.HPGLDocument = b"IN;PU0,0;SC0,1,0,1;"
    two_views.HPGLDocumentSequence = [lateral, two_views.HPGLDocumentSequence[0]]
    result = templates_from_datasets([("broken", broken), ("two", reread(two_views))])
    assert [t.sizes[0].size for t in result.templates] == ["52"]
    assert [p["sop_instance_uid"] for p in result.problems] == ["broken"]
    landmark_only = generic_implant_template(46.0)
    landmark_only.PlanningLandmarkPointSequence[0].TwoDPointCoordinatesSequence[0].TwoDPointCoordinates = [
        1.0
    ]
    [problem] = templates_from_datasets([("lm", landmark_only)]).problems
    assert "2D Point Coordinates (0068,6560) must be two numbers" in problem["message"]
