"""Large grayscale DICOM images (mammograms, tomosynthesis slices, radiographs) as deep-zoom sources.

A 4096 × 5625 16-bit mammogram is one compressed frame: decoding it for every tile
would cost a second per tile. So the *stored values* of every frame are decoded once
and written into a zarr pyramid (levels halved down to one tile, 512 × 512 chunks)
under ``settings.derived_dir / "pyramids"``; tiles are then cut from the pyramid and
rendered to 8 bit with the window asked for. Keeping stored values (not 8-bit pixels)
is what makes window/level changes cheap: a new window re-renders from the cached
pyramid, it never decodes the DICOM file again.

Usage (blocking calls: run them in an executor)::

    source = open_dicom_image(ctx, sop_instance_uid, frame=0)   # builds the pyramid once
    source.levels, source.mpp, source.presets, source.default_window
    view = source.windowed(Window(2048, 4096))                  # a TileSource rendered that way
    DeepZoom(view).read_tile(level, column, row)                # DZI tiles, as for any source
    source.read_values(level, x, y, width, height)              # stored values, e.g. for statistics
    stack = source.read_frames(level, first, last)              # (frames, h, w) values: slabs

``windowed(None)`` renders with the file's own VOI: its VOI LUT sequence, else its first
window preset (with VOILUTFunction linear / sigmoid), else the full range. A built
pyramid is published by renaming a finished temporary folder, under a per-pyramid lock
(a thread lock plus an ``flock`` for other processes), so concurrent first requests
build it once and a crash never leaves a half-written pyramid behind. With an object store
(``blob_store_url``) a built pyramid is uploaded before that rename, and a process that lacks
one downloads it whole before it would build it; tiles are always read from local files.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from server.imaging.calibration import Calibration, resolve_calibration
from server.imaging.frames import FrameDecodeError, decode_frame
from server.imaging.rendering import Window, default_window, to_display, window_presets
from server.tiles.source import EncodedTile, Level, SourceUnreadable, TileNotFound

if TYPE_CHECKING:
    from server.archive.archive import StoredInstance
    from server.archive.objectstore import BlobMirror
    from server.context import ServerContext

log = logging.getLogger(__name__)

TILE_SIZE = 512
PYRAMID_FORMAT = 1  # bump when the on-disk layout changes: old pyramids are then rebuilt
_EXTRAS_KEY = "tiles.dicom_images"


class NotAGrayscaleImage(SourceUnreadable):
    """The instance has no single-sample pixel data this source can pyramid (colour, video, no pixels)."""


class Pyramid:
    """The zarr pyramid of every frame of one instance: level ``i`` is ``(frames, h_i, w_i)`` stored values."""

    def __init__(self, path: Path) -> None:
        import zarr

        self.path = path
        self.group = zarr.open_group(str(path), mode="r")
        count = int(str(self.group.attrs["levels"]))
        self.arrays: list[Any] = []
        for i in range(count):
            array = self.group[str(i)]
            if not isinstance(array, zarr.Array):
                raise SourceUnreadable(f"pyramid {path.name} level {i} is not an array")
            self.arrays.append(array)
        self.frames = int(self.arrays[0].shape[0])
        base_h, base_w = int(self.arrays[0].shape[1]), int(self.arrays[0].shape[2])
        self.levels: tuple[Level, ...] = tuple(
            Level(
                int(a.shape[2]),
                int(a.shape[1]),
                (base_w / int(a.shape[2]) + base_h / int(a.shape[1])) / 2,
                TILE_SIZE,
                TILE_SIZE,
            )
            for a in self.arrays
        )

    def read(self, level: int, frames: slice, y: int, x: int, height: int, width: int) -> np.ndarray:
        return np.asarray(self.arrays[level][frames, y : y + height, x : x + width])


def halve(values: np.ndarray) -> np.ndarray:
    """2 × 2 mean of the last two axes (odd edges replicated), rounded, in the input's dtype.

    Means, not subsampling: a downsampled level must look like the full image seen from
    afar, or microcalcifications alias into noise at overview zoom.
    """
    h, w = values.shape[-2], values.shape[-1]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (values.ndim - 2) + [(0, h % 2), (0, w % 2)]
        values = np.pad(values, pad, mode="edge")
    v = values.astype(np.float32)
    mean = (v[..., 0::2, 0::2] + v[..., 1::2, 0::2] + v[..., 0::2, 1::2] + v[..., 1::2, 1::2]) * 0.25
    return np.rint(mean).astype(values.dtype)


def build_pyramid(instance: StoredInstance, header: Dataset, target: Path) -> None:
    """Decode every frame once and write the pyramid into ``target`` (a fresh folder)."""
    import zarr

    samples = int(header.get("SamplesPerPixel", 1))
    if samples != 1 or not instance.rows:
        raise NotAGrayscaleImage(f"instance {instance.sop_instance_uid} is not single-sample pixel data")
    rows, columns = int(header.Rows), int(header.Columns)
    frames = max(1, instance.number_of_frames)
    group = zarr.open_group(str(target), mode="w")
    shapes = [(rows, columns)]
    while shapes[-1][0] > TILE_SIZE or shapes[-1][1] > TILE_SIZE:
        h, w = shapes[-1]
        shapes.append((max(1, -(-h // 2)), max(1, -(-w // 2))))
    arrays: list[Any] = []
    dtype: np.dtype[Any] | None = None
    for index in range(frames):
        try:
            values = decode_frame(instance, header, index)
        except (FrameDecodeError, IndexError) as exc:
            raise SourceUnreadable(f"frame {index + 1} of {instance.sop_instance_uid}: {exc}") from exc
        if values.ndim != 2:
            raise NotAGrayscaleImage(f"frame {index + 1} is not a 2D grayscale frame")
        if dtype is None:
            dtype = values.dtype
            for i, (h, w) in enumerate(shapes):
                arrays.append(
                    group.create_array(
                        str(i), shape=(frames, h, w), chunks=(1, TILE_SIZE, TILE_SIZE), dtype=dtype
                    )
                )
        for i, array in enumerate(arrays):
            if i:
                values = halve(values)
            array[index] = values
    group.attrs.update(
        {"levels": len(shapes), "format": PYRAMID_FORMAT, "sop_instance_uid": instance.sop_instance_uid}
    )


class PyramidStore:
    """Built pyramids on disk (built once, atomically) and the open ones in memory (an LRU)."""

    def __init__(self, root: Path, capacity: int = 64, mirror: BlobMirror | None = None) -> None:
        self.root = root
        self.capacity = capacity
        self.mirror = mirror  # an object store: pyramids built elsewhere are fetched, ours published
        self._open: OrderedDict[str, Pyramid] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.builds = 0  # how many pyramids this process built (tests check "built once")
        self.fetches = 0  # how many it fetched whole from the object store instead

    def key_of(self, instance: StoredInstance) -> str:
        # The blob digest is part of the key: a replaced instance never reuses the old pyramid.
        return f"{instance.sop_instance_uid}-{instance.sha256[:16]}-v{PYRAMID_FORMAT}"

    def cached(self, key: str) -> Pyramid | None:
        with self._guard:
            pyramid = self._open.get(key)
            if pyramid is not None:
                self._open.move_to_end(key)
            return pyramid

    def get(self, instance: StoredInstance, header: Dataset) -> Pyramid:
        """The instance's pyramid, built first if no process has built it yet. Blocking."""
        key = self.key_of(instance)
        pyramid = self.cached(key)
        if pyramid is not None:
            return pyramid
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            pyramid = self.cached(key)
            if pyramid is None:
                final = self.root / f"{key}.zarr"
                if not final.is_dir():
                    self._build_locked(instance, header, final)
                pyramid = Pyramid(final)
                with self._guard:
                    self._open[key] = pyramid
                    while len(self._open) > self.capacity:
                        self._open.popitem(last=False)
        return pyramid

    def _build_locked(self, instance: StoredInstance, header: Dataset, final: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{final.stem}.lock", "a+b") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)  # other server processes wait for our build
            try:
                if final.is_dir():
                    return
                temp = self.root / f".tmp-{final.stem}-{uuid.uuid4().hex[:8]}"
                try:
                    name = f"pyramids/{final.name}"  # its key under the object store's derived/
                    if self.mirror is not None and self.mirror.fetch_product_folder(name, temp):
                        os.rename(temp, final)
                        self.fetches += 1
                        log.info("fetched pyramid %s", final.name)
                        return
                    build_pyramid(instance, header, temp)
                    if self.mirror is not None:
                        self.mirror.publish_product_folder(name, temp)  # before the rename, as blobs
                    os.rename(temp, final)
                    self.builds += 1
                    log.info("built pyramid %s", final.name)
                except BaseException:
                    shutil.rmtree(temp, ignore_errors=True)
                    raise
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)

    def forget(self, sop_instance_uid: str) -> None:
        """Drop open pyramids of an instance (it was replaced); the files stay until cleaned."""
        with self._guard:
            for key in [k for k in self._open if k.startswith(sop_instance_uid + "-")]:
                del self._open[key]


