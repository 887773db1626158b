"""DICOM WSI as a TileSource: stored tiles read straight from the archive's frame index.

The pyramid is assembled from every VOLUME instance of a series (one level per total
pixel matrix size; concatenations and TILED_SPARSE frames mapped to tile positions),
using only the DICOM JSON headers kept in the index and the frame offsets found at
ingest. A stored JPEG tile is one ``pread`` on an already-open file; it is decoded
only when a region has to be cut or resampled.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from server.archive.archive import StoredInstance
from server.tiles import EncodedTile, FileHandleCache, Level, SourceUnreadable, TileNotFound, pread_if_cached

VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
ASSOCIATED_KINDS = ("LABEL", "OVERVIEW", "THUMBNAIL")
BACKGROUND = (255, 255, 255)


class NotASlide(LookupError):
    """The series holds no VL Whole Slide Microscopy pyramid."""


# -- reading DICOM JSON headers ------------------------------------------------------------------


def _values(element: dict[str, Any] | None) -> list[Any]:
    return list(element.get("Value", [])) if element else []


def _first(dataset: dict[str, Any], tag: str, default: Any = None) -> Any:
    values = _values(dataset.get(tag))
    return values[0] if values else default


def _items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [item for item in _values(dataset.get(tag)) if isinstance(item, dict)]


def _code_meaning(dataset: dict[str, Any], tag: str) -> str:
    items = _items(dataset, tag)
    return str(_first(items[0], "00080104", "")) if items else ""


@dataclass(frozen=True)
class WsiHeader:
    """The attributes of one WSI instance that tiling needs, read from its DICOM JSON."""

    instance: StoredInstance
    image_type: tuple[str, ...]
    total_columns: int
    total_rows: int
    pixel_spacing_mm: tuple[float, float] | None  # (row spacing, column spacing)
    organization: str
    concatenation_uid: str
    concatenation_frame_offset: int
    focal_planes: int
    optical_paths: list[dict[str, Any]]
    optical_path_identifier: str  # the path this instance's frames show (shared functional groups)
    sparse_positions: list[tuple[int, int]] | None  # 1-based (column, row) in the matrix, per frame
    attributes: dict[str, Any] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.image_type[2] if len(self.image_type) > 2 else ""

    @classmethod
    def parse(cls, instance: StoredInstance, header_json: str) -> WsiHeader:
        ds = json.loads(header_json)
        shared = (_items(ds, "52009229") or [{}])[0]
        measures = (_items(shared, "00289110") or [{}])[0]
        spacing = _values(measures.get("00280030"))
        positions = None
        per_frame = _items(ds, "52009230")
        organization = str(_first(ds, "00209311", "") or "")
        if organization != "TILED_FULL" and per_frame:
            positions = []
            for item in per_frame:
                plane = (_items(item, "0048021A") or [{}])[0]
                positions.append((int(_first(plane, "0048021E", 1)), int(_first(plane, "0048021F", 1))))
        paths = []
        for item in _items(ds, "00480105"):
            paths.append(
                {
                    "identifier": str(_first(item, "00480106", "") or ""),
                    "description": str(_first(item, "00480107", "") or ""),
                    "illumination": _code_meaning(item, "00220016"),
                    "illumination_color": _code_meaning(item, "00480108"),
                    "objective_lens_power": _float(_first(item, "00480112")),
                }
            )
        return cls(
            instance=instance,
            image_type=tuple(str(v) for v in _values(ds.get("00080008"))),
            total_columns=int(_first(ds, "00480006", instance.columns or 0) or 0),
            total_rows=int(_first(ds, "00480007", instance.rows or 0) or 0),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])) if len(spacing) == 2 else None,
            organization=organization,
            concatenation_uid=str(_first(ds, "00209161", "") or ""),
            concatenation_frame_offset=int(_first(ds, "00209228", 0) or 0),
            focal_planes=int(_first(ds, "00480303", 1) or 1),
            optical_paths=paths,
            optical_path_identifier=str(
                _first((_items(shared, "00480207") or [{}])[0], "00480106", "")
                or (paths[0]["identifier"] if paths else "")
            ),
            sparse_positions=positions,
            attributes=ds,
        )


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# -- one pyramid level -----------------------------------------------------------------------------


@dataclass
class WsiLevel:
    """A level's tile grid: which instance and frame hold each stored tile."""

    level: Level
    headers: list[WsiHeader]
    # (instance position in ``headers``, 0-based frame) per tile, row-major; (-1, -1) = not stored
    tile_frames: np.ndarray

    def frame_of(self, column: int, row: int) -> tuple[WsiHeader, int] | None:
        if not (0 <= column < self.level.columns and 0 <= row < self.level.rows):
            raise TileNotFound(f"stored tile {column}_{row} is outside the level")
        position, frame = self.tile_frames[row * self.level.columns + column]
        if position < 0:
            return None
        return self.headers[int(position)], int(frame)

    @classmethod
    def assemble(cls, headers: list[WsiHeader], downsample: float) -> WsiLevel:
        first = headers[0].instance
        tile_w, tile_h = int(first.columns or 0), int(first.rows or 0)
        width, height = headers[0].total_columns, headers[0].total_rows
        level = Level(width, height, downsample, tile_w, tile_h)
        columns, rows = level.columns, level.rows
        tiles = np.full((columns * rows, 2), -1, dtype=np.int64)
        for position, header in enumerate(headers):
            frames = header.instance.number_of_frames
            if header.sparse_positions is not None:
                for frame, (x, y) in enumerate(header.sparse_positions):
                    column, row = (x - 1) // tile_w, (y - 1) // tile_h
                    if 0 <= column < columns and 0 <= row < rows and tiles[row * columns + column, 0] < 0:
                        tiles[row * columns + column] = (position, frame)
                continue
            # TILED_FULL: tiles row by row, then focal planes, then optical paths; keep the first plane/path.
            start = header.concatenation_frame_offset
            stop = min(start + frames, columns * rows)
            if stop > start:
                free = tiles[start:stop, 0] < 0  # the first instance placed keeps a tile
                tiles[start:stop, 0][free] = position
                tiles[start:stop, 1][free] = np.arange(stop - start)[free]
        return cls(level, headers, tiles)


