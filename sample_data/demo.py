"""The generic radiology part of the demo archive (specialty modules add their own cases)."""

from __future__ import annotations

from pathlib import Path

from sample_data.radiology import DOE, Study, ct_series, varied_set, write

DOE_PRIOR_CT = Study("20240311", "101500", "ACC-0901", "CT CHEST WITH CONTRAST", "1")


def write_demo_archive(out_dir: Path) -> list[Path]:
    """Write the varied radiology set plus a prior CT for John Doe, so the study
    browser shows a patient with two studies to compare."""
    paths = varied_set(out_dir)
    prior = ct_series(patient=DOE, study=DOE_PRIOR_CT, series_number=1)
    paths.extend(write(ds, out_dir) for ds in prior)
    return paths
