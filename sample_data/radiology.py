"""Small, realistic radiology instances for the archive/DICOMweb tests and the demo.

Every case is built in memory as a pydicom :class:`FileDataset` with a complete
file meta group, the Patient/Study/Series/Instance attributes an archive indexes,
and pixel data drawn from simple anatomical phantoms (so a thumbnail looks like a
CT, a chest film or a kidney scan, and a broken decoder is visible at a glance).
UIDs are derived from the patient/study identity with a hash, so two runs give
byte-identical files and tests can refer to stable UIDs.

Valid (case, transfer syntax) combinations, as :func:`valid_transfer_syntaxes`
reports them (IVLE/EVLE/Deflated = Implicit, Explicit, Deflated Explicit VR Little
Endian; J2K = JPEG 2000 Lossless .4.90; SV1 = JPEG Lossless SV1 .4.70; Baseline =
JPEG Baseline .4.50)::

    case                        IVLE EVLE Deflated RLE J2K SV1 Baseline
    ct_series (int16)           yes  yes  yes      yes yes yes no
    mr_series (uint16, 12 bit)  yes  yes  yes      yes yes yes no
    cr_image (uint16, 12 bit)   yes  yes  yes      yes yes yes no
    us_multiframe (RGB 8 bit)   yes  yes  yes      yes yes no  yes, as YBR_FULL_422
    rgb_secondary_capture       yes  yes  yes      yes yes no  yes, as YBR_FULL_422
    palette_color_image         yes  yes  yes      yes yes yes no (lossy breaks indices)

JPEG baseline needs 8 bits; JPEG lossless is produced here for one sample per pixel
only (colour would need the encoder's colour transform switched off).
"""

from __future__ import annotations

import copy
import datetime
import io
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

__all__ = [
    "DOE",
    "DOE_CT",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "MUELLER",
    "MUELLER_MR",
    "OBRIEN",
    "OBRIEN_CR",
    "OKAFOR",
    "OKAFOR_US",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "Patient",
    "Study",
    "cr_image",
    "ct_series",
    "derived_uid",
    "encode",
    "mr_series",
    "palette_color_image",
    "rgb_secondary_capture",
    "us_multiframe",
    "valid_transfer_syntaxes",
    "varied_set",
    "write",
]

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "tessera:sample_data/radiology")


def derived_uid(*parts: object) -> UID:
    """A 2.25 UID from a name-based UUID of `parts` (PS3.5 B.2), so the same identity
    always gets the same UID. (generate_uid ignores entropy_srcs without a prefix.)"""
    name = "/".join(map(str, parts))
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


IMPLEMENTATION_CLASS_UID = derived_uid("implementation-class")
IMPLEMENTATION_VERSION_NAME = "TESSERA_SAMPLE1"
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
_MANUFACTURER = "Tessera Sample Data"
_INSTITUTION = "Tessera General Hospital"


@dataclass(frozen=True)
class Patient:
    """Patient module identity; reuse one instance to give a patient several studies."""

    name: str = "Doe^John"
    id: str = "TES-0001"
    birth_date: str = "19610304"
    sex: str = "M"
    specific_character_set: str = "ISO_IR 100"


@dataclass(frozen=True)
class Study:
    """General Study module identity; `instance_uid` is derived when not given."""

    date: str = "20250314"
    time: str = "093000"
    accession_number: str = "ACC-0001"
    description: str = ""
    study_id: str = "1"
    referring_physician_name: str = "Walker^Rebecca^^Dr."
    instance_uid: str | None = None

    def uid_for(self, patient: Patient) -> UID:
        """Study Instance UID: given, or hashed from patient ID, accession and date."""
        if self.instance_uid:
            return UID(self.instance_uid)
        return derived_uid("study", patient.id, self.accession_number, self.date)


class _Series(NamedTuple):
    instance_uid: UID
    number: int
    modality: str
    description: str
    body_part: str
    laterality: str = ""


# ---------------------------------------------------------------------------
# Dataset skeleton shared by every case


def _time_after(hhmmss: str, seconds: int) -> str:
    start = datetime.datetime.strptime(hhmmss[:6], "%H%M%S")
    return (start + datetime.timedelta(seconds=seconds)).strftime("%H%M%S")


