"""The orthopedics routes over real HTTP: calibration GET/PUT, marker proposal, measurements, plans saved and
reopened by another server, archived as DICOM SR + Secondary Capture (found by QIDO), the PDF, bad input."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from modules.orthopedics import module as orthopedics_module
from sample_data.orthopedics import LONG_LEG, PELVIS, pelvis_dataset, write_orthopedics_demo
from server.modules import ModuleRegistry, SeriesRecord


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request) as response:
            payload = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(payload) if "json" in kind else payload
    except urllib.error.HTTPError as error:
        payload = error.read()
        return error.code, json.loads(payload) if payload.startswith(b"{") else payload


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_orthopedics_demo(tmp_path_factory.mktemp("ortho-files"))


@pytest.fixture
def server(tessera_server: Any, sample_files: list[Path]) -> Any:
    for path in sample_files:
        assert tessera_server.ctx.archive.ingest_path(path).ok
    return tessera_server


@pytest.fixture(scope="module")
def pelvis(sample_files: list[Path]) -> Dataset:
    return pydicom.dcmread(sample_files[0], stop_before_pixels=True)


def test_module_claims_radiographs_not_mammograms() -> None:
    def record(modality: str, sop_class: str, body_part: str = "") -> SeriesRecord:
        return SeriesRecord("1.2", "1.2.3", modality, frozenset({sop_class}), body_part)

    assert orthopedics_module.claims(record("DX", "1.2.840.10008.5.1.4.1.1.1.1", "PELVIS"))
    assert orthopedics_module.claims(record("CR", "1.2.840.10008.5.1.4.1.1.1"))
    assert orthopedics_module.claims(record("OT", "1.2.840.10008.5.1.4.1.1.7", "KNEE"))
    assert not orthopedics_module.claims(record("OT", "1.2.840.10008.5.1.4.1.1.7", "HEAD"))
    assert not orthopedics_module.claims(record("MG", "1.2.840.10008.5.1.4.1.1.1.2"))
    assert not orthopedics_module.claims(record("DX", "1.2.840.10008.5.1.4.1.1.1.1", "BREAST"))
    assert not orthopedics_module.claims(record("CT", "1.2.840.10008.5.1.4.1.1.2"))
    assert not orthopedics_module.claims(record("CR", "1.2.840.10008.5.1.4.1.1.1", "CHEST"))
    registry = ModuleRegistry.discover()
    claimed = registry.claim(record("DX", "1.2.840.10008.5.1.4.1.1.1.1", "PELVIS"))
    assert claimed is not None and claimed.id == "orthopedics"


def test_calibration_get_put_delete(server: Any, pelvis: Dataset) -> None:
    base, sop = server.url, pelvis.SOPInstanceUID
    status, active = call(base, "GET", f"/orthopedics/images/{sop}/calibration")
    assert status == 200 and active["source"] == "imager-spacing-magnification"
    assert active["mm_per_pixel"]["column"] == pytest.approx(PELVIS.patient_pixel_spacing_mm)

    status, proposal = call(base, "POST", f"/orthopedics/images/{sop}/marker", {})
    assert status == 200
    assert abs(proposal["radius_px"] / PELVIS.marker_radius_px - 1) < 0.01
    status, user = call(
        base,
        "PUT",
        f"/orthopedics/images/{sop}/calibration",
        {"method": "circle", "centre": proposal["centre"], "radius_px": proposal["radius_px"]},
    )
    assert status == 200 and user["source"] == "user"
    assert user["marker"]["size_mm"] == 25.0 and user["marker"]["centre"] == proposal["centre"]
    assert abs(user["mm_per_pixel"]["column"] / PELVIS.patient_pixel_spacing_mm - 1) < 0.01
    assert call(base, "GET", f"/orthopedics/images/{sop}/calibration")[1]["source"] == "user"

    # A line of known length: the inter-teardrop distance (104 mm).
    status, line = call(
        base,
        "PUT",
        f"/orthopedics/images/{sop}/calibration",
        {"method": "line", "points": [PELVIS.px("teardrop_r"), PELVIS.px("teardrop_l")], "length_mm": 104},
    )
    assert status == 200 and line["mm_per_pixel"]["column"] == pytest.approx(PELVIS.patient_pixel_spacing_mm)

    status, chosen = call(
        base,
        "PUT",
        f"/orthopedics/images/{sop}/calibration",
        {"method": "dicom", "source": "imager-spacing-detector"},
    )
    assert status == 200 and chosen["plane"] == "detector" and chosen["chosen_by_user"]

    status, reverted = call(base, "DELETE", f"/orthopedics/images/{sop}/calibration")
    assert status == 200 and reverted["source"] == "imager-spacing-magnification"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"method": "circle", "centre": [10, 10], "radius_px": 50, "diameter_mm": 0}, "greater than zero"),
        ({"method": "circle", "centre": [10, 10], "radius_px": 50, "diameter_mm": -5}, "greater than zero"),
        ({"method": "circle", "centre": [10, 10], "radius_px": 0}, "radius"),
        ({"method": "line", "points": [[0, 0], [100, 0]], "length_mm": 0}, "greater than zero"),
        ({"method": "line", "points": [[0, 0]], "length_mm": 10}, "2 points"),
        ({"method": "dicom", "source": "pixel-spacing"}, "no pixel-spacing"),
        ({"method": "guess"}, "method must be"),
    ],
)
def test_bad_calibrations_are_refused_and_change_nothing(
    server: Any, pelvis: Dataset, body: dict[str, Any], detail: str
) -> None:
    base, sop = server.url, pelvis.SOPInstanceUID
    status, problem = call(base, "PUT", f"/orthopedics/images/{sop}/calibration", body)
    assert status == 400, problem
    assert detail in problem["detail"]
    assert (
        call(base, "GET", f"/orthopedics/images/{sop}/calibration")[1]["source"]
        == "imager-spacing-magnification"
    )


def test_bad_requests(server: Any, pelvis: Dataset) -> None:
    base, sop = server.url, pelvis.SOPInstanceUID
    status, problem = call(base, "GET", "/orthopedics/images/1.2.3.4/calibration")
    assert status == 404 and "1.2.3.4" in problem["detail"]
    status, problem = call(base, "PUT", f"/orthopedics/images/{sop}/calibration", raw=b"{not json")
    assert status == 400 and "not JSON" in problem["detail"]
    status, problem = call(
        base, "POST", f"/orthopedics/images/{sop}/measurements", {"kind": "length", "points": [[0, 0]]}
    )
    assert status == 400 and "2 points" in problem["detail"]
    status, problem = call(
        base,
        "PUT",
        f"/orthopedics/images/{sop}/plan",
        {"templates": [{"template_id": "no-such", "size": "1", "x": 0, "y": 0}]},
    )
    assert status == 400 and "no-such" in problem["detail"]
    status, problem = call(base, "POST", f"/orthopedics/images/{sop}/plan/archive")
    assert status == 409 and "empty" in problem["detail"]
    assert call(base, "GET", "/orthopedics/templates/nothing")[0] == 404


def test_contradictory_spacing_gives_pixels_and_a_message(tessera_server: Any, tmp_path: Path) -> None:
    ds = pelvis_dataset()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelSpacing = [0.1, 0.1]
    path = tmp_path / "contradictory.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert tessera_server.ctx.archive.ingest_path(path).ok
    base, sop = tessera_server.url, ds.SOPInstanceUID
    status, calibration = call(base, "GET", f"/orthopedics/images/{sop}/calibration")
    assert status == 200
    assert calibration["calibrated"] is False and calibration["mm_per_pixel"] is None
    assert any("contradicts" in p for p in calibration["problems"])
    status, result = call(
        base,
        "POST",
        f"/orthopedics/images/{sop}/measurements",
        {"kind": "length", "points": [[0, 0], [30, 40]]},
    )
    assert status == 200 and result["quantities"][0] == {"name": "length", "value": 50.0, "unit": "px"}
    assert "mm" not in result["summary"]
    status, problem = call(
        base,
        "PUT",
        f"/orthopedics/images/{sop}/plan",
        {"templates": [{"template_id": "generic-cup-hemispherical", "size": "50", "x": 1, "y": 1}]},
    )
    assert status == 200  # saved, but not drawn: the template says why
    assert "calibrate" in problem["plan"]["templates"][0]["error"]


def test_measurements_use_the_active_calibration(server: Any, sample_files: list[Path]) -> None:
    leg = pydicom.dcmread(sample_files[1], stop_before_pixels=True)
    base, sop = server.url, leg.SOPInstanceUID
    px = LONG_LEG.px
    status, hka = call(
        base,
        "POST",
        f"/orthopedics/images/{sop}/measurements",
        {"kind": "hka", "points": [px("hip_r"), px("knee_r"), px("ankle_r")]},
    )
    assert status == 200 and hka["quantities"][1]["value"] == pytest.approx(6.0, abs=1e-3)
    assert hka["calibration_source"] == "pixel-spacing"
    status, kinds = call(base, "GET", "/orthopedics/measurement-kinds")
    assert status == 200 and kinds["mpta"]["count"] == 4


def _pelvis_plan() -> dict[str, Any]:
    px = PELVIS.px
    head = px("head_centre_r")
    return {
        "measurements": [
            {
                "id": "lld",
                "kind": "leg-length",
                "points": [
                    px("teardrop_r"),
                    px("teardrop_l"),
                    px("lesser_trochanter_r"),
                    px("lesser_trochanter_l"),
                ],
            },
            {
                "id": "cup",
                "kind": "cup-inclination",
                "label": "Left cup",
                "points": [
                    px("cup_rim_lateral_l"),
                    px("cup_rim_medial_l"),
                    px("teardrop_r"),
                    px("teardrop_l"),
                ],
            },
            {
                "id": "off",
                "kind": "femoral-offset",
                "points": [head, px("shaft_top_r"), px("shaft_bottom_r")],
            },
        ],
        "templates": [
            {
                "id": "c1",
                "template_id": "generic-cup-hemispherical",
                "size": "52",
                "x": head[0],
                "y": head[1],
                "rotation_deg": 40,
            },
            {
                "id": "s1",
                "template_id": "generic-stem-uncemented-standard",
                "size": "5",
                "x": head[0],
                "y": head[1] + 46,
                "rotation_deg": -7,
            },
        ],
        "note": "Right THA",
    }


def test_plan_round_trip_archive_and_report(
    tessera_server_factory: Callable[..., Any], sample_files: list[Path], pelvis: Dataset, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    first = tessera_server_factory(data_dir=data_dir)
    for path in sample_files:
        assert first.ctx.archive.ingest_path(path).ok
    sop, study = pelvis.SOPInstanceUID, pelvis.StudyInstanceUID
    status, saved = call(
        first.url, "PUT", f"/orthopedics/images/{sop}/plan", _pelvis_plan(), {"If-Match": "0"}
    )
    assert status == 200 and saved["plan"]["revision"] == 1
    values = {m["id"]: m["result"]["quantities"] for m in saved["plan"]["measurements"]}
    assert values["lld"][2]["value"] == pytest.approx(-10.0, abs=1e-3)
    assert values["cup"][0]["value"] == pytest.approx(42.0, abs=1e-3)
    assert values["off"][0]["value"] == pytest.approx(41.0, abs=1e-3)
    (reconstruction,) = saved["plan"]["reconstruction"]
    assert reconstruction["leg_length_change"]["value"] == pytest.approx(
        46 * PELVIS.patient_pixel_spacing_mm, abs=1e-3
    )
    # The same plan evaluated while being edited (nothing saved) gives the same values.
    status, unsaved = call(first.url, "POST", f"/orthopedics/images/{sop}/plan/evaluate", _pelvis_plan())
    assert status == 200 and unsaved["plan"]["reconstruction"] == saved["plan"]["reconstruction"]
    # A stale revision is refused rather than overwriting someone else's plan.
    status, problem = call(
        first.url, "PUT", f"/orthopedics/images/{sop}/plan", _pelvis_plan(), {"If-Match": "0"}
    )
    assert status == 409 and problem["current_revision"] == 1

    # Another server process on the same data folder reopens exactly the same plan.
    second = tessera_server_factory(data_dir=data_dir)
    status, reopened = call(second.url, "GET", f"/orthopedics/images/{sop}/plan")
    assert status == 200 and reopened == call(first.url, "GET", f"/orthopedics/images/{sop}/plan")[1]
    assert reopened["plan"] == saved["plan"]

    status, archived = call(first.url, "POST", f"/orthopedics/images/{sop}/plan/archive")
    assert status == 201
    status, series = call(
        first.url,
        "GET",
        f"/dicom-web/studies/{study}/series?Modality=SR",
        headers={"Accept": "application/dicom+json"},
    )
    assert status == 200 and [s["0020000E"]["Value"][0] for s in series] == [
        archived["sr"]["series_instance_uid"]
    ]
    status, found = call(
        first.url,
        "GET",
        f"/dicom-web/studies/{study}/instances?SOPInstanceUID={archived['sc']['sop_instance_uid']}",
        headers={"Accept": "application/dicom+json"},
    )
    assert status == 200 and len(found) == 1

    stored_sr = first.ctx.archive.instance_by_uid(archived["sr"]["sop_instance_uid"])
    sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(stored_sr.path))
    numbers = [item for item in sr.ContentSequence if item.ValueType == "NUM"]
    inclination = [n for n in numbers if n.ConceptNameCodeSequence[0].CodeMeaning == "inclination"]
    assert float(inclination[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(42.0, abs=1e-3)
    assert (
        sr.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == sop
    )
    stored_sc = first.ctx.archive.instance_by_uid(archived["sc"]["sop_instance_uid"])
    sc = pydicom.dcmread(stored_sc.path)
    assert sc.pixel_array.shape == (PELVIS.rows, PELVIS.columns, 3)
    assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == study
    assert float(sc.PixelSpacing[1]) == pytest.approx(PELVIS.patient_pixel_spacing_mm, rel=1e-5)
    assert (
        call(second.url, "GET", f"/orthopedics/images/{sop}/plan")[1]["archived"][0]["sr"] == archived["sr"]
    )

    status, pdf = call(first.url, "GET", f"/orthopedics/images/{sop}/plan/report.pdf")
    assert status == 200 and pdf.startswith(b"%PDF") and len(pdf) > 20_000
    assert b"/Image" in pdf or b"/XObject" in pdf


def test_deep_zoom_tiles_over_the_shared_pyramid(server: Any, pelvis: Dataset) -> None:
    base, sop = server.url, pelvis.SOPInstanceUID
    status, descriptor = call(base, "GET", f"/orthopedics/images/{sop}/image.dzi")
    assert status == 200 and b'Width="1720" Height="1400"' in descriptor and b'TileSize="512"' in descriptor
    status, tile = call(base, "GET", f"/orthopedics/images/{sop}/image_files/11/1_1.jpeg")
    assert status == 200 and tile.startswith(b"\xff\xd8")
    status, windowed = call(
        base, "GET", f"/orthopedics/images/{sop}/image_files/11/1_1.jpeg?window=2400,1800"
    )
    assert status == 200 and windowed != tile
    assert call(base, "GET", f"/orthopedics/images/{sop}/image_files/11/99_99.jpeg")[0] == 404
    assert call(base, "GET", f"/orthopedics/images/{sop}/image_files/11/1_1.png")[0] == 400
    assert call(base, "GET", f"/orthopedics/images/{sop}/image.dzi?window=bad")[0] == 400
    assert call(base, "GET", "/orthopedics/images/1.2.3/image.dzi")[0] == 404


def test_templates_listing(server: Any) -> None:
    status, listing = call(server.url, "GET", "/orthopedics/templates")
    assert status == 200 and len(listing["templates"]) >= 8
    status, cup = call(server.url, "GET", "/orthopedics/templates/generic-cup-hemispherical")
    assert status == 200 and cup["sizes"][0]["properties"]["outer_diameter_mm"] == 40


def test_viewer_url_and_static(server: Any, pelvis: Dataset) -> None:
    status, study = call(server.url, "GET", f"/api/studies/{pelvis.StudyInstanceUID}")
    assert status == 200
    modules = {s["SeriesDescription"]: (s["module"] or {}).get("id") for s in study["series"]}
    assert modules == {"AP PELVIS": "orthopedics", "AP LONG LEG STANDING": "orthopedics"}
    with urllib.request.urlopen(server.url + "/orthopedics/static/viewer.html") as response:
        assert b"viewer.js" in response.read()
