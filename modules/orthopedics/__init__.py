"""Orthopedics: calibrated radiographs, measurements, implant templates at true scale, saved plans."""

from modules.orthopedics.module import OrthopedicsModule

module = OrthopedicsModule()

__all__ = ["OrthopedicsModule", "module"]
