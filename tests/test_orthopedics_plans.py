"""Plan documents: validation, the store (atomic, concurrent writers), evaluation, burn-in and exports."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest

from modules.orthopedics.export import build_pdf, build_secondary_capture, build_sr, to_bytes
from modules.orthopedics.overlay import burn_in
from modules.orthopedics.plans import (
    ImageRecord,
    Plan,
    PlanError,
    PlanStore,
    evaluate_plan,
    parse_plan,
)
from modules.orthopedics.templates import TemplateLibrary
from sample_data.orthopedics import PELVIS
from server.archive.archive import Archive
from server.archive.documents import DocumentStore
from server.imaging.calibration import Calibration, CalibrationSource, calibrate_from_circle

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


@pytest.fixture(scope="module")
def library() -> TemplateLibrary:
    return TemplateLibrary()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"measurements": {}}, "must be lists"),
        ({"measurements": [{"kind": "length", "points": [[0, "x"]]}]}, "measurement 1: point coordinates"),
        ({"measurements": [{"kind": "length", "points": [[0, 0], [1, 1]], "side": "X"}]}, "side"),
        ({"measurements": [{"id": "a b", "kind": "length", "points": []}]}, "item id"),
        (
            {"measurements": [{"kind": "volume", "points": [[0, 0]]}]},
            "measurement 1: unknown measurement 'volume'",
        ),
        (
            {"templates": [{"template_id": "generic-cup-hemispherical", "size": "51", "x": 0, "y": 0}]},
            "no size",
        ),
        ({"templates": [{"template_id": "generic-cup-hemispherical", "size": "50"}]}, "needs template_id"),
        (
            {
                "measurements": [{"id": "a", "kind": "length", "points": []}],
                "templates": [
                    {"id": "a", "template_id": "generic-cup-hemispherical", "size": "50", "x": 0, "y": 0}
                ],
            },
            "unique",
        ),
    ],
)
def test_bad_plans_name_the_item_at_fault(library: TemplateLibrary, document: object, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_plan(document, library)


def test_store_round_trip_and_concurrent_updates(archive: Archive, library: TemplateLibrary) -> None:
    store = PlanStore(DocumentStore(archive.sessions))
    assert store.load(STUDY, SERIES, SOP).plan == Plan()
    plan = parse_plan(
        {
            "measurements": [{"id": "m1", "kind": "length", "points": [[1, 2], [3, 4]], "label": "x"}],
            "templates": [
                {"id": "t1", "template_id": "generic-cup-hemispherical", "size": "50", "x": 5, "y": 6}
            ],
            "note": "n",
        },
        library,
    )
    user = calibrate_from_circle((10, 10), 50, 25)

    def change(record: ImageRecord) -> None:
        record.plan = Plan(plan.measurements, plan.templates, plan.note, record.plan.revision + 1, "now")
        record.user_calibration = user

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: store.update(STUDY, SERIES, SOP, change), range(40)))
    loaded = store.load(STUDY, SERIES, SOP)
    assert loaded.plan.revision == 40  # no update lost
    assert loaded.plan.measurements == plan.measurements and loaded.plan.templates == plan.templates
    assert loaded.user_calibration == user
    stored = store.shelf.get(store.key_for(STUDY, SOP))
    assert stored is not None and stored.version == 40
    assert stored.body["format"] == "tessera.orthopedic-plan/1"
    with pytest.raises(PlanError, match="UID"):
        store.key_for("../etc", SOP)


def test_evaluation_follows_the_calibration(library: TemplateLibrary) -> None:
    plan = parse_plan({"measurements": [{"kind": "length", "points": [[0, 0], [100, 0]]}]}, library)
    fine = evaluate_plan(plan, Calibration(CalibrationSource.USER, 0.1, 0.1), library, 1000)
    coarse = evaluate_plan(plan, Calibration(CalibrationSource.USER, 0.2, 0.2), library, 1000)
    assert fine["measurements"][0]["result"]["quantities"][0]["value"] == pytest.approx(10)
    assert coarse["measurements"][0]["result"]["quantities"][0]["value"] == pytest.approx(20)


def test_a_removed_template_is_reported_not_fatal(tmp_path: Path, library: TemplateLibrary) -> None:
    plan = parse_plan(
        {"templates": [{"template_id": "generic-cup-hemispherical", "size": "50", "x": 5, "y": 6}]}, library
    )
    empty = TemplateLibrary([tmp_path])
    evaluated = evaluate_plan(plan, Calibration(CalibrationSource.USER, 0.2, 0.2), empty, 100)
    assert "no template" in evaluated["templates"][0]["error"]
    image = burn_in(
        np.zeros((60, 80), dtype=np.uint8), evaluated, Calibration(CalibrationSource.USER, 0.2, 0.2), empty
    )
    assert image.size == (80, 60)


def test_burn_in_draws_templates_where_the_maths_puts_them(library: TemplateLibrary) -> None:
    calibration = Calibration(CalibrationSource.USER, 0.2, 0.2)
    plan = parse_plan(
        {"templates": [{"template_id": "generic-cup-hemispherical", "size": "50", "x": 300, "y": 300}]},
        library,
    )
    evaluated = evaluate_plan(plan, calibration, library, 600)
    image = np.asarray(burn_in(np.zeros((600, 600), dtype=np.uint8), evaluated, calibration, library))
    blue = (image[..., 2] > 200) & (image[..., 0] < 150)
    rows = np.nonzero(blue[300])[0]  # the opening line of the shell along y = 300
    # 50 mm at 0.2 mm/px = 250 px wide, from x = 175 to 425 (± the stroke).
    assert abs(rows.min() - 175) <= 3 and abs(rows.max() - 425) <= 3


def test_exports_are_valid_dicom_and_pdf(library: TemplateLibrary) -> None:
    header = pydicom.Dataset()
    header.PatientName, header.PatientID, header.StudyInstanceUID = "Test^Patient", "P1", "1.2.3"
    header.SeriesInstanceUID, header.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5"
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    header.Modality, header.StudyDate, header.StudyTime, header.AccessionNumber = (
        "DX",
        "20250101",
        "101010",
        "A1",
    )
    header.StudyID, header.ReferringPhysicianName, header.PatientBirthDate, header.PatientSex = (
        "1",
        "",
        "",
        "O",
    )
    s = PELVIS.patient_pixel_spacing_mm
    calibration = Calibration(CalibrationSource.USER, s, s)
    px = PELVIS.px
    plan = parse_plan(
        {"measurements": [{"kind": "length", "points": [px("teardrop_r"), px("teardrop_l")]}], "note": "ü"},
        library,
    )
    evaluated = evaluate_plan(plan, calibration, library, PELVIS.columns)
    sr = pydicom.dcmread(io.BytesIO(to_bytes(build_sr(header, evaluated, calibration, 1))))
    (number,) = [item for item in sr.ContentSequence if item.ValueType == "NUM"]
    assert float(number.MeasuredValueSequence[0].NumericValue) == pytest.approx(104.0)
    assert number.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    burned = burn_in(np.zeros((120, 160), dtype=np.uint8), evaluated, calibration, library)
    sc = pydicom.dcmread(io.BytesIO(to_bytes(build_secondary_capture(header, burned, 1, calibration))))
    assert sc.pixel_array.shape == (120, 160, 3) and sc.PatientOrientation == ""
    assert build_pdf(burned, evaluated, calibration, header).startswith(b"%PDF")
