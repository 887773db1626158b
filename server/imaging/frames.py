"""Decode one frame of a stored instance, reading only that frame's bytes when the file allows."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, pixel_array

from server.archive.archive import StoredInstance
from server.archive.pixeldata import FrameLayout
from server.imaging.codecs import CodestreamMismatch, FrameGeometry, check_codestream, decode_compressed
from server.isolation import decoder_pool

NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DECODE_TIMEOUT = 60.0  # seconds: a decoder still busy after this is stuck on a hostile codestream


class FrameDecodeError(ValueError):
    """A frame that cannot be decoded (corrupt codestream, unsupported syntax)."""


class HeaderCache:
    """Parsed headers (no pixel data) by SOP Instance UID: rendering needs LUTs and windows."""

    def __init__(self, capacity: int = 512) -> None:
        self._items: OrderedDict[str, Dataset] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity

    def get(self, instance: StoredInstance) -> Dataset:
        with self._lock:
            ds = self._items.get(instance.sop_instance_uid)
            if ds is not None:
                self._items.move_to_end(instance.sop_instance_uid)
                return ds
        ds = dcmread(instance.path, stop_before_pixels=True)
        with self._lock:
            self._items[instance.sop_instance_uid] = ds
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return ds


def read_frame_bytes(instance: StoredInstance, frame: int) -> bytes:
    """The stored bytes of a 0-based frame (compressed as stored, or native)."""
    index = instance.frame_index
    if index is None or index.layout == FrameLayout.VIDEO:
        raise FrameDecodeError("frames of this instance cannot be addressed individually")
    fd = os.open(instance.path, os.O_RDONLY)
    try:
        return index.read_frame(fd, frame)
    finally:
        os.close(fd)


def decode_frame(instance: StoredInstance, header: Dataset, frame: int) -> np.ndarray:
    """A 0-based frame as an array (rows, columns[, samples]); colour converted to RGB."""
    if not 0 <= frame < instance.number_of_frames:
        raise IndexError(frame)
    try:
        if instance.frame_index is None:
            return _decode_from_file(instance.path, frame)
        data = read_frame_bytes(instance, frame)
        syntax = (
            "1.2.840.10008.1.2.1" if instance.transfer_syntax_uid in NATIVE else instance.transfer_syntax_uid
        )
        geometry = FrameGeometry(
            int(header.Rows),
            int(header.Columns),
            int(header.get("SamplesPerPixel", 1)),
            int(header.BitsAllocated),
        )
        if syntax not in NATIVE:
            check_codestream(syntax, data, geometry)  # before any decoder allocates by its header
        options: dict[str, Any] = {
            "rows": geometry.rows,
            "columns": geometry.columns,
            "samples_per_pixel": geometry.samples,
            "bits_allocated": geometry.bits_allocated,
            "bits_stored": int(header.get("BitsStored", header.BitsAllocated)),
            "pixel_representation": int(header.get("PixelRepresentation", 0)),
            "photometric_interpretation": str(header.get("PhotometricInterpretation", "MONOCHROME2")),
            "number_of_frames": 1,
            "planar_configuration": int(header.get("PlanarConfiguration", 0)),
            "pixel_keyword": "PixelData",
        }
        if syntax in NATIVE:
            array, _ = get_decoder(syntax).as_array(data, index=0, **options)
            return array
        if syntax == JPEG_BASELINE and "pillow" in get_decoder(syntax).available_plugins:
            # Baseline JPEG (echo loops, WSI tiles, most ultrasound) is the hot path and stays in
            # this process: libjpeg-turbo behind Pillow is the most exercised codec there is, and
            # a round trip to a worker would cost more than the decode. Its SOF was checked above
            # and Pillow's bomb guard is set (server.imaging.codecs).
            options["decoding_plugin"] = "pillow"
            decoder = get_decoder(syntax)
            array, _ = decoder.as_array(encapsulate([data], has_bot=False), index=0, **options)
            return array
        return decoder_pool.run(decode_compressed, syntax, data, options, timeout=DECODE_TIMEOUT)
    except (IndexError, FrameDecodeError):
        raise
    except CodestreamMismatch as exc:
        raise FrameDecodeError(f"frame {frame + 1} is refused: {exc}") from exc
    except Exception as exc:  # a decoder's own error, or NativeWorkerFailed when its worker crashed
        raise FrameDecodeError(f"frame {frame + 1} cannot be decoded: {exc}") from exc


def _decode_from_file(path: Path, frame: int) -> np.ndarray:
    """Deflated, big-endian and bit-packed data sets: decode through pydicom from the whole file."""
    ds = dcmread(path)
    if int(ds.get("NumberOfFrames", 1) or 1) == 1:
        return ds.pixel_array
    return pixel_array(ds, index=frame)


def native_bytes(array: np.ndarray, header: Dataset) -> bytes:
    """A decoded frame as uncompressed little-endian bytes (for octet-stream frame retrieval)."""
    bits = int(header.BitsAllocated)
    signed = int(header.get("PixelRepresentation", 0)) == 1
    dtype = {8: "i1" if signed else "u1", 16: "<i2" if signed else "<u2", 32: "<i4" if signed else "<u4"}.get(
        bits
    )
    if dtype is None:
        raise FrameDecodeError(f"cannot write {bits}-bit frames uncompressed")
    return np.ascontiguousarray(array.astype(dtype, copy=False)).tobytes()


def load_dataset(path: Path) -> Dataset:
    return dcmread(path)