def image_identity(instance: StoredInstance, frame: int = 0) -> str:
    """What keys a frame's tiles and description: changes whenever the stored pixels may (a replaced
    instance has another digest). Known from the index alone, before any pyramid exists."""
    return f"dicom-image/{instance.sop_instance_uid}/{instance.sha256[:16]}/{frame}"


class DicomImageSource:
    """One frame of a grayscale DICOM image as stored values in a pyramid, rendered on request.

    Not itself a TileSource of 8-bit pixels: ask ``windowed(window)`` for that, so the
    window is part of the tile cache key. Thread-safe (zarr reads only).
    """

    def __init__(self, instance: StoredInstance, header: Dataset, pyramid: Pyramid, frame: int) -> None:
        if not 0 <= frame < pyramid.frames:
            raise TileNotFound(f"frame {frame + 1} is outside 1..{pyramid.frames}")
        self.instance = instance
        self.header = header
        self.pyramid = pyramid
        self.frame = frame

    @property
    def sop_instance_uid(self) -> str:
        return self.instance.sop_instance_uid

    @property
    def number_of_frames(self) -> int:
        return self.pyramid.frames

    @property
    def levels(self) -> Sequence[Level]:
        return self.pyramid.levels

    @property
    def width(self) -> int:
        return self.pyramid.levels[0].width

    @property
    def height(self) -> int:
        return self.pyramid.levels[0].height

    @cached_property
    def calibration(self) -> Calibration:
        """The header's calibration by the shared rule (``server.imaging.calibration``): for a
        mammogram ImagerPixelSpacing ÷ EstimatedRadiographicMagnificationFactor, i.e. at the breast."""
        return resolve_calibration(self.header).active

    @property
    def mpp(self) -> tuple[float, float] | None:
        """µm per level-0 pixel (x, y) in the calibrated plane; None when uncalibrated."""
        c = self.calibration
        if c.row_spacing_mm is None or c.column_spacing_mm is None:
            return None
        return (c.column_spacing_mm * 1000.0, c.row_spacing_mm * 1000.0)

    @property
    def identity(self) -> str:
        return image_identity(self.instance, self.frame)

    @cached_property
    def presets(self) -> list[tuple[str, Window]]:
        """The file's window presets (explanation, window), in the order the file lists them."""
        return window_presets(self.header)

    @cached_property
    def default_window(self) -> Window | None:
        """The window used when none is asked for and the file has no VOI LUT sequence."""
        return default_window(self.header)

    @property
    def has_voi_lut(self) -> bool:
        return "VOILUTSequence" in self.header

    def read_values(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Stored values of a rectangle of this frame (level coordinates, clipped at the edges)."""
        self._check_level(level)
        return self.pyramid.read(level, slice(self.frame, self.frame + 1), y, x, height, width)[0]

    def read_frames(self, level: int, first: int, last: int) -> np.ndarray:
        """Stored values of frames ``first..last`` (0-based, inclusive) of a whole level: ``(n, h, w)``."""
        self._check_level(level)
        if not 0 <= first <= last < self.pyramid.frames:
            raise TileNotFound(f"frames {first + 1}..{last + 1} are outside 1..{self.pyramid.frames}")
        lv = self.pyramid.levels[level]
        return self.pyramid.read(level, slice(first, last + 1), 0, 0, lv.height, lv.width)

    def render(self, values: np.ndarray, window: Window | None = None) -> np.ndarray:
        """Stored values to 8-bit display values with this file's modality LUT, VOI and polarity."""
        return to_display(values, self.header, window)

    def windowed(self, window: Window | None = None) -> WindowedImage:
        """A TileSource of this frame rendered with ``window`` (None: the file's own VOI)."""
        return WindowedImage(self, window)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < len(self.pyramid.levels):
            raise TileNotFound(f"level {level} is outside 0..{len(self.pyramid.levels) - 1}")


class WindowedImage:
    """A :class:`DicomImageSource` frame rendered with one window: the TileSource DeepZoom consumes."""

    def __init__(self, image: DicomImageSource, window: Window | None) -> None:
        self.image = image
        self.window = window

    @property
    def levels(self) -> Sequence[Level]:
        return self.image.levels

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self.image.mpp

    @property
    def identity(self) -> str:
        w = self.window
        voi = "file" if w is None else f"{w.center:g},{w.width:g},{w.function}"
        return f"{self.image.identity}/{voi}"

    def read_encoded_tile(self, level: int, column: int, row: int) -> EncodedTile | None:
        return None  # nothing is stored encoded: every tile is rendered from stored values

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        values = self.image.read_values(level, x, y, width, height)
        return Image.fromarray(self.image.render(values, self.window)).convert("RGB")


def _store_of(ctx: ServerContext) -> PyramidStore:
    store = ctx.extras.get(_EXTRAS_KEY)
    if not isinstance(store, PyramidStore):
        root = ctx.settings.derived_dir / "pyramids"
        store = ctx.extras.setdefault(_EXTRAS_KEY, PyramidStore(root, mirror=ctx.archive.blobs.mirror))
    assert isinstance(store, PyramidStore)
    return store


def open_dicom_image(ctx: ServerContext, sop_instance_uid: str, frame: int = 0) -> DicomImageSource:
    """One 0-based frame of a stored grayscale image, its pyramid built on first use. Blocking.

    Raises LookupError for an unknown SOP Instance UID, TileNotFound for a frame out of
    range, NotAGrayscaleImage / SourceUnreadable when the pixels cannot be pyramided.
    """
    instance = ctx.archive.instance_by_uid(sop_instance_uid)
    if instance is None:
        raise LookupError(f"no instance {sop_instance_uid} in the archive")
    return dicom_image_of(ctx, instance, frame)


def dicom_image_of(ctx: ServerContext, instance: StoredInstance, frame: int = 0) -> DicomImageSource:
    """As :func:`open_dicom_image`, for a caller that already holds the StoredInstance. Blocking."""
    header = ctx.headers.get(instance)
    if int(header.get("SamplesPerPixel", 1)) != 1 or not instance.rows:
        raise NotAGrayscaleImage(f"instance {instance.sop_instance_uid} has no grayscale pixel data")
    pyramid = _store_of(ctx).get(instance, header)
    return DicomImageSource(instance, header, pyramid, frame)


def forget_dicom_image(ctx: ServerContext, sop_instance_uid: str) -> None:
    """Call when an instance is stored again (it may have been replaced): reopen on next use."""
    _store_of(ctx).forget(sop_instance_uid)


def pyramid_store(ctx: ServerContext) -> PyramidStore:
    """The process's pyramid store (for statistics and tests)."""
    return _store_of(ctx)
