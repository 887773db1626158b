"""Synthetic whole-slide images: DICOM WSI (one instance per pyramid level) and a tiled TIFF.

The slide looks like an H&E section: pink tissue fragments with purple nuclei on a
white glass background, at a true 0.25 µm/px (40× objective). Level 0 is synthesised
one band of tiles at a time and every lower level is streamed from the one above it
(2 × 2 box filter), so a 40,000 × 30,000 px slide is made in about a minute without
holding the image in memory. The same JPEG tile bytes go into the DICOM instances and
the TIFF, so Tessera (DICOM) and openslide (TIFF) serve the very same stored tiles.

    python -m sample_data.wsi OUT --size small|large
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from pydicom.uid import UID

from modules.pathology.dicom_writer import SlideIdentity, write_wsi_instance, wsi_dataset
from sample_data.radiology import Patient, Study, derived_uid

BACKGROUND = np.array([241.0, 239.0, 243.0], dtype=np.float32)
EOSIN = np.array([232.0, 150.0, 196.0], dtype=np.float32)
HEMATOXYLIN = np.array([72.0, 40.0, 128.0], dtype=np.float32)
# Immunohistochemistry: pale blue counterstain, positive nuclei brown (DAB)
COUNTERSTAIN = np.array([214.0, 214.0, 232.0], dtype=np.float32)
HEMATOXYLIN_LIGHT = np.array([96.0, 104.0, 176.0], dtype=np.float32)
DAB = np.array([128.0, 78.0, 40.0], dtype=np.float32)
_FIELD_SCALE = 64  # the tissue map is computed at 1/64 of level 0


@dataclass(frozen=True)
class SlideSpec:
    """What to generate; equal specs give byte-identical files."""

    width: int
    height: int
    tile_size: int = 256
    mpp: float = 0.25  # µm per pixel at level 0
    objective_power: int = 40
    quality: int = 85
    seed: int = 7
    patient: Patient = field(default_factory=lambda: Patient("Slide^Sample", "TES-PATH-01", "19700101", "F"))
    study: Study = field(
        default_factory=lambda: Study(
            date="20250601", time="101500", accession_number="S25-0042", description="Skin excision"
        )
    )
    series_number: int = 1
    specimen: str = "S25-0042 A1"
    stain: str = "HE"

    @property
    def study_instance_uid(self) -> UID:
        return self.study.uid_for(self.patient)

    @property
    def series_instance_uid(self) -> UID:
        return derived_uid("wsi-series", self.study_instance_uid, self.series_number, self.width, self.height)

    def identity(self) -> SlideIdentity:
        return SlideIdentity(
            patient_name=self.patient.name,
            patient_id=self.patient.id,
            patient_birth_date=self.patient.birth_date,
            patient_sex=self.patient.sex,
            accession_number=self.study.accession_number,
            study_instance_uid=str(self.study_instance_uid),
            study_id=self.study.study_id,
            study_date=self.study.date,
            study_time=self.study.time,
            study_description=self.study.description,
            referring_physician_name=self.study.referring_physician_name,
            series_instance_uid=str(self.series_instance_uid),
            series_number=self.series_number,
            series_description=f"{self.specimen} {self.stain}",
            container_identifier=self.specimen,
            manufacturer="Tessera Sample Data",
            manufacturer_model_name="Synthetic Scanner",
            device_serial_number="TSS-0001",
            objective_lens_power=self.objective_power,
        )

    def level_sizes(self) -> list[tuple[int, int]]:
        """Halving (rounded up) until the whole level fits in about one tile."""
        sizes = [(self.width, self.height)]
        while max(sizes[-1]) > self.tile_size:
            w, h = sizes[-1]
            sizes.append((-(-w // 2), -(-h // 2)))
        return sizes


SIZES = {
    "small": SlideSpec(2000, 1500),
    "large": SlideSpec(40000, 30000),
}


@dataclass
class GeneratedSlide:
    spec: SlideSpec
    dicom_files: list[Path]  # the pyramid levels, then label, overview, thumbnail
    tiff_file: Path
    level_tiles: list[list[bytes]]  # encoded tiles per level, row-major (what both files store)


# ---------------------------------------------------------------------------
# Synthetic tissue


class TissuePainter:
    """Paints level-0 bands: a low-resolution tissue map plus nuclei textures."""

    def __init__(self, spec: SlideSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        fw, fh = spec.width // _FIELD_SCALE + 2, spec.height // _FIELD_SCALE + 2
        coarse = rng.random((max(2, fh // 8), max(2, fw // 8))).astype(np.float32)
        medium = rng.random((max(2, fh // 3), max(2, fw // 3))).astype(np.float32)
        field = 0.7 * _resize(coarse, fw, fh, Image.Resampling.BICUBIC) + 0.3 * _resize(
            medium, fw, fh, Image.Resampling.BICUBIC
        )
        yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
        # A central section shape so the tissue sits on the glass like a real specimen.
        ellipse = ((xx - fw / 2) / (fw * 0.42)) ** 2 + ((yy - fh / 2) / (fh * 0.40)) ** 2
        field = field * np.clip(1.3 - ellipse, 0, 1)
        self.tissue = np.clip((field - 0.38) * 6, 0, 1).astype(np.float32)  # soft-edged mask
        self.stain = _resize(rng.random((max(2, fh // 4), max(2, fw // 4))).astype(np.float32), fw, fh)
        # Two seamless (wrap-around) textures of coprime sizes: no seams, and the pattern
        # only repeats every 1021 × 1279 px blocks of the pair, far beyond a field of view.
        self.textures = [self._nuclei_texture(rng, size) for size in (1021, 1279)]
        self.fibre = self._fibre_texture(rng, 1151)
        # Sensor and stain grain: what makes real tiles 10-30 kB of JPEG instead of 3 kB.
        self.grain = rng.normal(0.0, 1.0, (1031, 1031)).astype(np.float32)

    def _nuclei_texture(self, rng: np.random.Generator, size: int) -> np.ndarray:
        scale = 0.25 / self.spec.mpp  # nuclei are 5-9 µm across whatever the resolution
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        for _ in range(int(420 * scale * scale * (size / 1024) ** 2) + 20):
            x, y = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(9, 17, 2) * scale
            shade = int(rng.uniform(150, 255))
            for dx in (-size, 0, size):  # drawn again across the edges so the texture wraps
                for dy in (-size, 0, size):
                    draw.ellipse((x + dx - rx, y + dy - ry, x + dx + rx, y + dy + ry), fill=shade)
        image = image.filter(ImageFilter.GaussianBlur(1.5 * scale))
        return np.asarray(image, dtype=np.float32) / 255.0

    def _fibre_texture(self, rng: np.random.Generator, size: int) -> np.ndarray:
        noise = rng.random((size // 4, size // 16)).astype(np.float32)
        wrapped = np.concatenate([noise, noise[:1]], axis=0)
        wrapped = np.concatenate([wrapped, wrapped[:, :1]], axis=1)
        stretched = _resize(wrapped, size + size // 16, size + 4, Image.Resampling.BICUBIC)
        return np.ascontiguousarray(stretched[:size, :size])

    def band(self, y0: int, height: int) -> np.ndarray:
        """Rows ``y0 .. y0+height`` of level 0 as uint8 RGB."""
        width = self.spec.width
        box = (0.0, y0 / _FIELD_SCALE, width / _FIELD_SCALE, (y0 + height) / _FIELD_SCALE)
        tissue = _resize(self.tissue, width, height, Image.Resampling.BILINEAR, box)
        stain = _resize(self.stain, width, height, Image.Resampling.BILINEAR, box)
        first, second = (_wrapped(t, y0, height, width) for t in self.textures)
        fibre = _wrapped(self.fibre, y0, height, width)
        density = tissue * tissue * (0.35 + 0.65 * stain)
        shade = (1 - fibre[..., None]) * np.array([10, 40, 25], dtype=np.float32) * stain[..., None]
        if self.spec.stain == "HE":
            rgb = BACKGROUND + tissue[..., None] * (EOSIN - shade - BACKGROUND)
            rgb = rgb + (np.maximum(first, second) * density)[..., None] * (HEMATOXYLIN - rgb)
        else:  # IHC: one nuclei population positive (brown), the other counterstained (blue)
            rgb = BACKGROUND + tissue[..., None] * (COUNTERSTAIN - shade * 0.3 - BACKGROUND)
            rgb = rgb + (second * density)[..., None] * (HEMATOXYLIN_LIGHT - rgb)
            rgb = rgb + (first * density)[..., None] * (DAB - rgb)
        grain = _wrapped(self.grain, y0, height, width) * (2.0 + 7.0 * tissue)
        rgb += grain[..., None]
        return np.clip(rgb, 0, 255).astype(np.uint8)


def _wrapped(texture: np.ndarray, y0: int, height: int, width: int) -> np.ndarray:
    """A ``height × width`` window at row ``y0`` of a texture repeated in both directions."""
    size = texture.shape[0]
    rows = texture[(np.arange(y0, y0 + height) % size).astype(np.intp)]
    return np.tile(rows, (1, -(-width // size)))[:, :width]


def _resize(
    a: np.ndarray,
    width: int,
    height: int,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    image = Image.fromarray(a.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), resample, box=box), dtype=np.float32)


# ---------------------------------------------------------------------------
# Pyramid: stream bands down the levels, encoding tiles as rows complete


class _LevelEncoder:
    """Collects rows of one level, encodes full tile rows, hands a 2× reduction below."""

    def __init__(self, size: tuple[int, int], tile: int, quality: int, below: _LevelEncoder | None) -> None:
        self.width, self.height = size
        self.tile = tile
        self.quality = quality
        self.below = below
        self.pending = np.empty((0, self.width, 3), dtype=np.uint8)
        self.rows_done = 0
        self.tiles: list[bytes] = []
        self.carry = np.empty((0, self.width, 3), dtype=np.uint8)  # odd row left for the reduction

    def feed(self, rows: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, rows]) if len(self.pending) else rows
        while len(self.pending) >= self.tile:
            self._emit(self.pending[: self.tile])
            self.pending = self.pending[self.tile :]
        if self.rows_done + len(self.pending) == self.height and len(self.pending):
            self._emit(self.pending)
            self.pending = self.pending[:0]

    def _emit(self, rows: np.ndarray) -> None:
        t = self.tile
        for x0 in range(0, self.width, t):
            block = rows[:, x0 : x0 + t]
            if block.shape[:2] != (t, t):  # DICOM TILED_FULL frames are all full size: pad with glass
                padded = np.empty((t, t, 3), dtype=np.uint8)
                padded[:] = BACKGROUND.astype(np.uint8)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            self.tiles.append(_encode_jpeg(block, self.quality))
        self.rows_done += len(rows)
        if self.below is not None:
            self._reduce(rows)

    def _reduce(self, rows: np.ndarray) -> None:
        rows = np.concatenate([self.carry, rows]) if len(self.carry) else rows
        last = self.rows_done == self.height
        even = len(rows) if last else len(rows) - len(rows) % 2
        self.carry = rows[even:]
        rows = rows[:even]
        if len(rows) == 0:
            return
        if len(rows) % 2:
            rows = np.concatenate([rows, rows[-1:]])
        if self.width % 2:
            rows = np.concatenate([rows, rows[:, -1:]], axis=1)
        half = rows.reshape(len(rows) // 2, 2, rows.shape[1] // 2, 2, 3).astype(np.uint16).sum(axis=(1, 3))
        assert self.below is not None
        self.below.feed(((half + 2) // 4).astype(np.uint8))


def _encode_jpeg(block: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(block, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def encode_levels(spec: SlideSpec, progress: bool = False) -> tuple[list[list[bytes]], Image.Image]:
    """JPEG tiles of every level, and the smallest level as an image (for thumbnail/overview)."""
    sizes = spec.level_sizes()
    below: _LevelEncoder | None = None
    encoders: list[_LevelEncoder] = []
    for size in reversed(sizes):
        below = _LevelEncoder(size, spec.tile_size, spec.quality, below)
        encoders.append(below)
    encoders.reverse()
    painter = TissuePainter(spec)
    started = time.monotonic()
    for y0 in range(0, spec.height, spec.tile_size):
        height = min(spec.tile_size, spec.height - y0)
        encoders[0].feed(painter.band(y0, height))
        if progress and (y0 // spec.tile_size) % 16 == 0:
            print(
                f"  level 0 rows {y0 + height}/{spec.height} ({time.monotonic() - started:.0f} s)", flush=True
            )
    smallest = encoders[-1]
    w, h = sizes[-1]
    mosaic = (
        Image.open(io.BytesIO(smallest.tiles[0])).convert("RGB").crop((0, 0, w, h))
        if len(smallest.tiles) == 1
        else _mosaic(smallest, w, h)
    )
    return [e.tiles for e in encoders], mosaic


def _mosaic(encoder: _LevelEncoder, width: int, height: int) -> Image.Image:
    t = encoder.tile
    columns = -(-width // t)
    image = Image.new("RGB", (columns * t, -(-height // t) * t))
    for i, data in enumerate(encoder.tiles):
        image.paste(Image.open(io.BytesIO(data)).convert("RGB"), ((i % columns) * t, (i // columns) * t))
    return image.crop((0, 0, width, height))


# ---------------------------------------------------------------------------
# DICOM WSI


def _label_image(spec: SlideSpec) -> Image.Image:
    image = Image.new("RGB", (600, 300), (250, 250, 246))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 590, 290), outline=(40, 40, 40), width=4)
    draw.text((40, 60), "TESSERA PATHOLOGY", fill=(20, 20, 20), font_size=36)
    draw.text((40, 130), spec.specimen, fill=(20, 20, 20), font_size=44)
    draw.text((40, 210), f"{spec.stain}   {spec.study.date}", fill=(20, 20, 20), font_size=32)
    for i in range(24):  # a mock 1D barcode
        draw.rectangle((420 + i * 6, 200, 422 + i * 6 + (i % 3), 270), fill=(0, 0, 0))
    return image


def write_dicom(
    spec: SlideSpec, level_tiles: list[list[bytes]], smallest: Image.Image, out: Path
) -> list[Path]:
    """One instance per level, then label, overview and thumbnail instances."""
    identity = spec.identity()
    paths: list[Path] = []
    number = 1
    t = spec.tile_size
    for index, (size, tiles) in enumerate(zip(spec.level_sizes(), level_tiles, strict=True)):
        kind = [
            "ORIGINAL" if index == 0 else "DERIVED",
            "PRIMARY",
            "VOLUME",
            "NONE" if index == 0 else "RESAMPLED",
        ]
        ds = wsi_dataset(identity, number, kind, size, (t, t), len(tiles), spec.mpp * 2**index)
        paths.append(out / f"level-{index}.dcm")
        write_wsi_instance(paths[-1], ds, tiles)
        number += 1
    slide_mm = (spec.width * spec.mpp / 1000, spec.height * spec.mpp / 1000)
    overview = Image.new("RGB", (int(smallest.width * 1.6), int(smallest.height * 1.3)), (230, 232, 236))
    overview.paste(
        smallest, ((overview.width - smallest.width) // 2, (overview.height - smallest.height) // 2)
    )
    thumbnail = smallest.copy()
    thumbnail.thumbnail((256, 256))
    associated = [
        (["ORIGINAL", "PRIMARY", "LABEL", "NONE"], _label_image(spec), 0.1 * 1000),
        (["ORIGINAL", "PRIMARY", "OVERVIEW", "NONE"], overview, slide_mm[0] * 1.6 * 1000 / overview.width),
        (["DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"], thumbnail, slide_mm[0] * 1000 / thumbnail.width),
    ]
    for image_type, image, mpp in associated:
        frame = _encode_jpeg(np.asarray(image.convert("RGB")), 90)
        ds = wsi_dataset(identity, number, image_type, image.size, image.size, 1, mpp)
        paths.append(out / f"{image_type[2].lower()}.dcm")
        write_wsi_instance(paths[-1], ds, [frame])
        number += 1
    return paths


# ---------------------------------------------------------------------------
# Tiled pyramidal TIFF (what openslide calls generic-tiff)


def write_tiff(spec: SlideSpec, level_tiles: list[list[bytes]], path: Path) -> Path:
    """The same JPEG tiles as a tiled pyramidal TIFF, one page per level."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    t = spec.tile_size
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for index, (size, tiles) in enumerate(zip(spec.level_sizes(), level_tiles, strict=True)):
            pixels_per_cm = 10_000 / (spec.mpp * 2**index)
            tiff.write(
                iter(tiles),
                shape=(size[1], size[0], 3),
                dtype=np.uint8,
                tile=(t, t),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if index else 0,
                description=f"Tessera synthetic slide|AppMag = {spec.objective_power}|MPP = {spec.mpp}"
                if index == 0
                else None,
                metadata=None,
            )
    return path


