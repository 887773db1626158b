"""HTTP routes of the mammography module: hanging JSON, image info, deep-zoom tiles, slabs.

A warm tile or slab is a dict lookup in the process's tile cache on the event loop; a
cold one (and the one-time pyramid build) runs in the executor.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset

from modules.mammography.cad import read_cad_sr
from modules.mammography.exams import exam_image, load_exam, load_prior_candidates
from modules.mammography.hanging import HangingProtocol, ProtocolError, choose_protocol, hang, select_priors
from modules.mammography.letters import letter_html, letter_pdf, report_html, report_pdf
from modules.mammography.report import ReportInvalid, lexicon
from modules.mammography.reports import StudyNotFound, latest_report, save_report
from modules.mammography.tomosynthesis import SlabMode, slab, slab_range
from modules.mammography.views import MAMMOGRAPHY_CAD_SR
from server.context import ServerContext
from server.imaging.calibration import resolve_calibration
from server.imaging.rendering import Window, default_window, window_presets
from server.tiles import CachedTile, DeepZoom, SourceUnreadable, TileCache, TileNotFound
from server.tiles.dicom_image import (
    TILE_SIZE,
    DicomImageSource,
    NotAGrayscaleImage,
    image_identity,
    open_dicom_image,
)
from server.tiles.http import REVALIDATE, finish_cached, send_tile, tile_address
from server.web.base import BaseHandler, ProblemError

if TYPE_CHECKING:
    from server.archive.archive import StoredInstance

log = logging.getLogger(__name__)
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
TILE_QUALITY = 92  # mammograms: fine calcifications must survive the JPEG


def parse_window(text: str | None) -> Window | None:
    """``center,width`` or ``center,width,linear|sigmoid|linear-exact``; absent means the file's VOI."""
    if not text:
        return None
    parts = text.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError) as exc:
        raise ProblemError(400, f"window {text[:40]!r} is not center,width[,function]") from exc
    function = parts[2] if len(parts) > 2 else "linear"
    if function not in ("linear", "sigmoid", "linear-exact") or not width > 0:
        raise ProblemError(400, f"window {text[:40]!r}: width must be > 0 and function linear or sigmoid")
    return Window(center, width, function)  # type: ignore[arg-type]


class ImageLibrary:
    """Open image sources by (SOP Instance UID, frame), so a warm tile needs no SQL."""

    def __init__(self, ctx: ServerContext, capacity: int = 256) -> None:
        self.ctx = ctx
        self.capacity = capacity
        self._sources: OrderedDict[tuple[str, int], DicomImageSource] = OrderedDict()
        self._lock = threading.Lock()
        self.infos: dict[str, dict[str, Any]] = {}  # by source identity (changes with the pixels)

    def cached(self, sop: str, frame: int) -> DicomImageSource | None:
        with self._lock:
            source = self._sources.get((sop, frame))
            if source is not None:
                self._sources.move_to_end((sop, frame))
            return source

    def open(self, sop: str, frame: int) -> DicomImageSource:
        """Blocking: look up the instance and build its pyramid if needed."""
        source = open_dicom_image(self.ctx, sop, frame)
        with self._lock:
            self._sources[(sop, frame)] = source
            while len(self._sources) > self.capacity:
                self._sources.popitem(last=False)
        return source

    def forget(self, sop: str) -> None:
        with self._lock:
            for key in [k for k in self._sources if k[0] == sop]:
                self.infos.pop(self._sources.pop(key).identity, None)


class MammographyHandler(BaseHandler):
    library: ImageLibrary
    cache: TileCache
    protocols: tuple[HangingProtocol, ...]

    def initialize(  # type: ignore[override]
        self,
        ctx: ServerContext,
        library: ImageLibrary,
        cache: TileCache,
        protocols: tuple[HangingProtocol, ...],
    ) -> None:
        super().initialize(ctx)
        self.library = library
        self.cache = cache
        self.protocols = protocols

    @staticmethod
    def check_uid(uid: str, what: str) -> None:
        if len(uid) > 64 or not UID.fullmatch(uid):
            raise ProblemError(400, f"{uid[:80]!r} is not a {what}")

    async def image(self, sop: str, frame: int) -> DicomImageSource:
        self.check_uid(sop, "SOP Instance UID")
        source = self.library.cached(sop, frame)
        if source is not None:
            return source
        try:
            return await self.run_blocking(self.library.open, sop, frame)
        except LookupError as exc:
            raise ProblemError(404, str(exc)) from exc
        except TileNotFound as exc:
            raise ProblemError(404, str(exc)) from exc
        except NotAGrayscaleImage as exc:
            raise ProblemError(422, f"not a grayscale image this viewer can tile: {exc}") from exc
        except SourceUnreadable as exc:
            raise ProblemError(500, f"the stored pixel data cannot be read: {exc}") from exc


