"""DICOM annotations read back onto a slide: Tessera's own ANN and TID 1500 report, and objects
another tool built with highdicom (2D on another pyramid level, 3D slide coordinates) and sent by STOW."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from modules.pathology.dicom_annotations import source_image
from modules.pathology.measurement_report import report_dataset
from sample_data.wsi import SIZES, GeneratedSlide, generate
from server.serve import BackgroundServer
from tests.browser import CHROMIUM, CHROMIUM_ARGS

MPP_MM = 0.00025  # the sample slide: 0.25 µm per pixel


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return generate(SIZES["small"], tmp_path_factory.mktemp("wsi"))


@pytest.fixture
def served(
    slide: GeneratedSlide, db_url: str, tessera_server_factory: Callable[..., BackgroundServer]
) -> BackgroundServer:
    server = tessera_server_factory()
    for path in slide.dicom_files:
        assert server.ctx.archive.ingest_path(path).ok
    return server


def slide_url(served: BackgroundServer, slide: GeneratedSlide) -> str:
    return f"{served.url}/pathology/slides/{slide.spec.series_instance_uid}"


def level(slide: GeneratedSlide, index: int) -> Dataset:
    return pydicom.dcmread(slide.dicom_files[index], stop_before_pixels=True)


def other_tool_ann(
    source: Dataset,
    coordinate_type: str,
    groups: list[tuple[str, str, list[np.ndarray]]],
) -> hd.ann.MicroscopyBulkSimpleAnnotations:
    """An ANN as another viewer would write it: its own UIDs, manufacturer and property codes."""
    return hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source],
        annotation_coordinate_type=coordinate_type,
        annotation_groups=[
            hd.ann.AnnotationGroup(
                number=number,
                uid=generate_uid(),
                label=label,
                annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                annotated_property_type=codes.SCT.Neoplasm,
                graphic_type=graphic_type,
                graphic_data=shapes,
                algorithm_type="MANUAL",
            )
            for number, (label, graphic_type, shapes) in enumerate(groups, start=1)
        ],
        series_instance_uid=generate_uid(),
        series_number=77,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Other Microscopy Viewer",
        manufacturer_model_name="OMV",
        software_versions="3.1",
        device_serial_number="OMV-1",
        series_description="Tumour outlines (OMV)",
    )


def dicom_annotations(served: BackgroundServer, slide: GeneratedSlide) -> dict[str, Any]:
    response = requests.get(slide_url(served, slide) + "/dicom-annotations", timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/geo+json")
    return dict(response.json())


def features_of(collection: dict[str, Any], source_kind: str) -> list[dict[str, Any]]:
    index = [i for i, s in enumerate(collection["sources"]) if s["kind"] == source_kind]
    assert len(index) == 1, collection["sources"]
    return [f for f in collection["features"] if f["properties"]["source"] == index[0]]


def test_own_annotations_and_report_read_back(served: BackgroundServer, slide: GeneratedSlide) -> None:
    """Store as DICOM writes an ANN and a TID 1500 report; both come back on the slide's pixels."""
    polygon = [[100.25, 200.5], [900.0, 210.0], [880.5, 700.0], [120.0, 650.0], [100.25, 200.5]]
    line = [[1500.0, 100.0], [1800.0, 500.0]]
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [polygon]},
                "properties": {"label": "tumour"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": line},
                "properties": {"label": "margin"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [50.0, 60.0]},
                "properties": {"label": "mitosis"},
            },
        ],
    }
    assert dicom_annotations(served, slide) == {"type": "FeatureCollection", "features": [], "sources": []}
    stored = requests.put(
        slide_url(served, slide) + "/annotations?archive=1", json=collection, timeout=20
    ).json()
    assert stored["dicom"]["stored"] is True and stored["report"]["stored"] is True
    report = served.ctx.archive.instance_by_uid(stored["report"]["SOPInstanceUID"])
    assert report is not None and report.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.34"

    read = dicom_annotations(served, slide)
    kinds = {s["kind"]: s for s in read["sources"]}
    assert set(kinds) == {"annotations", "measurement-report"}
    assert kinds["annotations"]["manufacturer"] == "Tessera" and kinds["annotations"]["content_date"]
    by_label = {f["properties"]["label"]: f for f in features_of(read, "annotations")}
    assert by_label["tumour"]["geometry"]["type"] == "Polygon"
    np.testing.assert_allclose(by_label["tumour"]["geometry"]["coordinates"][0], polygon, atol=1.0)
    np.testing.assert_allclose(by_label["margin"]["geometry"]["coordinates"], line, atol=1.0)
    assert by_label["mitosis"]["geometry"] == {"type": "Point", "coordinates": [50.0, 60.0]}

    measured = {f["properties"]["label"]: f for f in features_of(read, "measurement-report")}
    assert set(measured) == {"tumour #1", "margin #2"}  # points carry no measurement
    (length,) = measured["margin #2"]["properties"]["measurements"]
    assert length["name"] == "Length" and length["unit"] == "um"
    assert length["value"] == pytest.approx(500 * MPP_MM * 1000, rel=1e-6)  # a 300-400-500 triangle
    np.testing.assert_allclose(measured["margin #2"]["geometry"]["coordinates"], line, atol=1.0)
    (area,) = measured["tumour #1"]["properties"]["measurements"]
    ring = np.asarray(polygon[:-1])
    shoelace = (
        abs(np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], -1))) / 2
    )
    assert area["unit"] == "mm2" and area["value"] == pytest.approx(shoelace * MPP_MM**2, rel=1e-6)
    np.testing.assert_allclose(measured["tumour #1"]["geometry"]["coordinates"][0], polygon, atol=1.0)

    # only the measurement report, on request
    only_sr = requests.put(
        slide_url(served, slide) + "/annotations?archive=sr", json=collection, timeout=20
    ).json()
    assert "dicom" not in only_sr and only_sr["report"]["stored"] is True
    bad = requests.put(slide_url(served, slide) + "/annotations?archive=pdf", json=collection, timeout=20)
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"


