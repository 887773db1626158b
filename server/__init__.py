"""Tessera: a specialty enterprise-imaging viewer server over one shared DICOM archive."""

__version__ = "0.1.0"