def _frame(text: str) -> int:
    if not text.isdigit() or len(text) > 6:
        raise ProblemError(400, f"frame {text[:20]!r} is not a 0-based frame number")
    return int(text)


class HangingHandler(MammographyHandler):
    """``GET studies/{uid}/hanging?protocol=&prior=uid[,uid]``: the hung exam as JSON."""

    async def get(self, study_uid: str) -> None:
        self.check_uid(study_uid, "Study Instance UID")
        wanted = self.get_query_argument("protocol", None)
        prior_arg = self.get_query_argument("prior", None)
        chosen = [p for p in (prior_arg or "").split(",") if p]
        for uid in chosen:
            self.check_uid(uid, "Study Instance UID")
        document = await self.run_blocking(self.build, study_uid, wanted, chosen)
        self.set_header("Cache-Control", REVALIDATE)
        self.write_json(document)

    def build(self, study_uid: str, wanted: str | None, chosen: list[str]) -> dict[str, Any]:
        instances: dict[str, StoredInstance] = {}
        current = load_exam(self.ctx, study_uid, instances)
        if current is None:
            raise ProblemError(404, f"no study {study_uid} in the archive")
        if not current.images:
            raise ProblemError(404, f"study {study_uid} holds no mammography images")
        # the priors are studies the URL does not name: only those in the user's groups are offered
        scope = self.identity.scope if self.identity is not None else None
        everything = load_prior_candidates(self.ctx, current, scope, instances)
        candidates = select_priors(current, everything, count=100)
        try:
            if chosen:
                by_uid = {c.study_instance_uid: c for c in everything}
                missing = [uid for uid in chosen if uid not in by_uid]
                if missing:
                    raise ProblemError(404, f"{missing[0]} is not a mammography study of this patient")
                priors = [by_uid[uid] for uid in chosen]
                protocol = choose_protocol(self.protocols, current, priors, wanted)
            else:
                provisional = choose_protocol(self.protocols, current, candidates[:1], wanted)
                priors = select_priors(
                    current, candidates, provisional.prior_count, provisional.prior_min_interval_days
                )
                protocol = choose_protocol(self.protocols, current, priors, wanted)
        except ProtocolError as exc:
            raise ProblemError(404 if wanted else 422, str(exc)) from exc
        document = hang(protocol, current, priors, candidates).to_json()
        document["images"] = self.image_infos(document, instances)
        return document

    def image_infos(
        self, document: dict[str, Any], instances: dict[str, StoredInstance]
    ) -> dict[str, dict[str, Any]]:
        """The info of every image the hanging places, by SOP Instance UID: the viewer opens its
        viewports with these instead of one more round of requests (headers are cached already)."""
        infos: dict[str, dict[str, Any]] = {}
        for stage in document["stages"]:
            for viewport in stage["viewports"]:
                for key in ("image", "tomosynthesis"):
                    sop = (viewport.get(key) or {}).get("SOPInstanceUID")
                    instance = instances.get(sop) if sop else None
                    if instance is None or sop in infos:
                        continue
                    header = self.ctx.headers.get(instance)
                    if (
                        int(header.get("SamplesPerPixel", 1)) == 1 and instance.rows
                    ):  # else: the info route's 422
                        infos[instance.sop_instance_uid] = describe_image(instance, header)
        return infos


class ImageInfoHandler(MammographyHandler):
    """``GET images/{sop}/info?frame=``: size, levels, window presets, calibration, view."""

    async def get(self, sop: str) -> None:
        frame = _frame(self.get_query_argument("frame", "0"))
        source = await self.image(sop, frame)
        info = self.library.infos.get(source.identity)
        if info is None:  # warm: a dict lookup on the loop; cold: header parsing in the executor
            info = await self.run_blocking(describe_image, source.instance, source.header, source.frame)
            self.library.infos[source.identity] = info
        self.set_header("Cache-Control", REVALIDATE)
        self.write_json(info)


