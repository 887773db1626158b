"""Mammography: screening hangings with priors, tomosynthesis, BI-RADS reports."""

from modules.mammography.module import MammographyModule

module = MammographyModule()

__all__ = ["MammographyModule", "module"]
