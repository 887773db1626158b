"""Vendor slide file → DICOM WSI in the archive, so every slide is queried, browsed and served alike.

Each openslide level becomes one TILED_FULL instance. Where the file's tiles are already
browser-ready JPEG of the same grid (tiled TIFF, most SVS), the tile bytes are copied
as they are: the conversion is lossless and fast. Other levels are read through
openslide and encoded once. Associated images (label, macro, thumbnail) become LABEL,
OVERVIEW and THUMBNAIL instances. Patient / study / case come from the caller (CLI
options) or from a sidecar ``<slide file>.json`` holding SlideIdentity fields.

This is what ``tessera import`` (for vendor files) and ``tessera convert`` call.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from modules.pathology.dicom_writer import SlideIdentity, uid_from, write_wsi_instance, wsi_dataset
from modules.pathology.openslide_source import OpenSlideSource, SlideFileError
from server.archive.archive import Archive, StoreOutcome
from server.tiles import SourceUnreadable

TILE = 256  # frame size for levels that must be re-encoded
ASSOCIATED = {"label": "LABEL", "macro": "OVERVIEW", "thumbnail": "THUMBNAIL"}


def identity_for(path: Path, given: SlideIdentity | None = None) -> SlideIdentity:
    """The caller's identity, else the sidecar JSON's, with UIDs derived from the file when missing."""
    identity = given
    sidecar = path.with_name(path.name + ".json")
    if identity is None and sidecar.exists():
        try:
            fields = json.loads(sidecar.read_text("utf-8"))
            known = {f.name for f in dataclasses.fields(SlideIdentity)}
            identity = SlideIdentity(**{k: v for k, v in fields.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise SlideFileError(f"{sidecar.name}: not a slide identity ({exc})") from exc
    identity = identity or SlideIdentity()
    stat = path.stat()
    key = (path.name, stat.st_size)
    study = identity.study_instance_uid or uid_from(
        "study", identity.patient_id, identity.accession_number or path.stem
    )
    scanned = datetime.datetime.fromtimestamp(stat.st_mtime)  # stable: converting again gives equal files
    return dataclasses.replace(
        identity,
        study_date=identity.study_date or scanned.strftime("%Y%m%d"),
        study_time=identity.study_time or scanned.strftime("%H%M%S"),
        patient_id=identity.patient_id or f"SLIDE-{uid_from('patient', *key)[-8:]}",
        study_instance_uid=study,
        series_instance_uid=identity.series_instance_uid or uid_from("series", study, *key),
        container_identifier=identity.container_identifier or path.stem[:64],
        series_description=identity.series_description or path.stem[:64],
    )


def _level_frames(
    source: OpenSlideSource, level: int, tile: tuple[int, int], quality: int
) -> Iterator[bytes]:
    lv = source.levels[level]
    tile_w, tile_h = tile
    columns, rows = -(-lv.width // tile_w), -(-lv.height // tile_h)
    passthrough = (tile_w, tile_h) == (lv.tile_width, lv.tile_height)
    for row in range(rows):
        for column in range(columns):
            stored = source.read_encoded_tile(level, column, row) if passthrough else None
            if stored is not None:
                yield stored.data
                continue
            region = source.read_region(level, column * tile_w, row * tile_h, tile_w, tile_h)
            buffer = io.BytesIO()
            region.save(buffer, "JPEG", quality=quality)
            yield buffer.getvalue()


def convert_slide(
    path: Path, out_dir: Path, identity: SlideIdentity | None = None, quality: int = 90
) -> list[Path]:
    """Write the slide as DICOM WSI files into ``out_dir``; raises SlideFileError on a bad file."""
    source = OpenSlideSource(path)
    identity = identity_for(path, identity)
    if identity.objective_lens_power is None and source.objective_power:
        identity = dataclasses.replace(identity, objective_lens_power=source.objective_power)
    if not identity.manufacturer:
        identity = dataclasses.replace(identity, manufacturer=source.vendor)
    mpp = source.mpp[0] if source.mpp else None
    written: list[Path] = []
    number = 1
    try:
        for index, lv in enumerate(source.levels):
            raw = source.read_encoded_tile(index, 0, 0)
            tile = (lv.tile_width, lv.tile_height) if raw is not None else (TILE, TILE)
            frames = (-(-lv.width // tile[0])) * (-(-lv.height // tile[1]))
            image_type = ["ORIGINAL" if index == 0 else "DERIVED", "PRIMARY", "VOLUME"]
            image_type.append("NONE" if index == 0 else "RESAMPLED")
            ds = wsi_dataset(
                identity,
                number,
                image_type,
                (lv.width, lv.height),
                tile,
                frames,
                mpp * lv.downsample if mpp else None,
            )
            written.append(out_dir / f"level-{index}.dcm")
            write_wsi_instance(written[-1], ds, _level_frames(source, index, tile, quality))
            number += 1
        for name, kind in ASSOCIATED.items():
            if name not in source.slide.associated_images:
                continue
            image = source.slide.associated_images[name].convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality)
            image_type = ["DERIVED" if kind == "THUMBNAIL" else "ORIGINAL", "PRIMARY", kind]
            image_type.append("RESAMPLED" if kind == "THUMBNAIL" else "NONE")
            ds = wsi_dataset(identity, number, image_type, image.size, image.size, 1, None)
            written.append(out_dir / f"{kind.lower()}.dcm")
            write_wsi_instance(written[-1], ds, [buffer.getvalue()])
            number += 1
    except (SourceUnreadable, OSError, Image.DecompressionBombError) as exc:
        for file in written:
            file.unlink(missing_ok=True)
        raise SlideFileError(f"{path.name}: slide data cannot be read ({exc})") from exc
    return written


def import_slide(archive: Archive, path: Path, identity: SlideIdentity | None = None) -> list[StoreOutcome]:
    """Convert a vendor slide and store it through the archive's one ingest path."""
    with tempfile.TemporaryDirectory(dir=archive.settings.tmp_dir) as work:
        files = convert_slide(path, Path(work), identity)
        return [archive.ingest_path(file) for file in files]


def describe(path: Path) -> dict[str, Any]:
    """What openslide sees in a file (for an import preview or a clear error)."""
    source = OpenSlideSource(path)
    return {
        "vendor": source.vendor,
        "levels": [(lv.width, lv.height) for lv in source.levels],
        "mpp": source.mpp,
        "objective_power": source.objective_power,
        "associated_images": source.associated_images,
        "raw_tiles": [source.read_encoded_tile(i, 0, 0) is not None for i in range(len(source.levels))],
    }
