"""Burning a plan into pixels: the picture the Secondary Capture and the PDF report carry.

Other systems cannot draw our plan, so the archive gets it as an image: the radiograph
rendered with its own window, measurements and template outlines drawn on top at the
same pixel positions the viewer uses, and a caption naming the calibration (a plan
without its calibration source is not a plan a surgeon can trust).

``SEGMENTS`` says which points of each measurement kind are joined by lines; the viewer
fetches it (``GET /orthopedics/measurement-kinds``) so both draw the same figure.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from modules.orthopedics.measurements import MEASUREMENTS, fit_circle
from modules.orthopedics.templates import TemplateLibrary, TemplatePlacement, placed_outlines
from server.imaging.calibration import Calibration, CalibrationError

SEGMENTS: dict[str, list[tuple[int, int]]] = {
    "length": [(0, 1)],
    "angle": [(0, 1), (1, 2)],
    "line-angle": [(0, 1), (2, 3)],
    "cobb": [(0, 1), (2, 3)],
    "circle": [],
    "perpendicular": [(0, 1)],
    "parallel": [(0, 1)],
    "cup-inclination": [(0, 1), (2, 3)],
    "femoral-offset": [(1, 2)],
    "leg-length": [(0, 1)],
    "leg-length-ischial": [(0, 1)],
    "hka": [(0, 1), (1, 2), (0, 2)],
    "mldfa": [(0, 1), (2, 3)],
    "mpta": [(0, 1), (2, 3)],
}
MEASURE_COLOUR = (255, 210, 77)
TEMPLATE_COLOUR = (90, 200, 255)
CAPTION_COLOUR = (255, 255, 255)


def measurement_kinds() -> dict[str, Any]:
    """The measurement catalogue for the viewer: points asked for, in order, and lines drawn."""
    return {
        kind: {"points": list(names), "count": count, "segments": SEGMENTS[kind]}
        for kind, (count, _, names) in MEASUREMENTS.items()
    }


FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font with ÷, × and °; Pillow's built-in one lacks some of them."""
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _line(
    draw: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    colour: tuple[int, int, int],
    width: int,
    dashed: bool = False,
) -> None:
    if not dashed:
        draw.line([a, b], fill=colour, width=width)
        return
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    dash = 6.0 * width
    steps = max(int(length / dash), 1)
    for i in range(0, steps, 2):
        t0, t1 = i / steps, min((i + 1) / steps, 1.0)
        draw.line(
            [
                (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1),
            ],
            fill=colour,
            width=width,
        )


def _perpendicular_foot(
    p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]
) -> tuple[float, float]:
    dx, dy = b[0] - a[0], b[1] - a[1]
    n = dx * dx + dy * dy or 1.0
    t = ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / n
    return a[0] + t * dx, a[1] + t * dy


def burn_in(
    display: np.ndarray, evaluated: dict[str, Any], calibration: Calibration, library: TemplateLibrary
) -> Image.Image:
    """An RGB image of the radiograph (8-bit display pixels) with the evaluated plan drawn on it."""
    base = Image.fromarray(display).convert("RGB")
    draw = ImageDraw.Draw(base)
    scale = max(base.size) / 1000.0
    width = max(1, round(2 * scale))
    font = _font(max(12, round(16 * scale)))
    for m in evaluated["measurements"]:
        points = [(float(p[0]), float(p[1])) for p in m["points"]]
        for i, j in SEGMENTS.get(m["kind"], []):
            if i < len(points) and j < len(points):
                _line(
                    draw,
                    points[i],
                    points[j],
                    MEASURE_COLOUR,
                    width,
                    dashed=(m["kind"] == "hka" and (i, j) == (0, 2)),
                )
        if m["kind"] == "circle" and len(points) >= 3:
            (cx, cy), r = fit_circle(points)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=MEASURE_COLOUR, width=width)
            draw.line([(cx - 4 * width, cy), (cx + 4 * width, cy)], fill=MEASURE_COLOUR, width=width)
            draw.line([(cx, cy - 4 * width), (cx, cy + 4 * width)], fill=MEASURE_COLOUR, width=width)
        if m["kind"] in ("femoral-offset", "perpendicular") and len(points) == 3:
            p, a, b = (
                (points[0], points[1], points[2])
                if m["kind"] == "femoral-offset"
                else (points[2], points[0], points[1])
            )
            _line(draw, p, _perpendicular_foot(p, a, b), MEASURE_COLOUR, width, dashed=True)
        if m["kind"] == "parallel" and len(points) == 3:
            (ax, ay), (bx, by), (px, py) = points
            half = ((bx - ax) / 2, (by - ay) / 2)
            _line(
                draw,
                (px - half[0], py - half[1]),
                (px + half[0], py + half[1]),
                MEASURE_COLOUR,
                width,
                dashed=True,
            )
        if m["kind"] in ("leg-length", "leg-length-ischial") and len(points) == 4:
            for p in points[2:]:
                _line(
                    draw, p, _perpendicular_foot(p, points[0], points[1]), MEASURE_COLOUR, width, dashed=True
                )
        for x, y in points:
            draw.ellipse(
                [x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width],
                outline=MEASURE_COLOUR,
                width=width,
            )
        text = (m.get("result") or {}).get("summary") or m.get("error", "")
        if points and text:
            x, y = points[-1]
            label = f"{m['label']}: {text}" if m.get("label") else text
            draw.text(
                (x + 8 * width, y + 4 * width),
                label,
                fill=MEASURE_COLOUR,
                font=font,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )
    for t in evaluated["templates"]:
        if t.get("error"):  # uncalibrated, or a template no longer in the library: nothing to draw
            continue
        template = library.get(t["template_id"])
        try:
            outlines = placed_outlines(template, TemplatePlacement.from_json(t), calibration)
        except CalibrationError:
            continue
        for outline, pts in outlines:
            sequence = [*pts, pts[0]] if outline.closed else pts
            for a, b in itertools.pairwise(sequence):
                _line(draw, a, b, TEMPLATE_COLOUR, width, dashed=outline.dashed)
        x, y = t["x"], t["y"]
        draw.text(
            (x + 10 * width, y - 20 * width),
            f"{template.name} {t['label']}",
            fill=TEMPLATE_COLOUR,
            font=font,
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
    caption = [f"Calibration: {calibration.description}"]
    if calibration.calibrated:
        caption.append(
            f"{calibration.column_spacing_mm:.4f} × {calibration.row_spacing_mm:.4f} mm/px ({calibration.plane.value} plane)"
        )
    else:
        caption.append("lengths in pixels")
    for r in evaluated.get("reconstruction", []):
        caption.append(
            f"Planned ({r['side']}): leg length {r['leg_length_change']['value']:+.1f} {r['leg_length_change']['unit']}, "
            f"offset {r['offset_change']['value']:+.1f} {r['offset_change']['unit']}"
        )
    y = 8 * width
    for line in caption:
        draw.text((8 * width, y), line, fill=CAPTION_COLOUR, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += round(22 * scale) + 4
    return base