def test_report_is_a_valid_tid_1500_document(slide: GeneratedSlide) -> None:
    """The SR parses back with highdicom: SCOORD3D on the slide's frame of reference, UCUM units."""
    source = level(slide, 0)
    line = [[0.0, 0.0], [400.0, 300.0]]
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": line},
                "properties": {"label": "x"},
            }
        ],
    }
    dataset = report_dataset(collection, source)
    assert dataset is not None
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    document = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    report = hd.sr.MeasurementReport.from_sequence([document])
    (group,) = report.get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "x #1" and group.tracking_uid
    assert isinstance(group.roi, hd.sr.ImageRegion3D)
    assert group.roi.frame_of_reference_uid == source.FrameOfReferenceUID
    # slide coordinates as highdicom places the pixels, independently of Tessera's geometry code
    to_slide = hd.spatial.PixelToReferenceTransformer(
        image_position=[
            source.TotalPixelMatrixOriginSequence[0].XOffsetInSlideCoordinateSystem,
            source.TotalPixelMatrixOriginSequence[0].YOffsetInSlideCoordinateSystem,
            0.0,
        ],
        image_orientation=source.ImageOrientationSlide,
        pixel_spacing=source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing,
    )
    np.testing.assert_allclose(group.roi.value, to_slide(np.asarray(line, dtype=int)), atol=1e-5)
    (measurement,) = group.get_measurements()
    assert measurement.name == codes.SCT.Length
    assert measurement.unit.value == "um" and measurement.unit.scheme_designator == "UCUM"
    assert measurement.value == pytest.approx(125.0)
    assert str(document.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID) == str(
        slide.spec.study_instance_uid
    )
    nothing = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}
        ],
    }
    assert report_dataset(nothing, source) is None