# -- the source ------------------------------------------------------------------------------------


class DicomWsiSource:
    """A slide stored as DICOM WSI instances in the archive. Thread-safe."""

    def __init__(self, headers: Iterable[WsiHeader], files: FileHandleCache) -> None:
        self.files = files
        volumes: dict[tuple[int, int], list[WsiHeader]] = {}
        self.associated: dict[str, WsiHeader] = {}
        for header in headers:
            if header.instance.sop_class_uid != VL_WHOLE_SLIDE_MICROSCOPY_IMAGE_STORAGE:
                continue
            if header.kind in ASSOCIATED_KINDS:
                self.associated.setdefault(header.kind.lower(), header)
            elif header.total_columns > 0 and header.total_rows > 0 and header.instance.frame_index:
                volumes.setdefault((header.total_columns, header.total_rows), []).append(header)
        if not volumes:
            raise NotASlide("the series has no whole-slide pyramid level")
        self.optical_paths: list[dict[str, Any]] = []  # every path in the series, for info
        for group in volumes.values():
            for header in group:
                for path in header.optical_paths:
                    if all(p["identifier"] != path["identifier"] for p in self.optical_paths):
                        self.optical_paths.append(path)
        self.focal_planes = max(h.focal_planes for group in volumes.values() for h in group)
        # One optical path is tiled (the first of the base level); an instance per channel is common.
        base_path = max(volumes.items(), key=lambda item: item[0][0])[1][0].optical_path_identifier
        for size, group in list(volumes.items()):
            same = [h for h in group if h.optical_path_identifier == base_path]
            volumes[size] = same or group
        ordered = sorted(volumes.items(), key=lambda item: -item[0][0])
        base_width, base_height = ordered[0][0]
        self.wsi_levels = []
        for (width, height), group in ordered:
            group.sort(key=lambda h: (h.concatenation_uid, h.concatenation_frame_offset))
            # openslide's rule, so DZI geometry matches DeepZoomGenerator on the same slide
            downsample = (base_width / width + base_height / height) / 2
            self.wsi_levels.append(WsiLevel.assemble(group, downsample))
        self.base = ordered[0][1][0]
        self._levels = [w.level for w in self.wsi_levels]
        digest = hashlib.blake2b(digest_size=12)
        for wsi_level in self.wsi_levels:
            for header in wsi_level.headers:
                digest.update(header.instance.sha256.encode())
        self._identity = digest.hexdigest()

    # TileSource ---------------------------------------------------------------------------------

    @property
    def levels(self) -> Sequence[Level]:
        return self._levels

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def mpp(self) -> tuple[float, float] | None:
        spacing = self.base.pixel_spacing_mm
        if not spacing or spacing[0] <= 0 or spacing[1] <= 0:
            return None
        return spacing[1] * 1000, spacing[0] * 1000  # (x = column spacing, y = row spacing) in µm

    def read_encoded_tile(self, level: int, column: int, row: int) -> EncodedTile | None:
        located = self.wsi_levels[level].frame_of(column, row)
        if located is None:
            return None
        header, frame = located
        instance = header.instance
        if instance.transfer_syntax_uid not in JPEG_SYNTAXES:
            return None
        # JPEG colour: browsers assume YCbCr (JFIF); an RGB-coded stream would show false colours.
        if not instance.photometric_interpretation.startswith("YBR"):
            return None
        return EncodedTile(self._frame_bytes(instance, frame), "image/jpeg")

    def read_encoded_tile_nowait(self, level: int, column: int, row: int) -> EncodedTile | None:
        """The stored JPEG tile when the page cache holds it (one non-blocking preadv), else None."""
        located = self.wsi_levels[level].frame_of(column, row)
        if located is None:
            return None
        header, frame = located
        instance = header.instance
        index = instance.frame_index
        if (
            index is None
            or instance.transfer_syntax_uid not in JPEG_SYNTAXES
            or not instance.photometric_interpretation.startswith("YBR")
        ):
            return None
        ranges = index.frame_ranges(frame)
        if len(ranges) != 1:
            return None  # fragmented frames: the executor path joins them
        handle = self.files.cached(instance.path)
        if handle is None:
            return None  # opening a file may block: leave it to the executor
        offset, length = ranges[0]
        data = pread_if_cached(handle.fd, length, offset)
        return EncodedTile(data, "image/jpeg") if data is not None else None

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        wsi_level = self.wsi_levels[level]
        lv = wsi_level.level
        canvas = Image.new("RGB", (max(1, width), max(1, height)), BACKGROUND)
        x_end, y_end = min(x + width, lv.width), min(y + height, lv.height)
        for row in range(max(0, y) // lv.tile_height, -(-y_end // lv.tile_height)):
            for column in range(max(0, x) // lv.tile_width, -(-x_end // lv.tile_width)):
                located = wsi_level.frame_of(column, row)
                if located is None:
                    continue  # sparse: nothing was scanned here, glass
                tile = self._decode(*located)
                canvas.paste(tile, (column * lv.tile_width - x, row * lv.tile_height - y))
        return canvas

    # associated images and metadata ----------------------------------------------------------------

    def associated_image(self, kind: str) -> Image.Image:
        header = self.associated[kind]
        instance = header.instance
        if instance.number_of_frames == 1:
            return self._decode(header, 0)
        level = WsiLevel.assemble([header], 1.0)
        canvas = Image.new("RGB", (header.total_columns, header.total_rows), BACKGROUND)
        for row in range(level.level.rows):
            for column in range(level.level.columns):
                located = level.frame_of(column, row)
                if located is not None:
                    canvas.paste(
                        self._decode(*located),
                        (column * level.level.tile_width, row * level.level.tile_height),
                    )
        return canvas

    def associated_encoded(self, kind: str) -> EncodedTile | None:
        """The stored JPEG of a single-frame associated image, untouched, when it can be."""
        header = self.associated[kind]
        instance = header.instance
        if (
            instance.number_of_frames == 1
            and instance.transfer_syntax_uid in JPEG_SYNTAXES
            and instance.photometric_interpretation.startswith("YBR")
            and (instance.columns, instance.rows) == (header.total_columns, header.total_rows)
        ):
            return EncodedTile(self._frame_bytes(instance, 0), "image/jpeg")
        return None

    @property
    def objective_power(self) -> float | None:
        for path in self.base.optical_paths:
            if path["objective_lens_power"]:
                return float(path["objective_lens_power"])
        return None

    # internals ------------------------------------------------------------------------------------

    def _frame_bytes(self, instance: StoredInstance, frame: int) -> bytes:
        index = instance.frame_index
        if index is None:
            raise SourceUnreadable(f"instance {instance.sop_instance_uid} has no frame index")
        handle = self.files.get(instance.path)
        try:
            return index.read_frame(handle.fd, frame)
        except (OSError, IndexError) as exc:
            raise SourceUnreadable(f"frame {frame} of {instance.sop_instance_uid}: {exc}") from exc

    def _decode(self, header: WsiHeader, frame: int) -> Image.Image:
        instance = header.instance
        data = self._frame_bytes(instance, frame)
        syntax = instance.transfer_syntax_uid
        try:
            if syntax in NATIVE_SYNTAXES:
                samples = instance.samples_per_pixel or 1
                shape = (instance.rows or 0, instance.columns or 0, samples)
                pixels = np.frombuffer(data, np.uint8, shape[0] * shape[1] * samples).reshape(shape)
                mode = "RGB" if samples == 3 else "L"
                return Image.fromarray(pixels if samples == 3 else pixels[..., 0], mode).convert("RGB")
            return Image.open(io.BytesIO(data)).convert("RGB")
        except (OSError, ValueError) as exc:
            raise SourceUnreadable(
                f"cannot decode frame {frame} of {instance.sop_instance_uid} ({syntax}): {exc}"
            ) from exc
