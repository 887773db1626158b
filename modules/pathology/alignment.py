"""Saved registration between two slides viewed side by side (offset in µm, rotation in degrees).

Kept per ordered pair of series under the derived-data folder; the viewer applies it as
``right = rotate(left, rotation) + offset`` in slide micrometres.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


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
    """One small JSON file per ordered slide pair. Blocking."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, left_uid: str, right_uid: str) -> Path:
        return self.root / f"{left_uid}__{right_uid}.json"

    def load(self, left_uid: str, right_uid: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.path_for(left_uid, right_uid).read_text("utf-8"))
        except FileNotFoundError:
            return None

    def save(self, left_uid: str, right_uid: str, alignment: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.root, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(alignment, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, self.path_for(left_uid, right_uid))
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