def describe_image(instance: StoredInstance, header: Dataset, frame: int = 0) -> dict[str, Any]:
    """What the viewer needs to open an image, from its header alone (no pyramid needed): the info
    route answers it, and the hanging carries it for every image it places, saving a round trip."""
    info = exam_image(header, instance.study_instance_uid, instance.series_instance_uid, 1)
    default = default_window(header)
    return {
        "SOPInstanceUID": instance.sop_instance_uid,
        "width": int(header.Columns),
        "height": int(header.Rows),
        "frames": max(1, instance.number_of_frames),
        "frame": frame,
        "tile_size": TILE_SIZE,
        "identity": image_identity(instance, frame),
        "presets": [
            {"name": name, "center": w.center, "width": w.width, "function": w.function}
            for name, w in window_presets(header)
        ],
        "default_window": (
            {"center": default.center, "width": default.width, "function": default.function}
            if default
            else None
        ),
        "voi_lut": "VOILUTSequence" in header,
        "bits_stored": int(header.get("BitsStored", 16)),
        "photometric": str(header.get("PhotometricInterpretation", "")),
        "calibration": resolve_calibration(header).to_json(),
        "magnification_factor": (
            float(header.EstimatedRadiographicMagnificationFactor)
            if header.get("EstimatedRadiographicMagnificationFactor")
            else None
        ),
        "imager_pixel_spacing": [float(v) for v in header.get("ImagerPixelSpacing") or []] or None,
        "laterality": info.breast.laterality,
        "view": info.breast.view,
        "label": info.breast.label,
        "chest_wall": info.chest_wall,
        "notices": [*info.breast.notices, *info.notices],
    }


class DziHandler(MammographyHandler):
    """``GET images/{sop}/frames/{frame}.dzi?window=``: the Deep Zoom descriptor."""

    async def get(self, sop: str, frame: str) -> None:
        source = await self.image(sop, _frame(frame))
        view = source.windowed(parse_window(self.get_query_argument("window", None)))
        body = DeepZoom(view, quality=TILE_QUALITY).descriptor().encode()
        finish_cached(self, body, "application/xml; charset=utf-8", CachedTile.of(body, "").etag, REVALIDATE)


class TileHandler(MammographyHandler):
    """``GET images/{sop}/frames/{frame}_files/{level}/{col}_{row}.jpeg?window=``."""

    async def get(self, sop: str, frame: str, level: str, name: str) -> None:
        address = tile_address(level, name)
        window = parse_window(self.get_query_argument("window", None))
        source = await self.image(sop, _frame(frame))
        await send_tile(self, DeepZoom(source.windowed(window), quality=TILE_QUALITY), address, self.cache)


def render_slab(
    source: DicomImageSource, center: int, thickness: int, mode: SlabMode, window: Window | None, size: int
) -> CachedTile:
    """Blocking: a slab (or one slice) of a stack at the smallest level at least ``size`` wide, as JPEG."""
    first, last = slab_range(center, thickness, source.number_of_frames)
    level = 0
    for i, lv in enumerate(source.levels):
        if max(lv.width, lv.height) >= size:
            level = i
    values = slab(source.read_frames(level, first, last), mode)
    image = Image.fromarray(source.render(values, window))
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=TILE_QUALITY)
    return CachedTile.of(buffer.getvalue(), "image/jpeg")


class SlabHandler(MammographyHandler):
    """``GET images/{sop}/slab?center=&thickness=&mode=mip|average&window=&size=``: a rendered slab."""

    async def get(self, sop: str) -> None:
        try:
            center = int(self.get_query_argument("center", "0"))
            thickness = int(self.get_query_argument("thickness", "1"))
            size = int(self.get_query_argument("size", "1024"))
            mode = SlabMode(self.get_query_argument("mode", "mip"))
        except ValueError as exc:
            raise ProblemError(400, f"bad slab parameter: {exc}") from exc
        if not (1 <= thickness <= 1000 and 16 <= size <= 8192):
            raise ProblemError(400, "thickness must be 1..1000 and size 16..8192")
        window = parse_window(self.get_query_argument("window", None))
        source = await self.image(sop, 0)
        if not 0 <= center < source.number_of_frames:
            raise ProblemError(404, f"slice {center} is outside 0..{source.number_of_frames - 1}")
        w = "file" if window is None else f"{window.center:g},{window.width:g},{window.function}"
        key = (source.identity, "slab", center, thickness, mode.value, w, size)
        tile = self.cache.get(key)
        if tile is None:
            tile = await self.run_blocking(render_slab, source, center, thickness, mode, window, size)
            self.cache.put(key, tile)
        finish_cached(self, tile.data, tile.media_type, tile.etag)