def generate(spec: SlideSpec, out: Path, progress: bool = False) -> GeneratedSlide:
    """Write ``out/dicom/*.dcm`` and ``out/slide.tiff`` for the spec."""
    level_tiles, smallest = encode_levels(spec, progress)
    dicom = write_dicom(spec, level_tiles, smallest, out / "dicom")
    tiff = write_tiff(spec, level_tiles, out / "slide.tiff")
    return GeneratedSlide(spec, dicom, tiff, level_tiles)


# ---------------------------------------------------------------------------
# A z-stack with two optical paths (small: every tile is kept in memory)


@dataclass
class GeneratedStack:
    spec: SlideSpec
    dicom_files: list[Path]  # one instance per pyramid level, every path and plane in it
    optical_paths: list[str]  # OpticalPathIdentifier, in OpticalPathSequence order
    focal_planes: int
    # level → (path index, plane) → encoded tiles, row-major: what the instances store
    tiles: list[dict[tuple[int, int], list[bytes]]]


STACK_PATHS = (("1", "Brightfield"), ("2", "Brightfield, DAB channel"))
STACK_PLANE_SPACING_UM = 2.0


def _stack_plane(image: Image.Image, plane: int, planes: int, path: int) -> Image.Image:
    """One focal plane of one path: the middle plane is in focus, the others blur with distance.

    Planes above the focus are also paler, and the second path recolours the section (a
    stand-in for another stain or filter), so each (path, plane) has visibly different
    pixels and a mixed-up frame shows in tests.
    """
    blur = 2.5 * abs(plane - (planes - 1) / 2)
    out = image.filter(ImageFilter.GaussianBlur(blur)) if blur else image.copy()
    if plane > (planes - 1) / 2:  # above the focus the section also looks paler: no two planes alike
        out = ImageEnhance.Brightness(out).enhance(1.1)
    if path:
        r, g, b = out.split()
        out = Image.merge("RGB", (b, r, g))
    return out


