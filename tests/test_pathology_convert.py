"""Vendor slide files converted to DICOM WSI and imported: lossless where tiles allow, clear errors otherwise."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from PIL import Image

from modules.pathology.convert import convert_slide, describe, import_slide
from modules.pathology.dicom_writer import SlideIdentity
from modules.pathology.openslide_source import OpenSlideSource, SlideFileError
from modules.pathology.slides import SlideLibrary
from sample_data.wsi import SIZES, GeneratedSlide, generate
from server.archive.archive import Archive
from server.config import load_settings

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "openslide-fixtures"


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return generate(SIZES["small"], tmp_path_factory.mktemp("wsi"))


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive(load_settings({}, data_dir=tmp_path / "data"))


def test_tiff_converts_losslessly_and_serves_the_same_tiles(slide: GeneratedSlide, archive: Archive) -> None:
    identity = SlideIdentity(
        patient_name="Roe^Jane", patient_id="P-77", accession_number="S26-1", container_identifier="S26-1 B2"
    )
    outcomes = import_slide(archive, slide.tiff_file, identity)
    assert [o.ok for o in outcomes] == [True] * 4  # four levels, no associated images in a plain TIFF
    series_uid = outcomes[0].series_instance_uid
    opened = SlideLibrary(archive).open(series_uid)
    assert [(lv.width, lv.height) for lv in opened.source.levels] == slide.spec.level_sizes()
    assert opened.source.mpp == pytest.approx((0.25, 0.25))
    info = opened.info()
    assert info["container_identifier"] == "S26-1 B2"
    dz = opened.deepzoom
    columns = dz.level_tiles[-1][0]
    for column, row in [(0, 0), (2, 3), (6, 4)]:
        assert (
            dz.read_tile(dz.level_count - 1, column, row).data == slide.level_tiles[0][row * columns + column]
        )
    header = pydicom.dcmread(outcomes[0].sop_instance_uid and _path_of(archive, outcomes[0].sop_instance_uid))
    assert header.PatientID == "P-77" and header.Modality == "SM"
    assert header.DimensionOrganizationType == "TILED_FULL"


def _path_of(archive: Archive, sop_uid: str) -> Path:
    instance = archive.instance_by_uid(sop_uid)
    assert instance is not None
    return instance.path


def test_conversion_is_repeatable(slide: GeneratedSlide, archive: Archive) -> None:
    """The same file gives the same UIDs: importing twice stores nothing new."""
    first = import_slide(archive, slide.tiff_file)
    again = import_slide(archive, slide.tiff_file)
    assert {o.series_instance_uid for o in first} == {o.series_instance_uid for o in again}
    assert all(o.status.value == "already present" for o in again)


def test_non_jpeg_tiff_is_encoded_and_matches_openslide(tmp_path: Path) -> None:
    files = convert_slide(FIXTURES / "boxes.tiff", tmp_path)
    reference = openslide.OpenSlide(str(FIXTURES / "boxes.tiff"))
    converted = openslide.OpenSlide(str(files[0]))
    assert converted.level_dimensions == reference.level_dimensions
    ours = np.asarray(converted.read_region((0, 0), 0, reference.dimensions).convert("RGB"), dtype=int)
    theirs = np.asarray(reference.read_region((0, 0), 0, reference.dimensions).convert("RGB"), dtype=int)
    assert np.abs(ours - theirs).mean() < 3


def test_svs_with_associated_images(tmp_path: Path) -> None:
    assert describe(FIXTURES / "small.svs")["vendor"] == "aperio"
    files = convert_slide(FIXTURES / "small.svs", tmp_path)
    kinds = [pydicom.dcmread(f, stop_before_pixels=True).ImageType[2] for f in files]
    assert kinds[0] == "VOLUME"
    source = OpenSlideSource(FIXTURES / "small.svs")
    expected = {"label": "LABEL", "macro": "OVERVIEW", "thumbnail": "THUMBNAIL"}
    assert sorted(kinds[len(source.levels) :]) == sorted(expected[n] for n in source.associated_images)
    ds = pydicom.dcmread(files[0])
    assert float(
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0]
    ) == pytest.approx(0.000499, rel=0.01)
    tile = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
    assert Image.open(io.BytesIO(next(tile))).size == (ds.Columns, ds.Rows)


def test_sidecar_json_names_the_patient_and_case(slide: GeneratedSlide, tmp_path: Path) -> None:
    copy = tmp_path / "case.tiff"
    shutil.copy(slide.tiff_file, copy)
    (tmp_path / "case.tiff.json").write_text(
        json.dumps(
            {"patient_name": "Doe^Ann", "patient_id": "P-9", "accession_number": "S26-9", "unknown": 1}
        )
    )
    files = convert_slide(copy, tmp_path / "out")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert (str(ds.PatientName), ds.PatientID, ds.AccessionNumber) == ("Doe^Ann", "P-9", "S26-9")


@pytest.mark.parametrize(
    ("name", "message"),
    [("unopenable.tiff", "cannot open"), ("unreadable.svs", "cannot be read"), ("README.md", "cannot open")],
)
def test_bad_files_are_clear_errors_and_leave_nothing(
    name: str, message: str, archive: Archive, tmp_path: Path
) -> None:
    with pytest.raises(SlideFileError, match=message):
        import_slide(archive, FIXTURES / name)
    with archive.sessions() as session:
        from sqlalchemy import func, select

        from server.archive.models import Instance

        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert not list((tmp_path / "data" / "tmp").glob("*"))


def test_module_import_hook(slide: GeneratedSlide, archive: Archive) -> None:
    from modules.pathology import module

    assert module.import_file(archive, FIXTURES / "README.md") is None
    assert module.import_file(archive, slide.dicom_files[0]) is None  # DICOM goes the archive's own way
    outcomes = module.import_file(archive, slide.tiff_file, {"patient_id": "P-1", "accession_number": "A-1"})
    assert outcomes is not None and all(o.ok for o in outcomes)
    with pytest.raises(SlideFileError):
        module.import_file(archive, FIXTURES / "unreadable.svs")
