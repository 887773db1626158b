"""Slide sources against openslide: the same slide gives the same DZI, tile for tile.

The synthetic slide is written both as DICOM WSI (ingested into a real archive) and
as a tiled TIFF holding the very same JPEG tiles; openslide's DeepZoomGenerator on the
TIFF is the reference for geometry and, within JPEG tolerance, for pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image
from pydicom.encaps import generate_frames

from modules.pathology.dicom_source import NotASlide
from modules.pathology.openslide_source import OpenSlideSource, SlideFileError
from modules.pathology.slides import SlideLibrary
from sample_data.radiology import ct_series
from sample_data.wsi import SIZES, GeneratedSlide, generate
from server.archive.archive import Archive
from server.config import load_settings
from server.tiles import DeepZoom, SourceUnreadable, TileSource
from server.tiles.deepzoom import encode_jpeg

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "openslide-fixtures"


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSlide:
    return generate(SIZES["small"], tmp_path_factory.mktemp("wsi"))


@pytest.fixture(scope="module")
def library(slide: GeneratedSlide, tmp_path_factory: pytest.TempPathFactory) -> SlideLibrary:
    archive = Archive(load_settings({}, data_dir=tmp_path_factory.mktemp("archive")))
    for path in slide.dicom_files:
        assert archive.ingest_path(path).ok
    return SlideLibrary(archive)


def _pixels(data: bytes | Image.Image) -> np.ndarray:
    image = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _compare_with_openslide(dz: DeepZoom, reference: DeepZoomGenerator) -> tuple[int, int]:
    """Every tile of every level: declared geometry equal, pixels within JPEG tolerance."""
    assert dz.level_count == reference.level_count
    assert dz.level_dimensions == list(reference.level_dimensions)
    assert dz.level_tiles == list(reference.level_tiles)
    compared = passthrough = 0
    for level in range(dz.level_count):
        columns, rows = dz.level_tiles[level]
        for column in range(columns):
            for row in range(rows):
                ours = Image.open(io.BytesIO(dz.read_tile(level, column, row).data))
                assert ours.size == reference.get_tile_dimensions(level, (column, row))
                theirs = reference.get_tile(level, (column, row))
                if theirs.size != ours.size:  # DeepZoomGenerator's thumbnail() may lose a pixel to aspect
                    assert abs(theirs.width - ours.width) + abs(theirs.height - ours.height) <= 1
                    theirs = theirs.resize(ours.size)
                compared += 1
                passthrough += dz.plan(level, column, row).passthrough is not None
                if min(ours.size) < 16:
                    continue  # a few pixels: JPEG chroma subsampling alone decides, geometry is what counts
                # "within JPEG tolerance": the reference goes through the same JPEG encoder as ours
                theirs = Image.open(io.BytesIO(encode_jpeg(theirs, dz.quality)))
                difference = np.abs(_pixels(ours) - _pixels(theirs)).mean()
                assert difference < 3.0, (level, column, row, difference)
    return compared, passthrough


def test_tiff_source_matches_deepzoomgenerator(slide: GeneratedSlide) -> None:
    source = OpenSlideSource(slide.tiff_file)
    assert isinstance(source, TileSource)
    assert source.mpp == pytest.approx((0.25, 0.25))
    reference = DeepZoomGenerator(openslide.OpenSlide(str(slide.tiff_file)), tile_size=256, overlap=0)
    compared, passthrough = _compare_with_openslide(DeepZoom(source), reference)
    assert compared == 73 and passthrough == 42


def test_dicom_source_matches_deepzoomgenerator_on_the_same_tiles(
    slide: GeneratedSlide, library: SlideLibrary
) -> None:
    opened = library.open(str(slide.spec.series_instance_uid))
    source = opened.source
    assert [(lv.width, lv.height) for lv in source.levels] == slide.spec.level_sizes()
    assert source.mpp == pytest.approx((0.25, 0.25))
    assert source.objective_power == 40
    assert sorted(source.associated) == ["label", "overview", "thumbnail"]
    reference = DeepZoomGenerator(openslide.OpenSlide(str(slide.tiff_file)), tile_size=256, overlap=0)
    compared, passthrough = _compare_with_openslide(opened.deepzoom, reference)
    assert compared == 73 and passthrough == 42


def test_passthrough_tile_is_the_stored_frame(slide: GeneratedSlide, library: SlideLibrary) -> None:
    opened = library.open(str(slide.spec.series_instance_uid))
    dz = opened.deepzoom
    top = dz.level_count - 1
    ds = pydicom.dcmread(slide.dicom_files[0])
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    columns = dz.level_tiles[top][0]
    for column, row in [(0, 0), (3, 2), (6, 4)]:
        stored = frames[row * columns + column]
        if stored.endswith(b"\xff\xd9\x00"):
            stored = stored[:-1]  # DICOM's even-length pad is not part of the JPEG
        tile = dz.read_tile(top, column, row)
        assert tile.media_type == "image/jpeg"
        assert tile.data == stored
        assert tile.data == slide.level_tiles[0][row * columns + column]
        assert tile.data.endswith(b"\xff\xd9")
    # the same bytes without an executor once the file is open and the OS has the frame cached
    assert dz.read_tile_nowait(top, 3, 2) == dz.read_tile(top, 3, 2)
    assert dz.read_tile_nowait(top, 7, 5) is None  # an edge tile is cut and re-encoded: executor
    # the next level down passes through level 1's instance too
    assert dz.read_tile(top - 1, 1, 1).data == slide.level_tiles[1][1 * dz.level_tiles[top - 1][0] + 1]


def test_odd_length_frames_are_unpadded(slide: GeneratedSlide, library: SlideLibrary) -> None:
    odd = [i for i, data in enumerate(slide.level_tiles[0]) if len(data) % 2]
    assert odd, "the sample should contain odd-length JPEG tiles"
    dz = library.open(str(slide.spec.series_instance_uid)).deepzoom
    columns = dz.level_tiles[-1][0]
    index = next(i for i in odd if i % columns != columns - 1 and i // columns != dz.level_tiles[-1][1] - 1)
    tile = dz.read_tile(dz.level_count - 1, index % columns, index // columns)
    assert len(tile.data) % 2 == 1 and tile.data == slide.level_tiles[0][index]


def test_a_series_that_is_not_a_slide(library: SlideLibrary) -> None:
    for ds in ct_series(2):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert library.archive.ingest_bytes(buffer.getvalue()).ok
    series_uid = str(ds.SeriesInstanceUID)
    with pytest.raises(NotASlide):
        library.open(series_uid)
    with pytest.raises(NotASlide):
        library.open("1.2.3.4.5")


def test_dicom_slide_split_over_two_instances(tmp_path: Path) -> None:
    """openslide's own DICOM fixture: one level whose tiles come from two instances."""
    archive = Archive(load_settings({}, data_dir=tmp_path))
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        assert archive.ingest_path(FIXTURES / name).ok
    series_uid = str(pydicom.dcmread(FIXTURES / "boxes_0.dcm", stop_before_pixels=True).SeriesInstanceUID)
    source = SlideLibrary(archive).open(series_uid).source
    reference = openslide.OpenSlide(str(FIXTURES / "boxes_0.dcm"))
    assert [(lv.width, lv.height) for lv in source.levels] == list(reference.level_dimensions)
    for level, lv in enumerate(source.levels):
        ours = source.read_region(level, 0, 0, lv.width, lv.height)
        theirs = reference.read_region((0, 0), level, (lv.width, lv.height)).convert("RGB")
        assert np.abs(_pixels(ours) - _pixels(theirs)).mean() < 2