def test_another_tools_annotations_arrive_by_stow(served: BackgroundServer, slide: GeneratedSlide) -> None:
    """2D coordinates on pyramid level 1 (POLYGON, POINT) and 3D slide coordinates both land on level 0."""
    level_1 = level(slide, 1)
    assert level_1.TotalPixelMatrixColumns * 2 == slide.spec.width
    polygon_l1 = np.array([[10.0, 20.0], [300.5, 25.0], [310.0, 400.25], [15.0, 380.0]], dtype=np.float32)
    points_l1 = [np.array([[500.0, 600.0]], dtype=np.float32), np.array([[42.5, 17.0]], dtype=np.float32)]
    flat = other_tool_ann(
        level_1, "2D", [("Tumour", "POLYGON", [polygon_l1]), ("Mitoses", "POINT", points_l1)]
    )
    # 3D: level-0 pixels placed on the slide with highdicom's own transformer
    base = level(slide, 0)
    origin = base.TotalPixelMatrixOriginSequence[0]
    to_slide = hd.spatial.PixelToReferenceTransformer(
        image_position=[origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem, 0.0],
        image_orientation=base.ImageOrientationSlide,
        pixel_spacing=base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing,
    )
    outline_l0 = np.array([[1000, 1000], [1400, 1000], [1400, 1300]])
    solid = other_tool_ann(base, "3D", [("Necrosis", "POLYGON", [to_slide(outline_l0)])])
    # an ANN of another slide (its own series and frame of reference) is not this slide's
    elsewhere = Dataset()
    elsewhere.update(base)
    elsewhere.SeriesInstanceUID, elsewhere.SOPInstanceUID = generate_uid(), generate_uid()
    elsewhere.FrameOfReferenceUID = generate_uid()
    foreign = other_tool_ann(elsewhere, "3D", [("Elsewhere", "POLYGON", [to_slide(outline_l0)])])
    client = DICOMwebClient(served.url + "/dicom-web")
    client.store_instances([flat, solid, foreign])

    read = dicom_annotations(served, slide)
    sources = {s["SOPInstanceUID"]: s for s in read["sources"]}
    assert set(sources) == {flat.SOPInstanceUID, solid.SOPInstanceUID}
    described = sources[flat.SOPInstanceUID]
    assert described["manufacturer"] == "Other Microscopy Viewer"
    assert described["series_description"] == "Tumour outlines (OMV)" and described["content_date"]
    features = read["features"]
    tumour = [f for f in features if f["properties"]["label"] == "Tumour"]
    assert len(tumour) == 1 and tumour[0]["properties"]["property_type"] == "Neoplasm"
    ring = np.asarray(tumour[0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(ring[:-1], polygon_l1 * 2, atol=1.0)
    assert ring[0].tolist() == ring[-1].tolist()  # GeoJSON rings are closed
    mitoses = sorted(f["geometry"]["coordinates"] for f in features if f["properties"]["label"] == "Mitoses")
    np.testing.assert_allclose(mitoses, [[85.0, 34.0], [1000.0, 1200.0]], atol=1.0)
    (necrosis,) = [f for f in features if f["properties"]["label"] == "Necrosis"]
    np.testing.assert_allclose(np.asarray(necrosis["geometry"]["coordinates"][0])[:-1], outline_l0, atol=1.0)
    assert not [f for f in features if f["properties"]["label"] == "Elsewhere"]


def test_unreadable_objects_are_reported_not_fatal(served: BackgroundServer, slide: GeneratedSlide) -> None:
    base = level(slide, 0)
    broken = other_tool_ann(base, "2D", [("Broken", "POINT", [np.array([[1.0, 2.0]], dtype=np.float32)])])
    del broken.AnnotationGroupSequence[0].PointCoordinatesData  # no coordinates at all
    buffer = io.BytesIO()
    broken.save_as(buffer, enforce_file_format=True)
    assert served.ctx.archive.ingest_bytes(buffer.getvalue()).ok
    read = dicom_annotations(served, slide)
    (source,) = read["sources"]
    assert source["SOPInstanceUID"] == broken.SOPInstanceUID and source["error"] and source["features"] == 0
    assert read["features"] == []
    assert requests.get(slide_url(served, slide) + "/info", timeout=10).status_code == 200


def test_dicom_annotations_of_no_slide(served: BackgroundServer, slide: GeneratedSlide) -> None:
    for uid, status in [("1.2.3.4", 404), ("not-a-uid", 400)]:
        response = requests.get(f"{served.url}/pathology/slides/{uid}/dicom-annotations", timeout=10)
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/problem+json"
    info = requests.get(slide_url(served, slide) + "/info", timeout=10).json()
    assert info["dicom_annotations"].endswith("/dicom-annotations")


def test_source_image_keeps_geometry(slide: GeneratedSlide, tmp_path: Path) -> None:
    """The header the archive keeps is enough to place shapes (no file read per request)."""
    base = level(slide, 0)
    header = json.dumps(base.to_json_dict())
    rebuilt = source_image(header)
    assert rebuilt.FrameOfReferenceUID == base.FrameOfReferenceUID
    assert list(rebuilt.ImageOrientationSlide) == list(base.ImageOrientationSlide)


SCREENSHOTS = Path(__file__).parent / "artifacts"


def wait_for(page: Any, attribute: str, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
    """Polls a body data attribute (wait_for_function would need eval, which the CSP forbids)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate(value := page.get_attribute("body", attribute) or ""):
        assert time.monotonic() < deadline, f"{attribute} still {value!r} after {timeout} s"
        page.wait_for_timeout(100)
    return value


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_viewer_shows_dicom_annotations_read_only(
    slide: GeneratedSlide, tessera_server_factory: Callable[..., BackgroundServer]
) -> None:
    from playwright.sync_api import sync_playwright

    served = tessera_server_factory()  # SQLite: the browser sees the same JSON either way
    for path in slide.dicom_files:
        assert served.ctx.archive.ingest_path(path).ok
    outline = np.array([[200.0, 150.0], [700.0, 160.0], [650.0, 600.0], [220.0, 560.0]], dtype=np.float32)
    foreign = other_tool_ann(level(slide, 0), "2D", [("Tumour", "POLYGON", [outline])])
    DICOMwebClient(served.url + "/dicom-web").store_instances([foreign])
    url = (
        f"{served.url}/pathology/static/viewer.html"
        f"?study={slide.spec.study_instance_uid}&series={slide.spec.series_instance_uid}"
    )
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(url)
            wait_for(page, "data-dicom-shapes", lambda v: v == "1")
            wait_for(page, "data-tiles-drawn", lambda v: int(v or 0) >= 4)
            source = page.text_content("#dicom-sources li") or ""
            assert "Tumour outlines (OMV)" in source and "Other Microscopy Viewer" in source
            date = str(foreign.ContentDate)
            assert f"{date[:4]}-{date[4:6]}-{date[6:8]}" in source
            page.wait_for_selector("#dicom-overlay polygon")
            assert "Tumour" in (page.text_content("#dicom-overlay text") or "")
            assert page.locator("#overlay polygon").count() == 0  # not mixed into the editable layer

            # measure a length, store both DICOM objects: the report comes back as a second source
            page.keyboard.press("l")
            box = page.locator("#viewer").bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + 600, box["y"] + 600)
            page.mouse.click(box["x"] + 800, box["y"] + 600)
            page.wait_for_selector("#overlay text")
            page.click("#archive")
            # the foreign polygon, our ANN line, our SR line
            wait_for(page, "data-dicom-shapes", lambda v: v == "3")
            assert page.locator("#dicom-sources li").count() == 3
            texts = " ".join(page.locator("#dicom-overlay text").all_text_contents())
            assert "µm" in texts  # the report's measurement, formatted
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.locator("#dicom-sources").scroll_into_view_if_needed()  # the source list in the picture
            page.screenshot(path=str(SCREENSHOTS / "pathology-dicom-annotations.png"))

            page.locator("#dicom-sources li input").first.uncheck()  # hide one source
            assert page.locator("#dicom-overlay polygon").count() == 0
            page.uncheck("#dicom-layer")
            assert page.locator("#dicom-overlay > *").count() == 0
            page.check("#dicom-layer")
            assert page.locator("#dicom-overlay polyline").count() == 2
        finally:
            browser.close()
    assert not errors, errors
