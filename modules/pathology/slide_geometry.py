"""Where a slide's pixels lie on the glass: level-0 pixels ↔ the slide coordinate system (mm).

DICOM WSI places the total pixel matrix on the slide with TotalPixelMatrixOriginSequence
(X/Y offsets in mm), ImageOrientationSlide and the pixel spacing. 3D annotations
(SCOORD3D, in ANN objects and TID 1500 reports) are in these slide coordinates, so other
tools' shapes land on our pixels however the scanner oriented the image. The transforms
are the ones highdicom's ``spatial`` module uses (pixel index = column, row; position of
the first pixel = the origin), kept unrounded here because annotations are sub-pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset


class NoSlideGeometry(ValueError):
    """The base level lacks the attributes that place it on the slide (origin, orientation, spacing)."""


@dataclass(frozen=True)
class SlideGeometry:
    frame_of_reference_uid: str
    origin_mm: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    spacing_mm: tuple[float, float]  # (row spacing, column spacing), as PixelSpacing

    @classmethod
    def of(cls, base: Dataset) -> SlideGeometry:
        """From the base level's header; NoSlideGeometry when it cannot be placed on the slide."""
        try:
            origin = base.TotalPixelMatrixOriginSequence[0]
            spacing = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            orientation = tuple(float(v) for v in base.ImageOrientationSlide)
            position = (
                float(origin.XOffsetInSlideCoordinateSystem),
                float(origin.YOffsetInSlideCoordinateSystem),
                float(origin.get("ZOffsetInSlideCoordinateSystem", 0.0) or 0.0),
            )
            uid = str(base.FrameOfReferenceUID)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise NoSlideGeometry(f"the slide's base level cannot be placed on the slide: {exc}") from exc
        if len(orientation) != 6 or len(spacing) != 2 or min(float(s) for s in spacing) <= 0:
            raise NoSlideGeometry("the slide's orientation or pixel spacing is malformed")
        return cls(uid, position, orientation, (float(spacing[0]), float(spacing[1])))

    def _axes(self) -> np.ndarray:
        """(3, 2): the slide displacement (mm) of one column step and of one row step."""
        row_direction = np.asarray(self.orientation[:3])  # along a row: increasing column index
        column_direction = np.asarray(self.orientation[3:])  # down a column: increasing row index
        return np.stack([row_direction * self.spacing_mm[1], column_direction * self.spacing_mm[0]], axis=1)

    def to_slide(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 2) level-0 pixel positions (column, row) → (N, 3) slide coordinates in mm."""
        return np.asarray(pixels, dtype=np.float64) @ self._axes().T + np.asarray(self.origin_mm)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) slide coordinates in mm → (N, 2) level-0 pixel positions (column, row), unrounded.

        A point off the image plane (another Z) is projected onto it.
        """
        offsets = np.asarray(points, dtype=np.float64)[:, :3] - np.asarray(self.origin_mm)
        return offsets @ np.linalg.pinv(self._axes()).T
