"""Generators of realistic sample DICOM data for Tessera's tests and demo archive."""