def _new_series(
    patient: Patient,
    study: Study,
    number: int,
    modality: str,
    description: str,
    body_part: str,
    laterality: str = "",
) -> _Series:
    uid = derived_uid("series", study.uid_for(patient), number)
    return _Series(uid, number, modality, description, body_part, laterality)


def _instance(
    sop_class_uid: UID,
    patient: Patient,
    study: Study,
    study_description: str,
    series: _Series,
    instance_number: int,
    image_type: list[str],
) -> FileDataset:
    """Patient, Study, Series, Equipment and SOP Common attributes of one instance."""
    sop_instance_uid = derived_uid("instance", series.instance_uid, instance_number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)

    series_time = _time_after(study.time, 60 * series.number)
    ds.SpecificCharacterSet = patient.specific_character_set
    ds.ImageType = image_type
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = series_time
    ds.ContentTime = _time_after(series_time, instance_number)
    ds.AccessionNumber = study.accession_number
    ds.Modality = series.modality
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = _INSTITUTION
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyDescription = study.description or study_description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = "Phantom"
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.BodyPartExamined = series.body_part
    ds.StudyInstanceUID = study.uid_for(patient)
    ds.SeriesInstanceUID = series.instance_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.number
    ds.InstanceNumber = instance_number
    if series.laterality:
        ds.Laterality = series.laterality
    return ds


def _finish(ds: FileDataset, transfer_syntax_uid: str) -> FileDataset:
    if UID(transfer_syntax_uid) == ExplicitVRLittleEndian:
        return ds
    return encode(ds, transfer_syntax_uid)


# ---------------------------------------------------------------------------
# Phantoms: smooth anatomy-like pictures, deterministic


def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], y downwards (rows), x rightwards."""
    y = (np.arange(rows) + 0.5) / rows * 2 - 1
    x = (np.arange(cols) + 0.5) / cols * 2 - 1
    return np.meshgrid(y, x, indexing="ij")


def _ellipse(
    y: np.ndarray,
    x: np.ndarray,
    centre: tuple[float, float],
    radii: tuple[float, float],
    angle_deg: float = 0.0,
) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    dy, dx = y - centre[0], x - centre[1]
    u = dx * np.cos(a) + dy * np.sin(a)
    v = -dx * np.sin(a) + dy * np.cos(a)
    return (u / radii[1]) ** 2 + (v / radii[0]) ** 2 <= 1.0


def _blur(a: np.ndarray, passes: int = 2) -> np.ndarray:
    """Box blur with edge padding, to soften phantom edges like a real system's MTF."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        windows = [p[i : i + a.shape[0], j : j + a.shape[1]] for i in range(3) for j in range(3)]
        a = np.mean(windows, axis=0)
    return a


