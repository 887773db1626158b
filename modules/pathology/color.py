"""Colour management: a slide's tiles as the scanner's ICC profile says they look, converted to sRGB.

DICOM WSI carries the scanner's ICC profile per optical path (OpticalPathSequence >
ICCProfile). Browsers draw tile pixels as sRGB, so a slide scanned into a wider gamut
looks washed out unless it is converted. Colour-managed tiles are a separate tile
variant (``?color=srgb``): decoded, transformed (one little-cms transform per slide and
optical path, built once and reused) and re-encoded, cached under their own key. Tiles
as stored stay byte-for-byte passthrough.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pydicom
from PIL import Image, ImageCms

from modules.pathology.dicom_source import WsiHeader
from server.tiles import DeepZoom, EncodedTile
from server.tiles.deepzoom import encode_jpeg

log = logging.getLogger(__name__)

SRGB = "srgb"
COLOR_CHOICES = ("", "stored", SRGB)
ICC_PROFILE = "00282000"
OPTICAL_PATH_SEQUENCE = "00480105"
OPTICAL_PATH_IDENTIFIER = "00480106"
QUALITY = 92  # re-encoded tiles: at 92 a second JPEG generation of a q85 scan differs by < 1 level on average


class NoColorProfile(LookupError):
    """The slide (or this optical path) carries no usable ICC profile: there is nothing to convert."""


def _binary(element: dict[str, Any] | None) -> bytes | None:
    if not element or "InlineBinary" not in element:
        return None
    return base64.b64decode(element["InlineBinary"])


def stored_profile(header: WsiHeader, path: str | None = None) -> bytes | None:
    """The ICC profile of an optical path (the first when None) of one instance. Blocking when the
    profile is a top-level bulk data element (older objects): then it is read from the file."""
    items = [
        i for i in header.attributes.get(OPTICAL_PATH_SEQUENCE, {}).get("Value", []) if isinstance(i, dict)
    ]
    for item in items:
        identifier = str((item.get(OPTICAL_PATH_IDENTIFIER, {}).get("Value") or [""])[0])
        if path is None or identifier == path:
            profile = _binary(item.get(ICC_PROFILE))
            if profile:
                return profile
            break
    top = header.attributes.get(ICC_PROFILE)
    if top and "InlineBinary" in top:
        return _binary(top)
    if top and "BulkDataURI" in top:
        try:
            dataset = pydicom.dcmread(
                header.instance.path, stop_before_pixels=True, specific_tags=["ICCProfile"]
            )
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            log.warning("ICC profile of %s unreadable: %s", header.instance.sop_instance_uid, exc)
            return None
        value = dataset.get("ICCProfile")
        return bytes(value) if value else None
    return None


@dataclass(frozen=True)
class ColorTransform:
    """An ICC profile → sRGB transform (little-cms), safe to apply from several threads at once."""

    description: str
    transform: ImageCms.ImageCmsTransform

    @classmethod
    def build(cls, profile: bytes) -> ColorTransform:
        """Raises NoColorProfile when the bytes are not an RGB ICC profile little-cms accepts."""
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            description = (ImageCms.getProfileDescription(source) or "").strip()
            transform = ImageCms.buildTransform(
                source,
                ImageCms.createProfile("sRGB"),
                "RGB",
                "RGB",
                renderingIntent=ImageCms.Intent.PERCEPTUAL,
            )
        except (OSError, ImageCms.PyCMSError, ValueError, TypeError) as exc:
            raise NoColorProfile(f"the ICC profile cannot be used: {exc}") from exc
        return cls(description, transform)

    def apply(self, image: Image.Image) -> Image.Image:
        return ImageCms.applyTransform(image.convert("RGB"), self.transform) or image


def describe(profile: bytes | None) -> str | None:
    """The profile's description tag, for /info; None when there is no readable profile."""
    if not profile:
        return None
    try:
        return (ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile))) or "").strip()
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError):
        return None


class ColorManagedDeepZoom(DeepZoom):
    """The same Deep Zoom image with every tile converted to sRGB; its own identity (cache key)."""

    def __init__(self, base: DeepZoom, transform: ColorTransform) -> None:
        super().__init__(base.source, base.tile_size, base.overlap, QUALITY)
        self.base = base
        self.color = transform

    @cached_property
    def identity(self) -> str:
        return f"{self.base.identity}/{SRGB}"

    def read_tile_nowait(self, dz_level: int, column: int, row: int) -> EncodedTile | None:
        self.plan(dz_level, column, row)  # raises TileNotFound for an address outside the pyramid
        return None  # every tile is decoded and converted: in the executor

    def read_tile(self, dz_level: int, column: int, row: int) -> EncodedTile:
        plan = self.plan(dz_level, column, row)
        image: Image.Image | None = None
        if plan.passthrough is not None:
            stored = self.source.read_encoded_tile(plan.source_level, *plan.passthrough)
            if stored is not None and stored.media_type == "image/jpeg":
                image = Image.open(io.BytesIO(stored.data))
        if image is None:
            x, y, width, height = plan.region
            image = self.source.read_region(plan.source_level, x, y, width, height)
            if image.size != plan.size:
                image = image.resize(plan.size, Image.Resampling.LANCZOS, reducing_gap=2.0)
        return EncodedTile(encode_jpeg(self.color.apply(image), self.quality), "image/jpeg")


class SlideColor:
    """One slide's colour management: transforms per optical path and colour-managed views, built once."""

    def __init__(self) -> None:
        self._transforms: dict[str, ColorTransform | NoColorProfile] = {}
        self._views: dict[str, ColorManagedDeepZoom] = {}
        self._lock = threading.Lock()

    def transform(self, header: WsiHeader, path: str | None) -> ColorTransform:
        """Blocking the first time (profile parse, transform build). Raises NoColorProfile."""
        key = f"{header.instance.sop_instance_uid}\0{path}"
        with self._lock:
            found = self._transforms.get(key)
        if found is None:
            profile = stored_profile(header, path)
            try:
                if not profile:
                    raise NoColorProfile("the slide carries no ICC profile")
                found = ColorTransform.build(profile)
            except NoColorProfile as exc:
                found = exc
            with self._lock:
                self._transforms.setdefault(key, found)
        if isinstance(found, NoColorProfile):
            raise found
        return found

    def cached_view(self, base: DeepZoom) -> ColorManagedDeepZoom | None:
        """Non-blocking: the colour-managed twin of a view, if built already."""
        return self._views.get(base.identity)

    def view(self, base: DeepZoom, header: WsiHeader, path: str | None) -> ColorManagedDeepZoom:
        """Blocking: the colour-managed twin of a Deep Zoom view. Raises NoColorProfile."""
        found = self._views.get(base.identity)
        if found is not None:
            return found
        made = ColorManagedDeepZoom(base, self.transform(header, path))
        with self._lock:
            return self._views.setdefault(base.identity, made)
