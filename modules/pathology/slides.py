"""The slides a process has opened: series UID → source, DZI view and info, kept warm.

Opening a slide costs two SQL queries and a JSON parse per instance; after that every
tile request finds its slide with a dict lookup on the event loop. One library per
process; a new instance in a series drops the slide so the next request reassembles it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select

from modules.pathology.color import ColorManagedDeepZoom, SlideColor, describe, stored_profile
from modules.pathology.dicom_source import ASSOCIATED_KINDS, DicomWsiSource, NoSuchView, NotASlide, WsiHeader
from server.archive.archive import Archive
from server.archive.models import Series, Study
from server.tiles import DeepZoom, FileHandleCache

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(text: str) -> bool:
    return len(text) <= 64 and bool(UID_PATTERN.match(text))


@dataclass
class Slide:
    series_instance_uid: str
    study_instance_uid: str
    source: DicomWsiSource
    deepzoom: DeepZoom
    number_of_instances: int
    # (optical path, focal plane) → its Deep Zoom view, built on first request
    _views: dict[tuple[str, int], DeepZoom] = field(default_factory=dict, repr=False)
    _views_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    color: SlideColor = field(default_factory=SlideColor, repr=False)

    @property
    def version(self) -> str:
        """Goes into tile URLs (``?v=``) so a changed slide never hits a stale immutable tile."""
        return self.source.identity

    def is_default_view(self, path: str | None, plane: int) -> bool:
        return path in (None, self.source.default_path) and plane == 0

    def cached_view(self, path: str | None, plane: int) -> DeepZoom | None:
        """Non-blocking: the view if it was built already (the default always is)."""
        if self.is_default_view(path, plane):
            return self.deepzoom
        return self._views.get((str(path), plane))

    def view(self, path: str | None, plane: int) -> DeepZoom:
        """Blocking (assembles a frame map once per view): the DZI of one optical path and focal plane.

        Raises NoSuchView. The default view (no path, plane 0, or the first path's plane 0)
        is ``deepzoom`` itself, so the URLs without a selection keep their tiles and ETags.
        """
        found = self.cached_view(path, plane)
        if found is not None:
            return found
        key = (str(path), plane)
        with self._views_lock:
            if key not in self._views:
                source = DicomWsiSource(self.source.headers, self.source.files, path, plane)
                self._views[key] = DeepZoom(source)
            return self._views[key]

    def color_view(self, deepzoom: DeepZoom) -> ColorManagedDeepZoom:
        """Blocking the first time: a view's tiles converted from the optical path's ICC profile to sRGB.

        Raises NoColorProfile when the path carries no usable profile.
        """
        source = deepzoom.source
        assert isinstance(source, DicomWsiSource)
        return self.color.view(deepzoom, source.base, source.optical_path)

    def dzi_url(self, prefix: str = "/pathology", path: str | None = None, plane: int = 0) -> str:
        if self.is_default_view(path, plane):
            return f"{prefix}/slides/{self.series_instance_uid}.dzi?v={self.version}"
        version = self.view(path, plane).source.identity
        query = urlencode({"path": path or "", "z": plane, "v": version})
        return f"{prefix}/slides/{self.series_instance_uid}.dzi?{query}"

    def info(self, prefix: str = "/pathology") -> dict[str, Any]:
        source = self.source
        base = source.base.attributes
        mpp = source.mpp
        # every path with whether it carries an ICC profile (the viewer offers colour management then)
        profiles = {
            p["identifier"]: stored_profile(source.base, p["identifier"]) for p in source.optical_paths
        }
        paths = [
            {
                **p,
                "icc_profile": bool(profiles[p["identifier"]]),
                "icc_profile_description": describe(profiles[p["identifier"]]),
            }
            for p in source.optical_paths
        ]
        default_profile = stored_profile(source.base, source.default_path)
        return {
            "SeriesInstanceUID": self.series_instance_uid,
            "StudyInstanceUID": self.study_instance_uid,
            "width": source.levels[0].width,
            "height": source.levels[0].height,
            "levels": [
                {
                    "width": lv.width,
                    "height": lv.height,
                    "downsample": lv.downsample,
                    "tile_width": lv.tile_width,
                    "tile_height": lv.tile_height,
                }
                for lv in source.levels
            ],
            "mpp_x": mpp[0] if mpp else None,
            "mpp_y": mpp[1] if mpp else None,
            "objective_power": source.objective_power,
            "vendor": _text(base, "00080070"),
            "model": _text(base, "00081090"),
            "series_description": _text(base, "0008103E"),
            "container_identifier": _text(base, "00400512"),
            "optical_paths": paths,
            "focal_planes": source.focal_planes,
            "tiled_optical_path": source.default_path,
            # colour: tiles as stored, or (``color=srgb`` on DZI, tile and associated image URLs)
            # converted from this ICC profile to sRGB
            "icc_profile": bool(default_profile),
            "icc_profile_description": describe(default_profile),
            # every optical path × focal plane as its own Deep Zoom image (the default first)
            "views": [
                {"optical_path": path, "focal_plane": plane, "dzi": self.dzi_url(prefix, path, plane)}
                for path, plane in source.views()
            ],
            "dzi": {
                "url": self.dzi_url(prefix),
                "tile_size": self.deepzoom.tile_size,
                "overlap": self.deepzoom.overlap,
                "levels": self.deepzoom.level_count,
            },
            "annotations": f"{prefix}/slides/{self.series_instance_uid}/annotations",
            "dicom_annotations": f"{prefix}/slides/{self.series_instance_uid}/dicom-annotations",
            "associated_images": {
                kind: f"{prefix}/slides/{self.series_instance_uid}/associated/{kind}.jpeg?v={self.version}"
                for kind in source.associated
            },
        }


def _text(dataset: dict[str, Any], tag: str) -> str:
    values = dataset.get(tag, {}).get("Value", [])
    return str(values[0]) if values else ""


class SlideLibrary:
    """Per-process LRU of opened slides."""

    def __init__(self, archive: Archive, files: FileHandleCache | None = None, capacity: int = 64) -> None:
        self.archive = archive
        self.files = files or FileHandleCache()
        self.capacity = capacity
        self._slides: OrderedDict[str, Slide] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}
        self._opening_lock = threading.Lock()

    def cached(self, series_uid: str) -> Slide | None:
        """Non-blocking: safe on the event loop."""
        with self._lock:
            slide = self._slides.get(series_uid)
            if slide is not None:
                self._slides.move_to_end(series_uid)
            return slide

    def open(self, series_uid: str, revalidate: bool = False) -> Slide:
        """Blocking (SQL): run in an executor. Raises NotASlide.

        ``revalidate`` reassembles the slide when instances arrived since it was opened,
        possibly in another server process (descriptor and info requests ask for it).
        """
        slide = self.cached(series_uid)
        if slide is not None and not revalidate:
            return slide
        with self._opening_lock:
            opening = self._opening.setdefault(series_uid, threading.Lock())
        with opening:  # the first tile requests of a slide arrive together: open it once
            if not revalidate and (slide := self.cached(series_uid)) is not None:
                return slide
            try:
                return self._open(series_uid, self.cached(series_uid))
            finally:
                with self._opening_lock:
                    self._opening.pop(series_uid, None)

    def _open(self, series_uid: str, slide: Slide | None) -> Slide:
        found = self.series_state(series_uid)
        if found is None:
            raise NotASlide(f"no series {series_uid} in the archive")
        study_uid, count = found
        if slide is not None and slide.number_of_instances == count:
            return slide
        instances = self.archive.stored_instances(study_uid, series_uid, with_frame_index=True)
        headers = self.archive.headers(i.sop_instance_uid for i in instances)
        parsed = [
            WsiHeader.parse(i, headers[i.sop_instance_uid])
            for i in instances
            if i.sop_instance_uid in headers
        ]
        source = DicomWsiSource(parsed, self.files)
        slide = Slide(series_uid, study_uid, source, DeepZoom(source), count)
        with self._lock:
            self._slides[series_uid] = slide
            while len(self._slides) > self.capacity:
                self._slides.popitem(last=False)
        return slide

    def forget(self, series_uid: str) -> None:
        with self._lock:
            self._slides.pop(series_uid, None)

    def series_state(self, series_uid: str) -> tuple[str, int] | None:
        """The series' study and how many instances it holds now."""
        with self.archive.sessions() as session:
            row = session.execute(
                select(Study.study_instance_uid, Series.number_of_instances)
                .join(Series, Series.study_pk == Study.id)
                .where(Series.series_instance_uid == series_uid)
            ).first()
        return (row[0], row[1]) if row else None

    def slides_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The case panel: every slide of a study with its label and thumbnail. Blocking."""
        with self.archive.sessions() as session:
            series_uids = list(
                session.scalars(
                    select(Series.series_instance_uid)
                    .join(Study, Series.study_pk == Study.id)
                    .where(Study.study_instance_uid == study_uid, Series.modality == "SM")
                    .order_by(Series.series_number, Series.id)
                )
            )
        result = []
        for uid in series_uids:
            try:
                slide = self.open(uid)
            except NotASlide:
                continue
            info = slide.info()
            result.append(
                {
                    "SeriesInstanceUID": uid,
                    "series_description": info["series_description"],
                    "container_identifier": info["container_identifier"],
                    "width": info["width"],
                    "height": info["height"],
                    "thumbnail": info["associated_images"].get("thumbnail"),
                    "label": info["associated_images"].get("label"),
                    "info": f"/pathology/slides/{uid}/info",
                }
            )
        return result


__all__ = ["ASSOCIATED_KINDS", "NoSuchView", "NotASlide", "Slide", "SlideLibrary", "is_uid"]
