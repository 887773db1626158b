"""Pathology: whole-slide images that pan and zoom like a microscope."""

from modules.pathology.module import PathologyModule

module = PathologyModule()

__all__ = ["PathologyModule", "module"]