@pytest.mark.parametrize("name", ["boxes.tiff", "small.svs"])
def test_vendor_fixtures_open_and_serve_tiles(name: str) -> None:
    source = OpenSlideSource(FIXTURES / name)
    reference = openslide.OpenSlide(str(FIXTURES / name))
    assert [(lv.width, lv.height) for lv in source.levels] == list(reference.level_dimensions)
    dz = DeepZoom(source)
    reference_dz = DeepZoomGenerator(reference, tile_size=dz.tile_size, overlap=0)
    _compare_with_openslide(dz, reference_dz)


def test_unopenable_file_is_a_clear_error() -> None:
    with pytest.raises(SlideFileError, match=r"unopenable\.tiff: openslide cannot open"):
        OpenSlideSource(FIXTURES / "unopenable.tiff")
    with pytest.raises(SlideFileError):
        OpenSlideSource(FIXTURES / "README.md")


def test_unreadable_tiles_raise_source_unreadable() -> None:
    source = OpenSlideSource(FIXTURES / "unreadable.svs")
    with pytest.raises(SourceUnreadable):
        source.read_region(0, 0, 0, 16, 16)


def test_generated_dicom_wsi_is_read_by_openslide(slide: GeneratedSlide) -> None:
    """An independent reader (openslide's libdicom) accepts the sample slide as a DICOM WSI."""
    reference = openslide.OpenSlide(str(slide.dicom_files[0]))
    assert reference.properties[openslide.PROPERTY_NAME_VENDOR] == "dicom"
    assert list(reference.level_dimensions) == slide.spec.level_sizes()
    assert float(reference.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
    assert reference.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
    assert {"label", "thumbnail"} <= set(reference.associated_images)


def _pixels_of_level0(slide: GeneratedSlide) -> np.ndarray:
    return _pixels(OpenSlideSource(slide.tiff_file).read_region(0, 0, 0, 2000, 1500))


@pytest.mark.parametrize("syntax", ["jpeg2000", "native"])
def test_jpeg2000_and_uncompressed_tiles_are_decoded(
    syntax: str, slide: GeneratedSlide, tmp_path: Path
) -> None:
    """Frames a browser cannot take as they are get decoded, cut and encoded as JPEG."""
    from dataclasses import replace

    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

    from modules.pathology.dicom_writer import write_wsi_instance, wsi_dataset

    spec = slide.spec
    identity = replace(spec.identity(), series_instance_uid=f"{spec.series_instance_uid}.{len(syntax)}")
    level0 = np.asarray(_pixels_of_level0(slide), dtype=np.uint8)
    t = spec.tile_size
    tiles = []
    for row in range(0, spec.height, t):
        for column in range(0, spec.width, t):
            tile = np.full((t, t, 3), 255, dtype=np.uint8)
            block = level0[row : row + t, column : column + t]
            tile[: block.shape[0], : block.shape[1]] = block
            tiles.append(tile)
    ds = wsi_dataset(
        identity, 1, ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], (2000, 1500), (t, t), len(tiles), 0.25
    )
    path = tmp_path / f"{syntax}.dcm"
    if syntax == "jpeg2000":
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PhotometricInterpretation = "YBR_RCT"
        ds.LossyImageCompression = "00"
        frames = []
        for tile in tiles:
            buffer = io.BytesIO()
            Image.fromarray(tile).save(buffer, "JPEG2000", no_jp2=True, irreversible=False, mct=1)
            frames.append(buffer.getvalue())
        write_wsi_instance(path, ds, frames)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = b"".join(tile.tobytes() for tile in tiles)
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    archive = Archive(load_settings({}, data_dir=tmp_path / "data"))
    assert archive.ingest_path(path).ok
    opened = SlideLibrary(archive).open(identity.series_instance_uid)
    dz = opened.deepzoom
    top = dz.level_count - 1
    assert dz.plan(top, 1, 1).passthrough == (1, 1)
    assert opened.source.read_encoded_tile(0, 1, 1) is None  # not browser-ready: decoded instead
    tile = _pixels(dz.read_tile(top, 1, 1).data)
    assert np.abs(tile - level0[256:512, 256:512].astype(np.int16)).mean() < 2.5  # our JPEG's loss only
    edge = _pixels(dz.read_tile(top, 7, 5).data)
    assert edge.shape == (1500 - 1280, 2000 - 1792, 3)
    small = _pixels(dz.read_tile(top - 3, 0, 0).data)
    assert small.shape == (188, 250, 3)