def write_stack(
    spec: SlideSpec, out: Path, focal_planes: int = 3, layout: str = "full", focus_map_um: float = 0.0
) -> GeneratedStack:
    """A multi-focal-plane, two-optical-path slide: one instance per level holding every view.

    ``layout="full"``: TILED_FULL, frames tile by tile, then focal plane, then optical path
    (TotalPixelMatrixFocalPlanes, NumberOfOpticalPaths); ``"sparse"``: TILED_SPARSE, each
    frame naming its position, Z offset (Plane Position (Slide)) and optical path (per-frame
    Optical Path Identification), in a shuffled order; ``focus_map_um`` (sparse) adds a
    different Z error of up to that much to every tile, as a scanner's focus map does.
    Keep sizes small.
    """
    if layout not in ("full", "sparse"):
        raise ValueError(f"layout {layout!r} is not 'full' or 'sparse'")
    from pydicom.dataset import Dataset

    identity = replace(spec.identity(), series_description=f"{spec.specimen} {spec.stain} z-stack")
    painter = TissuePainter(spec)
    base = Image.fromarray(painter.band(0, spec.height), "RGB")
    t = spec.tile_size
    views = [(p, z) for p in range(len(STACK_PATHS)) for z in range(focal_planes)]
    level_images = {view: _stack_plane(base, view[1], focal_planes, view[0]) for view in views}
    paths: list[Path] = []
    all_tiles: list[dict[tuple[int, int], list[bytes]]] = []
    for index, size in enumerate(spec.level_sizes()):
        if index:
            level_images = {
                v: im.resize(size, Image.Resampling.BOX, reducing_gap=None) for v, im in level_images.items()
            }
        columns, rows = -(-size[0] // t), -(-size[1] // t)
        tiles: dict[tuple[int, int], list[bytes]] = {}
        for view, image in level_images.items():
            padded = Image.new("RGB", (columns * t, rows * t), tuple(int(c) for c in BACKGROUND))
            padded.paste(image)
            pixels = np.asarray(padded)
            tiles[view] = [
                _encode_jpeg(
                    np.ascontiguousarray(pixels[r * t : (r + 1) * t, c * t : (c + 1) * t]), spec.quality
                )
                for r in range(rows)
                for c in range(columns)
            ]
        all_tiles.append(tiles)
        kind = [
            "ORIGINAL" if index == 0 else "DERIVED",
            "PRIMARY",
            "VOLUME",
            "NONE" if index == 0 else "RESAMPLED",
        ]
        count = columns * rows * len(views)
        ds = wsi_dataset(identity, index + 1, kind, size, (t, t), count, spec.mpp * 2**index)
        ds.TotalPixelMatrixFocalPlanes = focal_planes
        ds.NumberOfOpticalPaths = len(STACK_PATHS)
        ds.ImagedVolumeDepth = focal_planes * STACK_PLANE_SPACING_UM / 1000
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            shared.PixelMeasuresSequence[0].SpacingBetweenSlices = STACK_PLANE_SPACING_UM / 1000
        del shared.OpticalPathIdentificationSequence  # several paths: said per frame (or by frame order)
        template = ds.OpticalPathSequence[0]
        sequence = []
        for identifier, description in STACK_PATHS:
            item = copy.deepcopy(template)
            item.OpticalPathIdentifier = identifier
            item.OpticalPathDescription = description
            sequence.append(item)
        ds.OpticalPathSequence = sequence
        # TILED_FULL order: tiles row-major, then planes, then paths
        order = [(v, i) for v in views for i in range(columns * rows)]
        if layout == "sparse":
            import random

            random.Random(index).shuffle(order)
            ds.DimensionOrganizationType = "TILED_SPARSE"
            per_frame = []
            for (path_index, plane), i in order:
                position = Dataset()
                position.ColumnPositionInTotalImagePixelMatrix = (i % columns) * t + 1
                position.RowPositionInTotalImagePixelMatrix = (i // columns) * t + 1
                position.XOffsetInSlideCoordinateSystem = 20.0
                position.YOffsetInSlideCoordinateSystem = 40.0
                focus = focus_map_um * (((i * 7919) % 101) / 100 - 0.5)  # deterministic, per tile
                position.ZOffsetInSlideCoordinateSystem = round(plane * STACK_PLANE_SPACING_UM + focus, 4)
                optical = Dataset()
                optical.OpticalPathIdentifier = STACK_PATHS[path_index][0]
                item = Dataset()
                item.PlanePositionSlideSequence = [position]
                item.OpticalPathIdentificationSequence = [optical]
                per_frame.append(item)
            ds.PerFrameFunctionalGroupsSequence = per_frame
        paths.append(out / f"stack-level-{index}.dcm")
        write_wsi_instance(paths[-1], ds, [tiles[v][i] for v, i in order])
    return GeneratedStack(spec, paths, [p for p, _ in STACK_PATHS], focal_planes, all_tiles)


STACK_SPEC = SlideSpec(
    1024,
    768,
    series_number=1,
    specimen="S25-0051 B1",
    seed=9,
    study=Study(date="20250602", time="091500", accession_number="S25-0051", description="Cytology z-stack"),
)


def demo_slides(out: Path) -> list[Path]:
    """One pathology case for the demo archive: H&E and Ki-67 of the same block (side by side)."""
    he = generate(SIZES["small"], out / "he")
    ki67 = replace(SIZES["small"], series_number=2, stain="Ki-67", seed=8, specimen="S25-0042 A2")
    return [*he.dicom_files, *generate(ki67, out / "ki67").dicom_files]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="output folder (dicom/ and slide.tiff are written there)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument(
        "--stack",
        choices=("full", "sparse"),
        help="instead: a small 3-focal-plane, 2-optical-path slide (TILED_FULL or TILED_SPARSE) in OUT",
    )
    parser.add_argument("--focal-planes", type=int, default=3)
    args = parser.parse_args(argv)
    if args.stack:
        stack = write_stack(STACK_SPEC, args.out, args.focal_planes, args.stack)
        print(f"{len(stack.dicom_files)} instances, {stack.focal_planes} planes × 2 paths -> {args.out}")
        return
    spec = SIZES[args.size]
    started = datetime.datetime.now()
    slide = generate(spec, args.out, progress=True)
    seconds = (datetime.datetime.now() - started).total_seconds()
    print(
        f"{spec.width} x {spec.height} px, {len(spec.level_sizes())} levels, "
        f"{sum(map(len, slide.level_tiles))} tiles in {seconds:.0f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