def _ct_chest_hu(size: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """Axial chest slice in HU; `z` in [0, 1] runs from lung apex towards the base."""
    y, x = _grid(size, size)
    hu = np.full((size, size), -1000.0)
    hu[_ellipse(y, x, (0.05, 0), (0.62, 0.86))] = -100  # subcutaneous fat
    hu[_ellipse(y, x, (0.05, 0), (0.56, 0.80))] = 40  # chest wall muscle
    lung = 0.75 + 0.25 * np.sin(np.pi * (0.2 + 0.6 * z))
    for side in (-1, 1):
        hu[_ellipse(y, x, (-0.02, side * 0.38), (0.42 * lung, 0.27 * lung), side * 12)] = -850
        for k in range(3):  # pulmonary vessels
            c = (-0.15 + 0.15 * k, side * (0.30 + 0.05 * k))
            hu[_ellipse(y, x, c, (0.025, 0.025))] = 30
    heart = 0.5 + 0.5 * z
    hu[_ellipse(y, x, (0.12, 0.10), (0.26 * heart, 0.24 * heart), 30)] = 45
    hu[_ellipse(y, x, (-0.14, -0.08), (0.07, 0.07))] = 180  # ascending aorta, contrast
    hu[_ellipse(y, x, (0.30, -0.12), (0.06, 0.06))] = 180  # descending aorta
    hu[_ellipse(y, x, (0.42, 0), (0.10, 0.11))] = 800  # vertebral cortex
    hu[_ellipse(y, x, (0.42, 0), (0.085, 0.095))] = 250  # cancellous bone
    hu[_ellipse(y, x, (0.60, 0), (0.05, 0.14))] = 650  # posterior elements
    hu[_ellipse(y, x, (0.565, 0), (0.04, 0.04))] = 15  # spinal canal
    hu[_ellipse(y, x, (-0.50, 0), (0.035, 0.09))] = 500  # sternum
    for angle in (35, 70, 110, 145):  # ribs along the chest wall
        t = np.deg2rad(angle)
        for side in (-1, 1):
            c = (0.05 - 0.55 * np.cos(t), side * 0.78 * np.sin(t))
            hu[_ellipse(y, x, c, (0.03, 0.045), side * angle)] = 700
    table = (y > 0.76 + 0.06 * x**2) & (y < 0.80 + 0.06 * x**2) & (np.abs(x) < 0.85)
    hu[table] = 150
    hu = _blur(hu, 1) + rng.normal(0, 6, hu.shape)
    stored = np.round(hu + 1024)
    stored[x**2 + y**2 > 1.0] = -2000  # outside the reconstruction circle
    return stored.astype(np.int16)


def _mr_head_t1(size: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """Axial T1-weighted head slice (fat and white matter bright, CSF dark)."""
    y, x = _grid(size, size)
    img = np.zeros((size, size))
    img[_ellipse(y, x, (0, 0), (0.88, 0.72))] = 900  # scalp fat
    img[_ellipse(y, x, (0, 0), (0.83, 0.67))] = 60  # skull
    img[_ellipse(y, x, (0, 0), (0.78, 0.62))] = 250  # CSF
    img[_ellipse(y, x, (0.02, 0), (0.75, 0.59))] = 620  # grey matter
    img[_ellipse(y, x, (0.02, 0), (0.62, 0.47))] = 820  # white matter
    ventricle = 0.6 + 0.4 * np.sin(np.pi * z)
    for side in (-1, 1):
        c = (-0.05, side * 0.11)
        img[_ellipse(y, x, c, (0.24 * ventricle, 0.07), side * 15)] = 220
    img[_ellipse(y, x, (-0.35, 0.25), (0.08, 0.06))] = 1150  # enhancing lesion
    img = _blur(img, 1) * (1.0 + 0.12 * y)  # receive-coil bias field
    img = np.abs(img + rng.normal(0, 12, img.shape))
    return np.clip(np.round(img), 0, 4095).astype(np.uint16)


def _chest_radiograph(rows: int, cols: int) -> np.ndarray:
    """PA chest film as detector values: high where X-rays got through (lungs, air)."""
    y, x = _grid(rows, cols)
    att = np.zeros((rows, cols))
    torso = (np.abs(x) < 0.86 * np.sqrt(np.clip(1 - ((y - 0.35) / 1.25) ** 2, 0, 1))) & (y > -0.72)
    neck = (np.abs(x) < 0.22) & (y <= -0.72)
    att += np.where(torso, 0.9 * np.sqrt(np.clip(1 - (x / 0.86) ** 2, 0, 1)), 0)
    att += np.where(neck, 0.6, 0)
    for side, rx in ((-1, 0.30), (1, 0.27)):
        inside = _ellipse(y, x, (-0.08, side * 0.38), (0.56, rx))
        r2 = ((y + 0.08) / 0.56) ** 2 + ((x - side * 0.38) / rx) ** 2
        att -= np.where(inside, 0.55 * np.sqrt(np.clip(1 - r2, 0, 1)), 0)
    att += np.where(_ellipse(y, x, (0.22, 0.12), (0.28, 0.30)), 0.30, 0)  # heart
    att += np.where((np.abs(x) < 0.13) & (y > -0.8) & (y < 0.5), 0.30, 0)  # mediastinum
    att += np.where(np.abs(x) < 0.07, 0.35, 0)  # spine
    for k in range(9):  # posterior ribs
        curve = -0.60 + 0.12 * k + 0.22 * (np.abs(x) - 0.1) ** 2
        rib = (np.abs(y - curve) < 0.022) & (np.abs(x) > 0.08) & (np.abs(x) < 0.72)
        att += np.where(rib & torso, 0.18, 0)
    clavicle = (np.abs(y - (-0.63 + 0.1 * np.abs(x))) < 0.03) & (np.abs(x) > 0.08)
    att += np.where(clavicle & (np.abs(x) < 0.55), 0.3, 0)
    att += np.where(torso & (y > 0.48 + 0.15 * x**2), 0.30, 0)  # diaphragm, abdomen
    values = 3950 - 1500 * _blur(att, 2)
    return np.clip(np.round(values), 0, 4095).astype(np.uint16)


def _us_bmode(rows: int, cols: int, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """Sector-scan B-mode of a kidney (0-255 grey) and the renal-artery flow mask."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(float)
    cx = cols / 2
    r = np.hypot(yy + 6, xx - cx)
    theta = np.arctan2(xx - cx, yy + 6)
    fan = (r > 12) & (r < rows - 2) & (np.abs(theta) < 0.62)
    tissue = 70 + 18 * np.sin(xx * 0.31 + yy * 0.17) * np.sin(yy * 0.23 - xx * 0.11)
    tissue[r < 22] = 115  # skin and subcutaneous layer
    y, x = _grid(rows, cols)
    dy = 0.04 * np.sin(2 * np.pi * phase)  # breathing motion
    kidney = (0.15 + dy, 0.0)
    tissue[_ellipse(y, x, kidney, (0.42, 0.55), 12)] = 135  # capsule
    tissue[_ellipse(y, x, kidney, (0.38, 0.50), 12)] = 95  # cortex
    for k in range(5):  # medullary pyramids
        a = np.deg2rad(40 + 25 * k)
        c = (kidney[0] - 0.24 * np.sin(a), 0.38 * np.cos(a))
        tissue[_ellipse(y, x, c, (0.08, 0.06), 90 - 25 * k)] = 45
    tissue[_ellipse(y, x, kidney, (0.15, 0.24), 12)] = 170  # renal sinus fat
    grey = _blur(tissue, 1) * (1 - 0.35 * r / rows)
    grey = np.where(fan, grey, 0)
    vessel = _ellipse(y, x, (kidney[0] + 0.02, -0.05), (0.035, 0.28), 8) & fan
    return np.clip(grey, 0, 255), vessel


def _us_rgb_frames(n_frames: int, rows: int, cols: int) -> np.ndarray:
    frames = np.empty((n_frames, rows, cols, 3), dtype=np.uint8)
    for i in range(n_frames):
        phase = i / n_frames
        grey, vessel = _us_bmode(rows, cols, phase)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        pulse = 0.6 + 0.4 * np.cos(2 * np.pi * phase)
        rgb[vessel] = (215 * pulse + 30, 50, 35)  # colour Doppler: flow towards probe
        frames[i] = np.round(rgb).astype(np.uint8)
    return frames


def _volume_rendering(size: int) -> np.ndarray:
    """Shaded bone-coloured sphere on a blue gradient, with a hue colour bar."""
    y, x = _grid(size, size)
    rgb = np.zeros((size, size, 3))
    ramp = (1 - y) / 2  # background gradient: dark to mid blue, top to bottom
    rgb[..., 0] = 10 + 20 * ramp
    rgb[..., 1] = 20 + 40 * ramp
    rgb[..., 2] = 60 + 100 * ramp
    r2 = (x / 0.7) ** 2 + (y / 0.7) ** 2
    inside = r2 < 1
    nz = np.sqrt(np.clip(1 - r2, 0, 1))
    shade = np.clip(0.2 + 0.8 * (0.5 * nz - 0.5 * (x / 0.7) * 0.4 - 0.5 * (y / 0.7) * 0.6), 0, 1)
    for ch, colour in enumerate((235, 222, 190)):
        rgb[..., ch] = np.where(inside, colour * shade, rgb[..., ch])
    bar = x > 0.85
    hue = (y[bar] + 1) / 2 * 4  # red -> yellow -> green -> cyan -> blue
    rgb[bar] = np.stack(
        [
            np.clip(2 - hue, 0, 1) * 255,
            np.clip(np.minimum(hue, 3 - hue), 0, 1) * 255,
            np.clip(hue - 2, 0, 1) * 255,
        ],
        axis=1,
    )
    return np.round(rgb).astype(np.uint8)


# ---------------------------------------------------------------------------
# Cases


def ct_series(
    n_slices: int = 5,
    *,
    patient: Patient | None = None,
    study: Study | None = None,
    series_number: int = 1,
    series_description: str = "AX 5.0 SOFT TISSUE",
    convolution_kernel: str = "STANDARD",
    size: int = 128,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> list[FileDataset]:
    """Contrast chest CT: signed 16-bit, HU via rescale, padding outside the FOV circle."""
    patient = patient or Patient()
    study = study or Study()
    series = _new_series(patient, study, series_number, "CT", series_description, "CHEST")
    frame_of_reference = derived_uid("frame-of-reference", study.uid_for(patient))
    spacing = 400.0 / size
    rng = np.random.default_rng(series_number)
    slices = []
    for i in range(n_slices):
        z_pos = -60.0 - 5.0 * i
        ds = _instance(
            CTImageStorage, patient, study, "CT CHEST WITH CONTRAST", series, i + 1,
            ["ORIGINAL", "PRIMARY", "AXIAL"],
        )  # fmt: skip
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.AcquisitionNumber = 1
        ds.KVP = 120
        ds.XRayTubeCurrent = 220
        ds.ConvolutionKernel = convolution_kernel
        ds.ContrastBolusAgent = "IOHEXOL"
        ds.SliceThickness = 5.0
        ds.ImagePositionPatient = [-200 + spacing / 2, -200 + spacing / 2, z_pos]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z_pos
        ds.PixelSpacing = [spacing, spacing]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = [40, -600]
        ds.WindowWidth = [400, 1500]
        ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
        z = i / max(n_slices - 1, 1)
        ds.set_pixel_data(_ct_chest_hu(size, z, rng), "MONOCHROME2", 16, generate_instance_uid=False)
        ds.add(DataElement(Tag(0x0028, 0x0120), "SS", -2000))  # Pixel Padding Value
        slices.append(_finish(ds, transfer_syntax_uid))
    return slices


def mr_series(
    n_slices: int = 3,
    *,
    patient: Patient | None = None,
    study: Study | None = None,
    series_number: int = 1,
    series_description: str = "AX T1 SE",
    size: int = 128,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> list[FileDataset]:
    """Axial T1 brain MR: unsigned 16-bit with 12 bits stored, one window preset."""
    patient = patient or Patient()
    study = study or Study()
    series = _new_series(patient, study, series_number, "MR", series_description, "HEAD")
    frame_of_reference = derived_uid("frame-of-reference", study.uid_for(patient))
    spacing = 240.0 / size
    rng = np.random.default_rng(100 + series_number)
    slices = []
    for i in range(n_slices):
        z_pos = 20.0 + 6.0 * i
        ds = _instance(
            MRImageStorage, patient, study, "MR BRAIN WITHOUT AND WITH CONTRAST", series,
            i + 1, ["ORIGINAL", "PRIMARY", "OTHER"],
        )  # fmt: skip
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500
        ds.EchoTime = 12
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 1.5
        ds.ImagedNucleus = "1H"
        ds.AcquisitionNumber = 1
        ds.SliceThickness = 5.0
        ds.SpacingBetweenSlices = 6.0
        ds.ImagePositionPatient = [-120 + spacing / 2, -120 + spacing / 2, z_pos]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z_pos
        ds.PixelSpacing = [spacing, spacing]
        ds.WindowCenter = 600
        ds.WindowWidth = 1200
        z = i / max(n_slices - 1, 1)
        ds.set_pixel_data(_mr_head_t1(size, z, rng), "MONOCHROME2", 12, generate_instance_uid=False)
        slices.append(_finish(ds, transfer_syntax_uid))
    return slices


def cr_image(
    *,
    patient: Patient | None = None,
    study: Study | None = None,
    series_number: int = 1,
    rows: int = 256,
    columns: int = 208,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> FileDataset:
    """PA chest film: MONOCHROME1, 12 of 16 bits, grey levels by a VOI LUT, no window."""
    patient = patient or Patient()
    study = study or Study()
    series = _new_series(patient, study, series_number, "CR", "CHEST PA", "CHEST")
    ds = _instance(
        ComputedRadiographyImageStorage, patient, study, "XR CHEST PA", series, 1,
        ["ORIGINAL", "PRIMARY"],
    )  # fmt: skip
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.KVP = 125
    ds.ExposureTime = 8
    ds.PlateType = "IP"
    spacing = 430.0 / rows
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    values = _chest_radiograph(rows, columns)
    ds.set_pixel_data(values, "MONOCHROME1", 12, generate_instance_uid=False)
    # A sigmoid VOI LUT over the body's exposure range: higher stored values (more
    # exposure) map to higher output, which MONOCHROME1 shows darker (lungs black).
    inputs = np.arange(4096, dtype=float)
    centre, width = 2600.0, 2600.0
    lut = 4095 / (1 + np.exp(-(inputs - centre) / (width / 8)))
    voi = Dataset()
    voi.LUTDescriptor = [4096, 0, 12]
    voi.LUTExplanation = "SIGMOID CHEST"
    voi.add(DataElement(Tag(0x0028, 0x3006), "OW", np.round(lut).astype("<u2").tobytes()))
    voi["LUTDescriptor"].VR = "US"
    ds.VOILUTSequence = [voi]
    return _finish(ds, transfer_syntax_uid)


def _add_us_region(ds: Dataset, rows: int, cols: int, cm_per_pixel: float) -> None:
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D tissue image
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = cols - 1
    region.RegionLocationMaxY1 = rows - 1
    region.ReferencePixelX0 = cols // 2
    region.ReferencePixelY0 = 0
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.ReferencePixelPhysicalValueX = 0.0
    region.ReferencePixelPhysicalValueY = 0.0
    region.PhysicalDeltaX = cm_per_pixel
    region.PhysicalDeltaY = cm_per_pixel
    ds.SequenceOfUltrasoundRegions = [region]


def us_multiframe(
    n_frames: int = 10,
    *,
    patient: Patient | None = None,
    study: Study | None = None,
    series_number: int = 1,
    rows: int = 120,
    columns: int = 160,
    frame_time_ms: float = 40.0,
    transfer_syntax_uid: str = JPEGBaseline8Bit,
) -> FileDataset:
    """Right-kidney cine loop with colour flow; stored JPEG baseline YBR_FULL_422 by default."""
    patient = patient or Patient()
    study = study or Study()
    series = _new_series(patient, study, series_number, "US", "RT KIDNEY CINE", "KIDNEY", "R")
    ds = _instance(
        UltrasoundMultiFrameImageStorage, patient, study, "US RENAL", series, 1,
        ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0011"],
    )  # fmt: skip
    rate = round(1000 / frame_time_ms)
    ds.FrameTime = frame_time_ms
    ds.CineRate = rate
    ds.RecommendedDisplayFrameRate = rate
    ds.FrameIncrementPointer = Tag(0x0018, 0x1063)  # Frame Time
    ds.PreferredPlaybackSequencing = 0  # looping
    ds.TransducerType = "CURVED LINEAR"
    _add_us_region(ds, rows, columns, 0.1)
    ds.set_pixel_data(_us_rgb_frames(n_frames, rows, columns), "RGB", 8, generate_instance_uid=False)
    return _finish(ds, transfer_syntax_uid)


def rgb_secondary_capture(
    *,
    patient: Patient | None = None,
    study: Study | None = None,
    series_number: int = 1,
    size: int = 128,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> FileDataset:
    """Screen capture of a 3D rendering: RGB, 8-bit, colour-by-pixel (PlanarConfiguration 0)."""
    patient = patient or Patient()
    study = study or Study()
    series = _new_series(patient, study, series_number, "OT", "3D VOLUME RENDERING", "CHEST")
    ds = _instance(
        SecondaryCaptureImageStorage, patient, study, "CT CHEST WITH CONTRAST", series, 1,
        ["DERIVED", "SECONDARY"],
    )  # fmt: skip
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""
    ds.DateOfSecondaryCapture = study.date
    ds.TimeOfSecondaryCapture = _time_after(study.time, 1800)
    ds.set_pixel_data(_volume_rendering(size), "RGB", 8, generate_instance_uid=False)
    return _finish(ds, transfer_syntax_uid)


def _doppler_palette() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """256-entry 16-bit palette: 0-191 a grey ramp, 192-255 a red-to-yellow flow scale."""
    grey = np.round(np.arange(192) / 191 * 65535)
    flow = np.arange(64) / 63
    red = np.concatenate([grey, np.round((0.55 + 0.45 * flow) * 65535)])
    green = np.concatenate([grey, np.round(flow**2 * 0.9 * 65535)])
    blue = np.concatenate([grey, np.round(0.1 * (1 - flow) * 65535)])
    return red.astype("<u2"), green.astype("<u2"), blue.astype("<u2")


def palette_color_image(
    *,
    patient: Patient | None = None,
    study: Study | None = None,
    series_number: int = 2,
    rows: int = 120,
    columns: int = 160,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> FileDataset:
    """Colour-Doppler kidney still as PALETTE COLOR: 8-bit indices into real R/G/B LUTs."""
    patient = patient or Patient()
    study = study or Study()
    series = _new_series(patient, study, series_number, "US", "RT KIDNEY DOPPLER", "KIDNEY", "R")
    ds = _instance(
        UltrasoundImageStorage, patient, study, "US RENAL", series, 1,
        ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0011"],
    )  # fmt: skip
    _add_us_region(ds, rows, columns, 0.1)
    grey, vessel = _us_bmode(rows, columns, 0.0)
    indices = np.round(grey / 255 * 191)
    _, x = _grid(rows, columns)
    indices[vessel] = np.round(192 + 63 * np.clip((x[vessel] + 0.35) / 0.7, 0, 1))
    ds.set_pixel_data(indices.astype(np.uint8), "PALETTE COLOR", 8, generate_instance_uid=False)
    for colour, data in zip(("Red", "Green", "Blue"), _doppler_palette(), strict=True):
        descriptor = DataElement(Tag(f"{colour}PaletteColorLookupTableDescriptor"), "US", [256, 0, 16])
        ds.add(descriptor)
        ds.add(DataElement(Tag(f"{colour}PaletteColorLookupTableData"), "OW", data.tobytes()))
    return _finish(ds, transfer_syntax_uid)


# ---------------------------------------------------------------------------
# Transfer syntaxes


def valid_transfer_syntaxes(ds: Dataset) -> tuple[UID, ...]:
    """Transfer syntaxes :func:`encode` can give `ds`: JPEG baseline only for 8-bit
    non-palette images (it is lossy), JPEG lossless here only for one sample per pixel."""
    syntaxes = [*UNCOMPRESSED_TRANSFER_SYNTAXES, RLELossless, JPEG2000Lossless]
    if ds.SamplesPerPixel == 1:
        syntaxes.append(JPEGLosslessSV1)
    if ds.BitsAllocated == 8 and ds.PhotometricInterpretation != "PALETTE COLOR":
        syntaxes.append(JPEGBaseline8Bit)
    return tuple(syntaxes)


def _frames(ds: Dataset) -> np.ndarray:
    """Pixel data as (frames, rows, columns[, samples])."""
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = arr.shape[-3:] if ds.SamplesPerPixel > 1 else arr.shape[-2:]
    return arr.reshape((n, *per_frame))


def _set_encapsulated(ds: FileDataset, frames: list[bytes], transfer_syntax_uid: UID) -> None:
    ds.PixelData = encapsulate(frames, fragments_per_frame=1, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = transfer_syntax_uid


def _compress_jpeg_lossless(ds: FileDataset) -> None:
    import imagecodecs  # only this syntax needs it; keep the rest importable without it

    bits = int(ds.BitsStored)
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    mask = (1 << bits) - 1
    frames = [
        bytes(
            imagecodecs.jpeg8_encode(
                (frame.astype(np.int64) & mask).astype(dtype),
                lossless=True,
                predictor=1,  # selection value 1: the left neighbour (process 14, SV1)
                bitspersample=bits,
            )
        )
        for frame in _frames(ds)
    ]
    _set_encapsulated(ds, frames, JPEGLosslessSV1)


def _compress_jpeg_baseline(ds: FileDataset) -> None:
    frames = _frames(ds)
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        image = Image.fromarray(frame)
        if frame.ndim == 3:  # RGB in, JFIF YCbCr with 4:2:2 chroma out
            image.save(buffer, "JPEG", quality=92, subsampling="4:2:2")
        else:
            image.save(buffer, "JPEG", quality=92)
        encoded.append(buffer.getvalue())
    ratio = frames.nbytes / sum(len(f) for f in encoded)
    _set_encapsulated(ds, encoded, JPEGBaseline8Bit)
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def encode(ds: FileDataset, transfer_syntax_uid: str) -> FileDataset:
    """A copy of `ds` in `transfer_syntax_uid`, keeping its UIDs (a test fixture, not a
    new acquisition). Compressed input is decoded first; invalid pairs raise ValueError."""
    uid = UID(transfer_syntax_uid)
    out = copy.deepcopy(ds)
    if out.file_meta.TransferSyntaxUID.is_compressed:
        out.decompress(generate_instance_uid=False)
    if uid not in valid_transfer_syntaxes(out):
        raise ValueError(
            f"{uid.name} is not valid for {out.PhotometricInterpretation} "
            f"{out.BitsAllocated}-bit {out.SOPClassUID.name}"
        )
    if uid in UNCOMPRESSED_TRANSFER_SYNTAXES:
        out.file_meta.TransferSyntaxUID = uid
    elif uid in (RLELossless, JPEG2000Lossless):
        out.compress(uid, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif uid == JPEGLosslessSV1:
        _compress_jpeg_lossless(out)
    else:
        _compress_jpeg_baseline(out)
    return out


# ---------------------------------------------------------------------------
# Writing a varied archive


def write(ds: FileDataset, out_dir: Path) -> Path:
    """Write `ds` as a DICOM file under out_dir/PatientID/Accession/Series-Modality/."""
    series_dir = f"{int(ds.SeriesNumber):02d}-{ds.Modality}"
    path = Path(out_dir) / ds.PatientID / ds.AccessionNumber / series_dir
    path.mkdir(parents=True, exist_ok=True)
    path = path / f"{int(ds.InstanceNumber):04d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


DOE = Patient("Doe^John", "TES-0001", "19610304", "M", "ISO_IR 100")
MUELLER = Patient("Müller^Anna", "TES-0002", "19790921", "F", "ISO_IR 192")
OBRIEN = Patient("O'Brien^<b>Sean</b>", "TES-0003", "19880117", "M", "ISO_IR 100")
OKAFOR = Patient("Okafor^Chidinma", "TES-0004", "19920605", "F", "ISO_IR 100")

DOE_CT = Study("20250314", "093000", "ACC-1001", "CT CHEST WITH CONTRAST", "1")
MUELLER_MR = Study("20250402", "141500", "ACC-1002", "MR BRAIN WITHOUT AND WITH CONTRAST", "1")
OBRIEN_CR = Study("20250418", "080500", "ACC-1003", "XR CHEST PA", "1")
OKAFOR_US = Study("20250502", "110000", "ACC-1004", "US RENAL", "1")


def varied_set(out_dir: Path) -> list[Path]:
    """One study for each of four patients, covering every case and a spread of
    transfer syntaxes (see the module docstring), written under `out_dir`."""
    instances: list[FileDataset] = [
        *ct_series(patient=DOE, study=DOE_CT, series_number=1),
        *ct_series(
            patient=DOE, study=DOE_CT, series_number=2, series_description="AX 5.0 LUNG",
            convolution_kernel="LUNG", transfer_syntax_uid=JPEG2000Lossless,
        ),
        *ct_series(
            patient=DOE, study=DOE_CT, series_number=3, series_description="AX 5.0 BONE",
            convolution_kernel="BONE", transfer_syntax_uid=RLELossless,
        ),
        rgb_secondary_capture(patient=DOE, study=DOE_CT, series_number=4),
        *mr_series(
            patient=MUELLER, study=MUELLER_MR, series_number=1,
            transfer_syntax_uid=ImplicitVRLittleEndian,
        ),
        *mr_series(
            patient=MUELLER, study=MUELLER_MR, series_number=2, series_description="AX T1 SE POST",
            transfer_syntax_uid=JPEGLosslessSV1,
        ),
        cr_image(patient=OBRIEN, study=OBRIEN_CR, transfer_syntax_uid=DeflatedExplicitVRLittleEndian),
        us_multiframe(patient=OKAFOR, study=OKAFOR_US, series_number=1),
        palette_color_image(patient=OKAFOR, study=OKAFOR_US, series_number=2),
    ]  # fmt: skip
    return [write(ds, out_dir) for ds in instances]
