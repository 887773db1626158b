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


class NoSuchView(LookupError):
    """The slide has no such optical path or focal plane (a client error, answered 404)."""


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
    # Paths in the order TILED_FULL frames cycle through them (the shared path alone when one is named)
    frame_order_paths: tuple[str, ...] = ()
    # TILED_SPARSE: per frame, its optical path and its ZOffsetInSlideCoordinateSystem (µm) or None
    sparse_paths: list[str] | None = None
    sparse_z: list[float | None] | None = None

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
        shared_path = str(_first((_items(shared, "00480207") or [{}])[0], "00480106", "") or "")
        sparse_paths: list[str] | None = None
        sparse_z: list[float | None] | None = None
        if organization != "TILED_FULL" and per_frame:
            positions, sparse_paths, sparse_z = [], [], []
            for item in per_frame:
                plane = (_items(item, "0048021A") or [{}])[0]
                positions.append((int(_first(plane, "0048021E", 1)), int(_first(plane, "0048021F", 1))))
                sparse_z.append(_float(_first(plane, "0040074A")))
                frame_path = (_items(item, "00480207") or [{}])[0]
                sparse_paths.append(str(_first(frame_path, "00480106", "") or "") or shared_path)
        paths: list[dict[str, Any]] = []
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
            optical_path_identifier=shared_path or (paths[0]["identifier"] if paths else ""),
            sparse_positions=positions,
            attributes=ds,
            frame_order_paths=(shared_path,)
            if shared_path
            else tuple(p["identifier"] for p in paths) or ("",),
            sparse_paths=[p or (paths[0]["identifier"] if paths else "") for p in sparse_paths]
            if sparse_paths is not None
            else None,
            sparse_z=sparse_z,
        )

    def holds_path(self, path: str) -> bool:
        """Whether any frame of this instance shows the optical path."""
        if self.sparse_paths is not None:
            return path in self.sparse_paths
        return path in self.frame_order_paths


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
    def assemble(
        cls, headers: list[WsiHeader], downsample: float, path: str | None = None, plane: int = 0
    ) -> WsiLevel:
        """Place the frames of one optical path and focal plane (``path`` None: each instance's first).

        TILED_FULL frames run tile by tile, then focal plane, then optical path (in the
        instance's OpticalPathSequence order), over the whole concatenation; TILED_SPARSE
        frames say where they lie, which path they show and their Z offset (plane ``n`` is
        the ``n``-th smallest Z offset of the path's frames at that tile position).
        """
        first = headers[0].instance
        tile_w, tile_h = int(first.columns or 0), int(first.rows or 0)
        width, height = headers[0].total_columns, headers[0].total_rows
        level = Level(width, height, downsample, tile_w, tile_h)
        columns, rows = level.columns, level.rows
        tiles = np.full((columns * rows, 2), -1, dtype=np.int64)
        # TILED_SPARSE: at each tile position, the distinct Z offsets of the path's frames, lowest
        # first; plane n is the n-th of them. Ranked per position, not across the level, so a
        # scanner's focus map (one slightly different Z per tile) is still one plane.
        stacks = _sparse_stacks(headers, path, columns, rows)
        for index, stack in stacks.items():
            if plane < len(stack) and tiles[index, 0] < 0:
                tiles[index] = stack[plane]
        for position, header in enumerate(headers):
            frames = header.instance.number_of_frames
            if header.sparse_positions is not None:
                continue
            if path is None:
                path_index = 0
            elif path in header.frame_order_paths:
                path_index = header.frame_order_paths.index(path)
            else:
                continue
            if plane >= header.focal_planes:
                continue
            # frame numbers (0-based, over the whole concatenation) of this path and plane's tiles
            first_frame = (path_index * header.focal_planes + plane) * columns * rows
            start = max(header.concatenation_frame_offset, first_frame)
            stop = min(header.concatenation_frame_offset + frames, first_frame + columns * rows)
            if stop > start:
                slots = slice(start - first_frame, stop - first_frame)
                free = tiles[slots, 0] < 0  # the first instance placed keeps a tile
                tiles[slots, 0][free] = position
                local = np.arange(start, stop) - header.concatenation_frame_offset
                tiles[slots, 1][free] = local[free]
        return cls(level, headers, tiles)

    @property
    def stored_tiles(self) -> int:
        return int((self.tile_frames[:, 0] >= 0).sum())


