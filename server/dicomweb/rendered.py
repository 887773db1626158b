"""WADO-RS rendered and thumbnail resources (PS3.18 8.3.5): frames as JPEG or PNG."""

from __future__ import annotations

import re

import numpy as np
from pydicom.dataset import Dataset

from server.archive.archive import StoredInstance
from server.dicomweb.media import parse_accept
from server.dicomweb.wado import WadoBase
from server.imaging.frames import FrameDecodeError, decode_frame
from server.imaging.rendering import Viewport, Window, encode_image, to_display
from server.web.base import ProblemError

THUMBNAIL_SIDE = 128
MAX_VIEWPORT = 8192
_NUMBER = r"-?\d+(\.\d+)?"


def _media_type(accept: str | None) -> str:
    for r in parse_accept(accept):
        if r.media_type in ("image/jpeg", "image/*", "*/*"):
            return "image/jpeg"
        if r.media_type == "image/png":
            return "image/png"
    raise ProblemError(406, "rendered images are available as image/jpeg or image/png")


def parse_window(value: str | None) -> Window | None:
    if not value:
        return None
    parts = value.split(",")
    if len(parts) not in (2, 3) or not all(re.fullmatch(_NUMBER, p.strip()) for p in parts[:2]):
        raise ProblemError(400, "window must be center,width[,linear|linear-exact|sigmoid]")
    function = parts[2].strip().lower() if len(parts) == 3 else "linear"
    if function not in ("linear", "linear-exact", "sigmoid"):
        raise ProblemError(400, f"window function {function!r} is not linear, linear-exact or sigmoid")
    width = float(parts[1])
    if width < 1:
        raise ProblemError(400, "window width must be at least 1")
    return Window(float(parts[0]), width, function)  # type: ignore[arg-type]


def parse_viewport(value: str | None) -> Viewport | None:
    if not value:
        return None
    try:
        numbers = [int(p) for p in value.split(",")]
    except ValueError as exc:
        raise ProblemError(400, "viewport must be vw,vh[,sx,sy,sw,sh] in whole pixels") from exc
    if len(numbers) not in (2, 6) or not all(0 < n <= MAX_VIEWPORT for n in numbers[:2]):
        raise ProblemError(400, f"viewport must be vw,vh[,sx,sy,sw,sh] with vw, vh in 1..{MAX_VIEWPORT}")
    source = None
    if len(numbers) == 6:
        sx, sy, sw, sh = numbers[2:]
        if sx < 0 or sy < 0 or sw <= 0 or sh <= 0:
            raise ProblemError(400, "viewport source region must lie inside the image")
        source = (sx, sy, sw, sh)
    return Viewport(numbers[0], numbers[1], source)


def check_region(viewport: Viewport | None, rows: int, columns: int) -> None:
    """The source region must lie inside the image: checked from the header, before decoding."""
    if viewport is None or viewport.source is None:
        return
    sx, sy, sw, sh = viewport.source
    if sx + sw > columns or sy + sh > rows:
        raise ProblemError(
            400,
            f"viewport source region {sx},{sy} {sw}x{sh} must lie inside the {columns}x{rows} image",
        )


def _render(
    instance: StoredInstance,
    header: Dataset,
    frame: int,
    window: Window | None,
    media_type: str,
    quality: int,
    viewport: Viewport | None,
    max_side: int | None,
) -> bytes:
    pixels = decode_frame(instance, header, frame)
    display = to_display(np.asarray(pixels), header, window)
    return encode_image(display, media_type, quality, viewport, max_side)


class RenderedHandler(WadoBase):
    """GET .../instances/{sop}[/frames/{n}]/rendered|thumbnail, and series/study thumbnails."""

    async def get(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        frames: str | None = None,
        kind: str = "rendered",
    ) -> None:
        thumbnail = kind == "thumbnail"
        found = await self.instances(study, series, sop, with_index=True)
        candidates = [i for i in found if i.rows]
        if not candidates:
            raise ProblemError(404, "nothing with pixel data to render here")
        instance = candidates[len(candidates) // 2] if sop is None else candidates[0]
        frame = 0
        if frames is not None:
            if not re.fullmatch(r"[1-9][0-9]{0,8}", frames):
                raise ProblemError(400, "rendered frames take exactly one frame number from 1")
            frame = int(frames) - 1
            if frame >= instance.number_of_frames:
                raise ProblemError(
                    404, f"frame {frame + 1} is beyond the instance's {instance.number_of_frames} frames"
                )
        elif sop is not None and thumbnail and instance.number_of_frames > 1:
            frame = instance.number_of_frames // 2
        media_type = _media_type(
            self.request.headers.get("Accept")
            if not self.get_argument("accept", None)
            else self.get_argument("accept")
        )
        window = parse_window(self.get_argument("window", None))
        viewport = parse_viewport(self.get_argument("viewport", None))
        quality_text = self.get_argument("quality", "90")
        if not quality_text.isdigit() or not 1 <= int(quality_text) <= 100:
            raise ProblemError(400, "quality must be a whole number from 1 to 100")
        header = await self.run_blocking(self.ctx.headers.get, instance)
        check_region(viewport, int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0))
        try:
            body = await self.run_blocking(
                _render,
                instance,
                header,
                frame,
                window,
                media_type,
                int(quality_text),
                viewport,
                THUMBNAIL_SIDE if thumbnail and viewport is None else None,
            )
        except FrameDecodeError as exc:
            raise ProblemError(422, str(exc)) from exc
        self.set_header("Content-Type", media_type)
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(body)
