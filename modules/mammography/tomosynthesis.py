"""Tomosynthesis slabs: N adjacent slices combined server-side, as maximum or mean.

A slab of a few millimetres shows a calcification cluster that single 1 mm slices cut
apart (MIP), or quiets noise (average). The slab is computed on *stored values* from the
cached pyramid, before windowing, so it windows like any slice.
"""

from __future__ import annotations

from enum import Enum

import numpy as np


class SlabMode(Enum):
    MIP = "mip"
    AVERAGE = "average"


def slab_range(center: int, thickness: int, frames: int) -> tuple[int, int]:
    """0-based first and last slice of a slab of ``thickness`` slices centred on ``center``,
    shifted (not shrunk) to stay inside 0..frames-1; thicker than the stack means all of it."""
    if frames < 1:
        raise ValueError("a stack has at least one slice")
    thickness = max(1, min(thickness, frames))
    center = min(max(center, 0), frames - 1)
    first = center - (thickness - 1) // 2
    first = min(max(first, 0), frames - thickness)
    return first, first + thickness - 1


def slab(stack: np.ndarray, mode: SlabMode) -> np.ndarray:
    """Combine ``(n, h, w)`` stored values into one ``(h, w)`` slice of the same dtype (mean rounded)."""
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ValueError("a slab needs a (slices, rows, columns) stack with at least one slice")
    if mode is SlabMode.MIP:
        return stack.max(axis=0)
    return np.rint(stack.mean(axis=0, dtype=np.float64)).astype(stack.dtype)


def relative_slice(index: int, frames: int, other_frames: int) -> int:
    """The slice of another stack at the same relative depth (how current and prior scroll together)."""
    if frames <= 1 or other_frames <= 1:
        return 0
    return round(index / (frames - 1) * (other_frames - 1))
