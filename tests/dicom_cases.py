"""Small hand-made bad inputs for the ingest and DICOMweb error tests."""

from __future__ import annotations

import io

from pydicom.dataset import FileDataset

from sample_data.radiology import ct_series


def to_bytes(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_bytes(**changes: object) -> bytes:
    """One CT slice, with attributes changed (None deletes the attribute)."""
    ds = ct_series(1)[0]
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return to_bytes(ds)


def bad_inputs() -> dict[str, bytes]:
    """Each entry must be refused with a reason; none may leave anything stored."""
    good = ct_bytes()
    return {
        "not DICOM": b"this is not a DICOM file\n" * 20,
        "empty": b"",
        "truncated pixel data": good[: len(good) - 5000],
        "truncated header": good[:300],
        "missing SOPInstanceUID": ct_bytes(SOPInstanceUID=None),
        "missing StudyInstanceUID": ct_bytes(StudyInstanceUID=None),
        "bad UID": ct_bytes(SeriesInstanceUID="1.2.abc"),
        "absurd Rows": ct_bytes(Rows=0),
        "absurd NumberOfFrames": ct_bytes(NumberOfFrames=2_000_000_000),
        "SOP class mismatch": _class_mismatch(),
    }


def _class_mismatch() -> bytes:
    ds = ct_series(1)[0]
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    buffer = io.BytesIO()
    ds.preamble = b"\0" * 128
    ds.save_as(buffer, enforce_file_format=False)  # keep the contradicting file meta as written
    data = buffer.getvalue()
    assert data[128:132] == b"DICM"
    return data