@pytest.mark.parametrize("layout", ["sparse", "concatenation", "channels"])
def test_sparse_and_concatenated_levels(layout: str, slide: GeneratedSlide, tmp_path: Path) -> None:
    """TILED_SPARSE frames are placed by their positions; a concatenation is one level."""
    import random
    from dataclasses import replace

    from pydicom.dataset import Dataset

    from modules.pathology.dicom_writer import uid_from, write_wsi_instance, wsi_dataset

    spec = slide.spec
    identity = replace(spec.identity(), series_instance_uid=f"{spec.series_instance_uid}.9{len(layout)}")
    tiles = slide.level_tiles[0]
    columns, t = 8, spec.tile_size
    image_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    files = []
    if layout == "sparse":
        order = [i for i in range(len(tiles)) if i != 0]  # tile (0, 0) was never scanned
        random.Random(3).shuffle(order)
        ds = wsi_dataset(identity, 1, image_type, (2000, 1500), (t, t), len(order), 0.25)
        ds.DimensionOrganizationType = "TILED_SPARSE"
        per_frame = []
        for index in order:
            position = Dataset()
            position.ColumnPositionInTotalImagePixelMatrix = (index % columns) * t + 1
            position.RowPositionInTotalImagePixelMatrix = (index // columns) * t + 1
            position.XOffsetInSlideCoordinateSystem = 0.0
            position.YOffsetInSlideCoordinateSystem = 0.0
            position.ZOffsetInSlideCoordinateSystem = 0.0
            item = Dataset()
            item.PlanePositionSlideSequence = [position]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = per_frame
        files.append(tmp_path / "sparse.dcm")
        write_wsi_instance(files[0], ds, [tiles[i] for i in order])
    elif layout == "channels":  # one instance per optical path, the second arriving first
        for number, path_id in [(1, "1"), (2, "2")]:
            ds = wsi_dataset(identity, number, image_type, (2000, 1500), (t, t), len(tiles), 0.25)
            ds.OpticalPathSequence[0].OpticalPathIdentifier = path_id
            ds.OpticalPathSequence[0].OpticalPathDescription = f"channel {path_id}"
            ds.SharedFunctionalGroupsSequence[0].OpticalPathIdentificationSequence[
                0
            ].OpticalPathIdentifier = path_id
            files.insert(0, tmp_path / f"channel-{path_id}.dcm")
            write_wsi_instance(files[0], ds, tiles if path_id == "1" else list(reversed(tiles)))
    else:
        concatenation = uid_from("concatenation", identity.series_instance_uid)
        half = len(tiles) // 2 + 3
        for number, (start, stop) in enumerate([(0, half), (half, len(tiles))], start=1):
            ds = wsi_dataset(identity, number, image_type, (2000, 1500), (t, t), stop - start, 0.25)
            ds.ConcatenationUID = concatenation
            ds.SOPInstanceUIDOfConcatenationSource = uid_from("source", identity.series_instance_uid)
            ds.InConcatenationNumber = number
            ds.InConcatenationTotalNumber = 2
            ds.ConcatenationFrameOffsetNumber = start
            files.append(tmp_path / f"part-{number}.dcm")
            write_wsi_instance(files[-1], ds, tiles[start:stop])
        files.reverse()  # arrival order does not matter
    archive = Archive(load_settings({}, data_dir=tmp_path / "data"))
    for file in files:
        assert archive.ingest_path(file).ok
    opened = SlideLibrary(archive).open(identity.series_instance_uid)
    assert len(opened.source.levels) == 1
    dz = opened.deepzoom
    top = dz.level_count - 1
    for column, row in [(1, 0), (3, 2), (5, 3), (6, 4)]:
        assert dz.read_tile(top, column, row).data == tiles[row * columns + column], (column, row)
    if layout == "channels":
        info = opened.info()
        assert [p["identifier"] for p in info["optical_paths"]] == ["1", "2"]
        assert info["tiled_optical_path"] == "1"  # the tiles asserted above are channel 1's
    corner = _pixels(dz.read_tile(top, 0, 0).data)
    if layout == "sparse":
        assert corner.min() > 240  # glass where nothing was scanned
    else:
        assert dz.read_tile(top, 0, 0).data == tiles[0]


def test_sample_slide_is_byte_reproducible(slide: GeneratedSlide, tmp_path: Path) -> None:
    again = generate(slide.spec, tmp_path)
    for ours, theirs in zip(slide.dicom_files, again.dicom_files, strict=True):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name
    assert slide.tiff_file.read_bytes() == again.tiff_file.read_bytes()
