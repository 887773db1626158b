"""Rendering a decoded frame for display: modality LUT, VOI (window or LUT), polarity, 8-bit.

Follows the grayscale pipeline of PS3.3 C.11 so MONOCHROME1, rescaled CT and data with
VOI LUT sequences show as the modality intended; palette colour and YBR come out as RGB.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

VoiFunction = Literal["linear", "linear-exact", "sigmoid"]


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: VoiFunction = "linear"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 viewport: the output size, and optionally the source region to crop first."""

    width: int
    height: int
    source: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window to 0..255 (float) with the PS3.3 C.11.2.1.2 formulas."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, max(window.width, 1.0)
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "linear-exact":
        return np.clip(((x - c) / w + 0.5) * 255.0, 0, 255)
    if w <= 1:
        return np.where(x < c - 0.5, 0.0, 255.0)
    return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0, 255)


def _first(value: object) -> float:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def default_window(header: Dataset) -> Window | None:
    if "WindowCenter" in header and "WindowWidth" in header:
        function = str(header.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-")
        if function not in ("linear", "linear-exact", "sigmoid"):
            function = "linear"
        return Window(_first(header.WindowCenter), _first(header.WindowWidth), function)  # type: ignore[arg-type]
    return None


def window_presets(header: Dataset) -> list[tuple[str, Window]]:
    """Every window the file offers (WindowCenter/WindowWidth are multi-valued), with its
    WindowCenterWidthExplanation, so a viewer can list them; mammograms often carry two or three."""
    if "WindowCenter" not in header or "WindowWidth" not in header:
        return []

    def listed(value: Any) -> list[Any]:
        multi = isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"
        return list(value) if multi else [value]

    centers, widths = listed(header.WindowCenter), listed(header.WindowWidth)
    explanations = listed(header.get("WindowCenterWidthExplanation", []) or [])
    function = str(header.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-")
    if function not in ("linear", "linear-exact", "sigmoid"):
        function = "linear"
    presets = []
    for i, (center, width) in enumerate(zip(centers, widths, strict=False)):
        name = str(explanations[i]) if i < len(explanations) and explanations[i] else f"Window {i + 1}"
        presets.append((name, Window(float(center), float(width), function)))  # type: ignore[arg-type]
    return presets


def to_display(array: np.ndarray, header: Dataset, window: Window | None = None) -> np.ndarray:
    """A decoded frame to an 8-bit grayscale (H, W) or RGB (H, W, 3) array."""
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, header)
        bits = 16 if rgb.dtype.itemsize > 1 else 8
        return (rgb >> (bits - 8)).astype(np.uint8) if bits > 8 else rgb.astype(np.uint8)
    if array.ndim == 3:
        if array.dtype.itemsize > 1:
            stored = int(header.get("BitsStored", 8 * array.dtype.itemsize))
            return (array.astype(np.uint32) >> max(stored - 8, 0)).clip(0, 255).astype(np.uint8)
        return array.astype(np.uint8, copy=False)
    values = apply_modality_lut(array, header)
    if window is not None:
        out = apply_window(values, window)
    elif "VOILUTSequence" in header:
        # The LUT is indexed by (integer) modality values: never hand it floats.
        lut_input = array if "ModalityLUTSequence" in header else np.rint(values).astype(np.int32)
        lut_out = apply_voi_lut(lut_input, header, prefer_lut=True)
        descriptor = header.VOILUTSequence[0].LUTDescriptor
        lut_bits = int(descriptor[2]) if len(descriptor) > 2 else 16
        out = lut_out.astype(np.float64) * (255.0 / ((1 << lut_bits) - 1))
    elif (default := default_window(header)) is not None:
        out = apply_window(values, default)
    else:
        low, high = float(np.min(values)), float(np.max(values))
        out = (
            (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values, dtype=np.float64)
        )
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def fit_viewport(image: Image.Image, viewport: Viewport | None, max_side: int | None = None) -> Image.Image:
    if viewport is not None and viewport.source is not None:
        sx, sy, sw, sh = viewport.source
        image = image.crop((sx, sy, sx + sw, sy + sh))
    if viewport is not None:
        image.thumbnail((viewport.width, viewport.height), Image.Resampling.LANCZOS)
    if max_side is not None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def encode_image(
    pixels: np.ndarray,
    media_type: str,
    quality: int = 90,
    viewport: Viewport | None = None,
    max_side: int | None = None,
) -> bytes:
    """8-bit pixels to JPEG or PNG bytes."""
    image = fit_viewport(Image.fromarray(pixels), viewport, max_side)
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, "PNG", compress_level=3)
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