class ReportHandler(MammographyHandler):
    """``GET reports/{study}``: the form's data (lexicon, images, saved report);
    ``POST reports/{study}``: validate and store a new report version as DICOM SR."""

    async def get(self, study_uid: str) -> None:
        self.check_uid(study_uid, "Study Instance UID")
        document = await self.run_blocking(self._load, study_uid)
        self.set_header("Cache-Control", REVALIDATE)
        self.write_json(document)

    def _load(self, study_uid: str) -> dict[str, Any]:
        try:
            report, reports = latest_report(self.ctx, study_uid)
        except StudyNotFound as exc:
            raise ProblemError(404, str(exc)) from exc
        latest = reports.latest
        return {
            "StudyInstanceUID": study_uid,
            "lexicon": lexicon(),
            "images": [summary for _, summary in reports.images],
            "report": report.to_json() if report else None,
            "saved": (
                {
                    "SOPInstanceUID": str(latest.SOPInstanceUID),
                    "ContentDate": str(latest.get("ContentDate", "")),
                    "ContentTime": str(latest.get("ContentTime", "")),
                    "versions": len(reports.reports),
                }
                if latest is not None
                else None
            ),
        }

    async def post(self, study_uid: str) -> None:
        self.check_uid(study_uid, "Study Instance UID")
        try:
            document = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise ProblemError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ProblemError(400, "the body must be a JSON object (the report)")
        try:
            saved = await self.run_blocking(save_report, self.ctx, study_uid, document)
        except StudyNotFound as exc:
            raise ProblemError(404, str(exc)) from exc
        except ReportInvalid as exc:
            raise ProblemError(422, "the report cannot be saved", problems=exc.problems) from exc
        self.write_json(saved, status=201)


class ReportOutputHandler(MammographyHandler):
    """``GET reports/{study}/{report|letter}.{html|pdf}``: printable outputs of the latest saved report."""

    async def get(self, study_uid: str, kind: str, extension: str) -> None:
        self.check_uid(study_uid, "Study Instance UID")
        body, media_type = await self.run_blocking(self._render, study_uid, kind, extension)
        self.set_header("Content-Type", media_type)
        self.set_header("Cache-Control", "no-store")
        if extension == "pdf":
            self.set_header("Content-Disposition", f'inline; filename="{kind}.pdf"')
        self.finish(body)

    def _render(self, study_uid: str, kind: str, extension: str) -> tuple[bytes, str]:
        try:
            report, reports = latest_report(self.ctx, study_uid)
        except StudyNotFound as exc:
            raise ProblemError(404, str(exc)) from exc
        if report is None:
            raise ProblemError(404, f"study {study_uid} has no saved BI-RADS report yet")
        exam = reports.exam_context()
        if extension == "html":
            html = report_html(report, exam) if kind == "report" else letter_html(report, exam)
            return html.encode(), "text/html; charset=utf-8"
        return (report_pdf(report, exam) if kind == "report" else letter_pdf(report, exam)), "application/pdf"


class CadHandler(MammographyHandler):
    """``GET studies/{uid}/cad``: the marks of the study's Mammography CAD SR instances."""

    async def get(self, study_uid: str) -> None:
        self.check_uid(study_uid, "Study Instance UID")
        document = await self.run_blocking(self._marks, study_uid)
        self.set_header("Cache-Control", REVALIDATE)
        self.write_json(document)

    def _marks(self, study_uid: str) -> dict[str, Any]:
        marks: list[dict[str, Any]] = []
        notices: list[str] = []
        reports = []
        for instance in self.ctx.archive.stored_instances(study_uid):
            if instance.sop_class_uid != MAMMOGRAPHY_CAD_SR:
                continue
            try:
                cad = read_cad_sr(dcmread(instance.path))
            except Exception as exc:  # a broken CAD object must not hide the images
                notices.append(f"CAD SR {instance.sop_instance_uid} could not be read: {exc}")
                continue
            reports.append(instance.sop_instance_uid)
            marks += [m.to_json() for m in cad.marks]
            notices += cad.notices
        return {"StudyInstanceUID": study_uid, "reports": reports, "marks": marks, "notices": notices}
