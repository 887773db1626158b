"""The demo archive: radiology cases for the generic viewer plus one case per specialty."""

from __future__ import annotations

from pathlib import Path

from sample_data.cardiology import write_cardiology_demo
from sample_data.mammography import write_mammography_demo
from sample_data.orthopedics import write_orthopedics_demo
from sample_data.radiology import DOE, Study, ct_series, varied_set, write
from sample_data.wsi import demo_slides

DOE_PRIOR_CT = Study("20240311", "101500", "ACC-0901", "CT CHEST WITH CONTRAST", "1")


def write_demo_archive(out_dir: Path, *, specialties: bool = True) -> list[Path]:
    """Write the varied radiology set plus a prior CT for John Doe (a patient with two
    studies to compare) and, with ``specialties``, an echo and stress echo with an ECG,
    a screening mammography exam with its prior, planning radiographs and two stains of
    one pathology block."""
    paths = varied_set(out_dir / "radiology")
    prior = ct_series(patient=DOE, study=DOE_PRIOR_CT, series_number=1)
    paths.extend(write(ds, out_dir / "radiology") for ds in prior)
    if specialties:
        paths.extend(write_cardiology_demo(out_dir / "cardiology"))
        paths.extend(write_mammography_demo(out_dir / "mammography"))
        paths.extend(write_orthopedics_demo(out_dir / "orthopedics"))
        paths.extend(demo_slides(out_dir / "pathology"))
    return paths
