"""DICOMweb through dicomweb-client, the way other tools talk to Tessera."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import Dataset, dcmread

from server.serve import BackgroundServer


@pytest.fixture
def loaded(
    db_url: str, tessera_server: BackgroundServer, varied_files: list[Path]
) -> tuple[DICOMwebClient, BackgroundServer]:
    client = DICOMwebClient(tessera_server.url + "/dicom-web")
    datasets = [dcmread(p) for p in varied_files]
    by_study: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_study.setdefault(ds.StudyInstanceUID, []).append(ds)
    for study_uid, members in by_study.items():
        response = client.store_instances(members, study_instance_uid=study_uid)
        assert len(response.ReferencedSOPSequence) == len(members)
        assert "FailedSOPSequence" not in response
    return client, tessera_server


def _by_sop(files: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}


def test_search_studies_series_instances(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path]
) -> None:
    client, _ = loaded
    studies = client.search_for_studies()
    assert len(studies) == 4
    doe = client.search_for_studies(search_filters={"PatientName": "doe*"})
    assert len(doe) == 1 and doe[0]["00100010"]["Value"][0]["Alphabetic"] == "Doe^John"
    assert sorted(doe[0]["00080061"]["Value"]) == ["CT", "OT"]
    assert doe[0]["00201208"]["Value"] == [16]
    series = client.search_for_series(doe[0]["0020000D"]["Value"][0])
    assert {s["00080060"]["Value"][0] for s in series} == {"CT", "OT"}
    ct = client.search_for_series(search_filters={"Modality": "CT"})
    assert len(ct) == 3
    instances = client.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.3.1"})
    assert len(instances) == 1 and instances[0]["00280008"]["Value"] == [10]
    ranged = client.search_for_studies(search_filters={"StudyDate": "20250401-20250405"})
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in ranged] == ["Müller^Anna"]
    paged = client.search_for_studies(limit=2, offset=2)
    assert len(paged) == 2
    by_tag = client.search_for_studies(search_filters={"00100020": "TES-0003"}, fields=["00081030"])
    assert by_tag[0]["00081030"]["Value"]


def test_retrieved_instance_equals_stored_bytes(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path]
) -> None:
    client, server = loaded
    for sop, path in _by_sop(varied_files).items():
        ds = dcmread(path, stop_before_pixels=True)
        response = requests.get(
            f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=10,
        )
        assert response.status_code == 200
        retrieved = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, sop)
        buffer = io.BytesIO()
        retrieved.save_as(buffer)
        assert path.read_bytes() in response.content  # the stored file, byte for byte, inside the part
        assert retrieved.SOPInstanceUID == sop


def test_study_retrieve_returns_every_instance(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path]
) -> None:
    client, _ = loaded
    ds = dcmread(varied_files[0], stop_before_pixels=True)
    instances = client.retrieve_study(ds.StudyInstanceUID)
    assert len(instances) == 16


def test_metadata_round_trips_to_the_same_dataset(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path]
) -> None:
    client, _ = loaded
    for sop, path in _by_sop(varied_files).items():
        original = dcmread(path, stop_before_pixels=True)
        metadata = client.retrieve_instance_metadata(
            original.StudyInstanceUID, original.SeriesInstanceUID, sop
        )
        assert "BulkDataURI" in metadata["7FE00010"]
        rebuilt = Dataset.from_json({k: v for k, v in metadata.items() if "BulkDataURI" not in v})
        for element in original:
            if element.VR in ("OB", "OW", "UN") or element.tag == 0x7FE00010:
                continue
            assert rebuilt[element.tag].value == element.value, (path.name, element.keyword)


def test_frames_come_back_in_the_negotiated_syntax(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path]
) -> None:
    client, server = loaded
    us_path = next(
        p
        for p in varied_files
        if dcmread(p, stop_before_pixels=True).Modality == "US"
        and "NumberOfFrames" in dcmread(p, stop_before_pixels=True)
    )
    us = dcmread(us_path)
    from pydicom.encaps import generate_frames

    stored_frames = list(generate_frames(us.PixelData, number_of_frames=int(us.NumberOfFrames)))
    args = (us.StudyInstanceUID, us.SeriesInstanceUID, us.SOPInstanceUID)
    jpeg = client.retrieve_instance_frames(
        *args, frame_numbers=[2, 5], media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),)
    )
    assert [bytes(f) for f in jpeg] == [
        stored_frames[1].rstrip(b"\0") if stored_frames[1].endswith(b"\xff\xd9\0") else stored_frames[1],
        stored_frames[4].rstrip(b"\0") if stored_frames[4].endswith(b"\xff\xd9\0") else stored_frames[4],
    ]
    native = client.retrieve_instance_frames(
        *args, frame_numbers=[3], media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),)
    )
    pixels = np.frombuffer(native[0], np.uint8).reshape(int(us.Rows), int(us.Columns), 3)
    reference = us.pixel_array[2]
    assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 1.0
    response = requests.get(
        f"{server.url}/dicom-web/studies/{args[0]}/series/{args[1]}/instances/{args[2]}/frames/1",
        headers={"Accept": 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90'},
        timeout=10,
    )
    assert response.status_code == 406 and response.headers["Content-Type"] == "application/problem+json"


def test_native_frames_pass_through(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path]
) -> None:
    client, _ = loaded
    ct = next(
        dcmread(p)
        for p in varied_files
        if dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        and dcmread(p, stop_before_pixels=True).Modality == "CT"
    )
    (frame,) = client.retrieve_instance_frames(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, frame_numbers=[1]
    )
    assert bytes(frame) == ct.PixelData


@pytest.mark.parametrize("modality_or_photometric", ["MONOCHROME1", "PALETTE COLOR", "YBR_FULL_422", "CT"])
def test_rendered_images(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path], modality_or_photometric: str
) -> None:
    _, server = loaded
    for path in varied_files:
        ds = dcmread(path, stop_before_pixels=True)
        if modality_or_photometric in (ds.PhotometricInterpretation, ds.Modality):
            break
    base = f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    full = dcmread(path)
    rendered = requests.get(base + "/rendered", headers={"Accept": "image/png"}, timeout=10)
    assert rendered.status_code == 200 and rendered.headers["Content-Type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(rendered.content)))
    assert image.shape[:2] == (int(ds.Rows), int(ds.Columns))
    assert image.std() > 10, "a rendered image shows structure, not a flat field"
    if modality_or_photometric == "MONOCHROME1":
        # MONOCHROME1: the highest stored values are displayed darkest.
        values = full.pixel_array
        high, low = values >= np.percentile(values, 90), values <= np.percentile(values, 10)
        assert image[high].mean() < image[low].mean()
    if modality_or_photometric in ("PALETTE COLOR", "YBR_FULL_422"):
        assert image.ndim == 3 and image.shape[2] == 3
    windowed = requests.get(
        base + "/frames/1/rendered?window=40,400&viewport=64,64&quality=80",
        headers={"Accept": "image/jpeg"},
        timeout=10,
    )
    assert windowed.status_code == 200
    assert max(Image.open(io.BytesIO(windowed.content)).size) == 64
    thumb = requests.get(
        f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail",
        timeout=10,
    )
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 128


def test_ct_window_applies_rescale(
    loaded: tuple[DICOMwebClient, BackgroundServer], varied_files: list[Path]
) -> None:
    _, server = loaded
    ds = next(dcmread(p) for p in varied_files if dcmread(p, stop_before_pixels=True).Modality == "CT")
    base = f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/rendered"
    # A window of [-1000, -900] HU: air is mid-grey-to-white, soft tissue (0..100 HU) is white.
    image = np.asarray(
        Image.open(
            io.BytesIO(
                requests.get(base + "?window=-950,100", headers={"Accept": "image/png"}, timeout=10).content
            )
        )
    )
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    soft = (hu > 0) & (hu < 100)
    assert image[soft].mean() > 250
    assert image[hu < -1000].mean() < 5