def _sparse_stacks(
    headers: list[WsiHeader], path: str | None, columns: int, rows: int
) -> dict[int, list[tuple[int, int]]]:
    """Tile index → (instance position, frame) per distinct Z offset, lowest Z first, for one path.

    ``path`` None: each instance's own first path. The first frame met with a given Z keeps it.
    """
    found: dict[int, dict[float | None, tuple[int, int]]] = {}
    for position, header in enumerate(headers):
        if header.sparse_positions is None:
            continue
        tile_w, tile_h = int(header.instance.columns or 1), int(header.instance.rows or 1)
        wanted = path if path is not None else header.optical_path_identifier
        count = len(header.sparse_positions)
        frame_paths = header.sparse_paths or [wanted] * count
        frame_z = header.sparse_z or [None] * count
        for frame, (x, y) in enumerate(header.sparse_positions):
            if frame_paths[frame] != wanted:
                continue
            column, row = (x - 1) // tile_w, (y - 1) // tile_h
            if 0 <= column < columns and 0 <= row < rows:
                found.setdefault(row * columns + column, {}).setdefault(frame_z[frame], (position, frame))
    return {
        index: [by_z[z] for z in sorted(by_z, key=lambda z: -1e308 if z is None else z)]
        for index, by_z in found.items()
    }


def focal_plane_count(headers: list[WsiHeader], path: str) -> int:
    """How many focal planes one level's instances hold for an optical path."""
    planes = max(
        (h.focal_planes for h in headers if h.sparse_positions is None and h.holds_path(path)), default=0
    )
    if any(h.sparse_positions is not None for h in headers):
        first = headers[0]
        tile_w, tile_h = int(first.instance.columns or 1), int(first.instance.rows or 1)
        columns, rows = -(-first.total_columns // tile_w), -(-first.total_rows // tile_h)
        stacks = _sparse_stacks(headers, path, columns, rows)
        planes = max(planes, max((len(stack) for stack in stacks.values()), default=0))
    return planes


# -- the source ------------------------------------------------------------------------------------


class DicomWsiSource:
    """A slide stored as DICOM WSI instances in the archive. Thread-safe."""

    def __init__(
        self,
        headers: Iterable[WsiHeader],
        files: FileHandleCache,
        optical_path: str | None = None,
        focal_plane: int = 0,
    ) -> None:
        """The pyramid of one optical path and focal plane; the default (None, 0) is the first of each.

        A named path keeps only the levels that hold it (another path's pixels would be
        wrong pixels); the default keeps the historical rule (the base level's first path,
        any instance of a level without it). Raises NoSuchView for a path or plane the
        series does not hold.
        """
        self.files = files
        self.headers = list(headers)
        volumes: dict[tuple[int, int], list[WsiHeader]] = {}
        self.associated: dict[str, WsiHeader] = {}
        for header in self.headers:
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
        base_group = max(volumes.items(), key=lambda item: item[0][0])[1]
        self.default_path = base_group[0].optical_path_identifier
        # focal planes per optical path, counted on the base level
        base_paths = dict.fromkeys(p for h in base_group for p in (h.sparse_paths or h.frame_order_paths))
        self.planes: dict[str, int] = {p: focal_plane_count(base_group, p) for p in base_paths}
        self.focal_planes = max([*self.planes.values(), *(h.focal_planes for h in base_group)])
        selected = self.default_path if optical_path is None else optical_path
        self.is_default = optical_path in (None, self.default_path) and focal_plane == 0
        if not self.is_default and not 0 <= focal_plane < self.planes.get(selected, 0):
            raise NoSuchView(
                f"the slide has no optical path {selected[:64]!r} with focal plane {focal_plane}"
                f" (paths and planes: {self.planes})"
            )
        self.optical_path, self.focal_plane = selected, focal_plane
        for size, group in list(volumes.items()):
            same = [h for h in group if h.holds_path(selected)]
            if same or not self.is_default:
                volumes[size] = same
        ordered = sorted(((s, g) for s, g in volumes.items() if g), key=lambda item: -item[0][0])
        base_width, base_height = ordered[0][0]
        self.wsi_levels: list[WsiLevel] = []
        for (width, height), group in ordered:
            group.sort(key=lambda h: (h.concatenation_uid, h.concatenation_frame_offset))
            # openslide's rule, so DZI geometry matches DeepZoomGenerator on the same slide
            downsample = (base_width / width + base_height / height) / 2
            level = WsiLevel.assemble(group, downsample, None if self.is_default else selected, focal_plane)
            if self.is_default or level.stored_tiles or not self.wsi_levels:
                self.wsi_levels.append(level)
        self.base = ordered[0][1][0]
        self._levels = [w.level for w in self.wsi_levels]
        digest = hashlib.blake2b(digest_size=12)
        for wsi_level in self.wsi_levels:
            for header in wsi_level.headers:
                digest.update(header.instance.sha256.encode())
        if not self.is_default:  # same instances, other frames: other tile URLs and cache keys
            digest.update(f"\0{selected}\0{focal_plane}".encode())
        self._identity = digest.hexdigest()

    def views(self) -> list[tuple[str, int]]:
        """Every (optical path, focal plane) this slide can show, the default first."""
        default = (self.default_path, 0)
        listed = [p["identifier"] for p in self.optical_paths]
        order = sorted(self.planes, key=lambda p: listed.index(p) if p in listed else len(listed))
        others = [(p, z) for p in order for z in range(self.planes[p]) if (p, z) != default]
        return [default, *others]

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
