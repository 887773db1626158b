"""Small valid DICOM files the mutation fuzzers start from: one per encoding ingest treats differently."""

from __future__ import annotations

import functools

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from sample_data.radiology import ct_series
from tests.dicom_cases import to_bytes


@functools.cache
def seed_files() -> tuple[bytes, ...]:
    """A 16×16 CT slice in native (explicit and implicit VR) and encapsulated (RLE) transfer syntaxes."""
    syntaxes = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless)
    return tuple(
        to_bytes(ct_series(1, size=16, transfer_syntax_uid=s, series_number=n)[0])
        for n, s in enumerate(syntaxes, 1)
    )
