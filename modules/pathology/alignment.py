"""Saved registration between two slides viewed side by side (offset in µm, rotation in degrees).

Kept per ordered pair of series as a module document in the index database (shared by every
server process, see ``server.archive.documents``); the viewer applies it as
``right = rotate(left, rotation) + offset`` in slide micrometres.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from server.archive.documents import DocumentStore


class AlignmentError(ValueError):
    """The submitted alignment is malformed (a 400)."""


def validate_alignment(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise AlignmentError("expected {offset_um: [x, y], rotation_deg: r}")
    offset, rotation = document.get("offset_um"), document.get("rotation_deg", 0)
    numbers = offset if isinstance(offset, list) else []
    if len(numbers) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
        raise AlignmentError("offset_um is [x, y] in micrometres")
    if not isinstance(rotation, int | float) or isinstance(rotation, bool):
        raise AlignmentError("rotation_deg is a number")
    values = [float(numbers[0]), float(numbers[1]), float(rotation)]
    if not all(math.isfinite(v) for v in values) or max(abs(values[0]), abs(values[1])) > 1e6:
        raise AlignmentError("offset beyond any slide (±1 m) or not finite")
    return {
        "offset_um": [round(values[0], 3), round(values[1], 3)],
        "rotation_deg": round(values[2] % 360, 3),
    }


class AlignmentStore:
    """One small document per ordered slide pair, keyed ``{left series}/{right series}``. Blocking."""

    def __init__(self, documents: DocumentStore) -> None:
        self.shelf = documents.shelf("pathology", "alignment")

    @staticmethod
    def key_for(left_uid: str, right_uid: str) -> str:
        return f"{left_uid}/{right_uid}"

    def load(self, left_uid: str, right_uid: str) -> dict[str, Any] | None:
        document = self.shelf.get(self.key_for(left_uid, right_uid))
        if document is None:
            return None
        body: dict[str, Any] = document.body
        return body

    def save(self, left_uid: str, right_uid: str, alignment: dict[str, Any], by: str | None = None) -> None:
        self.shelf.put(self.key_for(left_uid, right_uid), alignment, by=by)

    def import_files(self, folder: Path) -> int:
        """Earlier versions kept ``{left}__{right}.json`` files under the derived-data folder: bring them in."""
        files = sorted(folder.glob("*__*.json")) if folder.is_dir() else []

        def key_for(path: Path) -> str | None:
            left, _, right = path.stem.partition("__")
            return self.key_for(left, right) if left and right else None

        return self.shelf.import_files(files, key_for, lambda path: json.loads(path.read_text("utf-8")))
