"""Synthetic orthopedic radiographs whose geometry is known exactly: the test oracle for templating.

Two DX (For Presentation) images of one patient, 12-bit MONOCHROME2, JPEG 2000 lossless:

* an AP pelvis — ImagerPixelSpacing 0.25 mm, EstimatedRadiographicMagnificationFactor
  1.15 and *no* PixelSpacing (calibration source "imager spacing ÷ magnification"),
  a native right hip, a left total hip (metal cup at a known inclination, metal head,
  stem), teardrops, lesser trochanters at a known leg-length difference, and a 25 mm
  calibration sphere at the magnification of the hips;
* a long-leg standing film — ImagerPixelSpacing 0.6 mm, magnification 1.08 and a
  PixelSpacing calibrated by GEOMETRY (source "PixelSpacing"), hip, knee and ankle
  centres and knee joint lines drawn at a known HKA, mLDFA and MPTA, and a sphere.

Anatomy is placed in *patient-plane millimetres* (origin at the image's top-left
corner in that plane) and projected with the magnification, so a test can compare
what a tool measures with what was drawn. The patient's right is on the image's
left (standard AP view). Files stay small (≤ 2000 px on the long side).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, JPEG2000Lossless

from sample_data.radiology import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, derived_uid

__all__ = [
    "LONG_LEG",
    "PELVIS",
    "RadiographPhantom",
    "generic_implant_template",
    "hemispherical_cup_hpgl",
    "long_leg_dataset",
    "pelvis_dataset",
    "write_orthopedics_demo",
]

Point = tuple[float, float]
MARKER_DIAMETER_MM = 25.0
BITS_STORED = 12
PATIENT = ("Planning^Phantom", "TES-ORTHO-1", "19580612", "F")
STUDY_DATE, STUDY_TIME, ACCESSION = "20250611", "101500", "ACC-ORTHO-1"


@dataclass(frozen=True)
class RadiographPhantom:
    """The projection geometry and the landmarks of one synthetic radiograph.

    ``landmarks`` are in patient-plane mm; :meth:`pixel` turns one into image pixel
    coordinates (x = column, y = row) with the same projection the drawing used.
    ``truth`` holds the values a correct tool must measure from those landmarks.
    """

    name: str
    rows: int
    columns: int
    imager_pixel_spacing_mm: float  # at the detector, square pixels
    magnification: float  # anatomy and marker plane (EstimatedRadiographicMagnificationFactor)
    marker_centre_mm: Point
    marker_magnification: float
    landmarks: dict[str, Point] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)

    @property
    def patient_pixel_spacing_mm(self) -> float:
        return self.imager_pixel_spacing_mm / self.magnification

    def pixel(self, point_mm: Point) -> Point:
        scale = self.magnification / self.imager_pixel_spacing_mm
        return point_mm[0] * scale, point_mm[1] * scale

    def px(self, name: str) -> Point:
        return self.pixel(self.landmarks[name])

    @property
    def marker_centre_px(self) -> Point:
        scale = self.marker_magnification / self.imager_pixel_spacing_mm
        return self.marker_centre_mm[0] * scale, self.marker_centre_mm[1] * scale

    @property
    def marker_radius_px(self) -> float:
        return MARKER_DIAMETER_MM / 2 * self.marker_magnification / self.imager_pixel_spacing_mm


def _along(origin: Point, angle_deg: float, length: float) -> Point:
    """A point ``length`` mm from ``origin``, ``angle_deg`` from straight down (positive toward +x)."""
    a = math.radians(angle_deg)
    return origin[0] + length * math.sin(a), origin[1] + length * math.cos(a)


def _rotate(vector: Point, degrees: float) -> Point:
    a = math.radians(degrees)
    return (
        vector[0] * math.cos(a) - vector[1] * math.sin(a),
        vector[0] * math.sin(a) + vector[1] * math.cos(a),
    )


def _pelvis() -> RadiographPhantom:
    centre_x = 187.0
    teardrop_y = 190.0
    head_r = (centre_x - 95.0, 172.0)
    head_l = (centre_x + 95.0, 174.0)
    # Femoral shaft axes lean 7° medially going down; the axis runs `offset` mm lateral of the head centre.
    landmarks: dict[str, Point] = {
        "teardrop_r": (centre_x - 52.0, teardrop_y),
        "teardrop_l": (centre_x + 52.0, teardrop_y),
        "head_centre_r": head_r,
        "head_centre_l": head_l,
        "lesser_trochanter_r": (centre_x - 78.0, 248.0),
        "lesser_trochanter_l": (centre_x + 78.0, 258.0),
    }
    truth = {
        "head_radius_r": 24.0,
        "head_radius_l": 14.0,
        "offset_r": 41.0,
        "offset_l": 44.0,
        "shaft_tilt": 7.0,
        "cup_inclination_l": 42.0,
        "cup_radius_l": 26.0,
    }
    for side, head, sign in (("r", head_r, -1.0), ("l", head_l, 1.0)):
        offset = truth[f"offset_{side}"]
        tilt = math.radians(truth["shaft_tilt"])
        down = (-sign * math.sin(tilt), math.cos(tilt))  # medial-ward going down
        lateral = (sign * math.cos(tilt), math.sin(tilt))  # unit normal to the axis, pointing lateral
        base = (head[0] + offset * lateral[0], head[1] + offset * lateral[1])
        landmarks[f"shaft_top_{side}"] = (base[0] + 40 * down[0], base[1] + 40 * down[1])
        landmarks[f"shaft_bottom_{side}"] = (base[0] + 140 * down[0], base[1] + 140 * down[1])
    # The left cup's opening: two rim points on a line 42° from the inter-teardrop line, lateral end up.
    inclination = math.radians(truth["cup_inclination_l"])
    rim = (math.cos(inclination), -math.sin(inclination))
    cup_r = truth["cup_radius_l"]
    landmarks["cup_rim_lateral_l"] = (head_l[0] + cup_r * rim[0], head_l[1] + cup_r * rim[1])
    landmarks["cup_rim_medial_l"] = (head_l[0] - cup_r * rim[0], head_l[1] - cup_r * rim[1])
    # Right side is 10 mm shorter: its lesser trochanter is 10 mm closer to the teardrop line.
    truth["leg_length_difference_r_minus_l"] = -10.0
    truth["inter_teardrop_mm"] = 104.0
    # Ischial tuberosities (lowest points), 46 mm below the teardrops: the ischial line is parallel
    # to the inter-teardrop line (a rigid, untilted pelvis), so LLD is the same against either.
    landmarks["ischial_tuberosity_r"] = (centre_x - 50.0, teardrop_y + 46.0)
    landmarks["ischial_tuberosity_l"] = (centre_x + 50.0, teardrop_y + 46.0)
    truth["lesser_trochanter_below_ischial_r"] = 248.0 - (teardrop_y + 46.0)
    truth["lesser_trochanter_below_ischial_l"] = 258.0 - (teardrop_y + 46.0)
    return RadiographPhantom(
        name="pelvis",
        rows=1400,
        columns=1720,
        imager_pixel_spacing_mm=0.25,
        magnification=1.15,
        marker_centre_mm=(187.0, 276.0),
        marker_magnification=1.15,
        landmarks=landmarks,
        truth=truth,
    )


def _long_leg() -> RadiographPhantom:
    landmarks: dict[str, Point] = {}
    truth: dict[str, float] = {}
    # Right leg (image left, medial = +x): 6° varus, mLDFA 89°, MPTA 84°.  Left leg: neutral.
    for side, hip, femur_angle, tibia_angle, mldfa, mpta in (
        ("r", (128.0, 110.0), 2.0, 8.0, 89.0, 84.0),
        ("l", (292.0, 110.0), -3.0, -3.0, 87.0, 87.0),
    ):
        medial = 1.0 if side == "r" else -1.0
        knee = _along(hip, femur_angle, 450.0)
        ankle = _along(knee, tibia_angle, 380.0)
        landmarks[f"hip_{side}"], landmarks[f"knee_{side}"], landmarks[f"ankle_{side}"] = hip, knee, ankle
        up_femur = ((hip[0] - knee[0]) / 450.0, (hip[1] - knee[1]) / 450.0)
        # Lateral half of the distal femoral joint line: the femoral axis (pointing up) turned by mLDFA
        # toward lateral (-medial); with y down, turning toward -x from "up" is a negative rotation for
        # the right leg.
        lateral_dir = _rotate(up_femur, -medial * mldfa)
        landmarks[f"condyle_lateral_{side}"] = (knee[0] + 38 * lateral_dir[0], knee[1] + 38 * lateral_dir[1])
        landmarks[f"condyle_medial_{side}"] = (knee[0] - 38 * lateral_dir[0], knee[1] - 38 * lateral_dir[1])
        down_tibia = ((ankle[0] - knee[0]) / 380.0, (ankle[1] - knee[1]) / 380.0)
        medial_dir = _rotate(down_tibia, -medial * mpta)
        plateau = (knee[0], knee[1] + 6.0)
        landmarks[f"plateau_medial_{side}"] = (
            plateau[0] + 36 * medial_dir[0],
            plateau[1] + 36 * medial_dir[1],
        )
        landmarks[f"plateau_lateral_{side}"] = (
            plateau[0] - 36 * medial_dir[0],
            plateau[1] - 36 * medial_dir[1],
        )
        truth[f"hka_deviation_{side}"] = (tibia_angle - femur_angle) * medial  # + varus, - valgus
        truth[f"mldfa_{side}"] = mldfa
        truth[f"mpta_{side}"] = mpta
    return RadiographPhantom(
        name="long_leg",
        rows=2000,
        columns=760,
        imager_pixel_spacing_mm=0.6,
        magnification=1.08,
        marker_centre_mm=(30.0, 520.0),
        marker_magnification=1.08,
        landmarks=landmarks,
        truth=truth,
    )


PELVIS = _pelvis()
LONG_LEG = _long_leg()


# -- drawing ----------------------------------------------------------------------------------


class _Film:
    """Accumulates attenuation (line integrals) shape by shape, in patient-plane mm."""

    def __init__(self, phantom: RadiographPhantom) -> None:
        self.phantom = phantom
        self.attenuation = np.zeros((phantom.rows, phantom.columns), dtype=np.float64)
        self.yy, self.xx = np.mgrid[0 : phantom.rows, 0 : phantom.columns].astype(np.float64)

    def polygon(self, points_mm: list[Point], mu: float) -> None:
        image = Image.new("L", (self.phantom.columns, self.phantom.rows), 0)
        ImageDraw.Draw(image).polygon([self.phantom.pixel(p) for p in points_mm], fill=255)
        self.attenuation += mu * (np.asarray(image, dtype=np.float64) / 255.0)

    def band(self, a_mm: Point, b_mm: Point, width_mm: float, mu: float) -> None:
        """A bone shaft: a rectangle of ``width_mm`` around the segment a–b."""
        dx, dy = b_mm[0] - a_mm[0], b_mm[1] - a_mm[1]
        length = math.hypot(dx, dy)
        nx, ny = -dy / length * width_mm / 2, dx / length * width_mm / 2
        self.polygon(
            [
                (a_mm[0] + nx, a_mm[1] + ny),
                (b_mm[0] + nx, b_mm[1] + ny),
                (b_mm[0] - nx, b_mm[1] - ny),
                (a_mm[0] - nx, a_mm[1] - ny),
            ],
            mu,
        )

    def ball(self, centre_px: Point, radius_px: float, mu_per_px: float) -> None:
        """A sphere: attenuation ∝ chord length 2·sqrt(r² − d²), sharp at the rim like real metal."""
        d2 = (self.xx - centre_px[0]) ** 2 + (self.yy - centre_px[1]) ** 2
        self.attenuation += mu_per_px * 2.0 * np.sqrt(np.clip(radius_px**2 - d2, 0.0, None))

    def sphere_mm(self, centre_mm: Point, radius_mm: float, mu_per_mm: float) -> None:
        scale = self.phantom.magnification / self.phantom.imager_pixel_spacing_mm
        self.ball(self.phantom.pixel(centre_mm), radius_mm * scale, mu_per_mm / scale)

    def ellipse(self, centre_mm: Point, rx_mm: float, ry_mm: float, mu: float, ring: float = 0.0) -> None:
        cx, cy = self.phantom.pixel(centre_mm)
        scale = self.phantom.magnification / self.phantom.imager_pixel_spacing_mm
        r = np.sqrt(((self.xx - cx) / (rx_mm * scale)) ** 2 + ((self.yy - cy) / (ry_mm * scale)) ** 2)
        inside = r <= 1.0
        self.attenuation += mu * inside * (1.0 if ring == 0.0 else np.clip((r - 1 + ring) / ring, 0, 1))

    def stored_values(self, seed: int) -> np.ndarray:
        """Attenuation to 12-bit detector values (bright = attenuating, as MONOCHROME2 shows bone)."""
        from scipy.ndimage import gaussian_filter

        rng = np.random.default_rng(seed)
        # The detector blurs what reaches it (the transmitted intensity), not the attenuation.
        signal = gaussian_filter(1.0 - np.exp(-self.attenuation), 0.8)
        values = 300.0 + 3600.0 * signal + rng.normal(0.0, 5.0, signal.shape)
        return np.clip(np.rint(values), 0, (1 << BITS_STORED) - 1).astype(np.uint16)


def _soft_tissue(film: _Film, centre_x: float, width: float, top: float, bottom: float) -> None:
    film.polygon(
        [
            (centre_x - width / 2, top),
            (centre_x + width / 2, top),
            (centre_x + width / 2 - 10, bottom),
            (centre_x - width / 2 + 10, bottom),
        ],
        0.35,
    )


def _draw_marker(film: _Film) -> None:
    phantom = film.phantom
    film.ball(phantom.marker_centre_px, phantom.marker_radius_px, 0.5)


def _pelvis_pixels() -> np.ndarray:
    p = PELVIS
    film = _Film(p)
    lm = p.landmarks
    _soft_tissue(film, 187.0, 330.0, 0.0, 304.0)
    # Iliac wings and the pelvic ring.
    film.ellipse((187.0 - 70, 90.0), 62, 70, 0.45, ring=0.35)
    film.ellipse((187.0 + 70, 90.0), 62, 70, 0.45, ring=0.35)
    film.ellipse((187.0, 200.0), 70, 52, 0.5, ring=0.25)
    film.ellipse((187.0, 40.0), 22, 40, 0.4)  # sacrum
    for side in ("r", "l"):
        tx, ty = lm[f"teardrop_{side}"]
        film.ellipse((tx, ty - 6.0), 4.0, 7.0, 0.6, ring=0.5)  # teardrop: its lowest point is the landmark
        top, bottom = lm[f"shaft_top_{side}"], lm[f"shaft_bottom_{side}"]
        reach = (330.0 - top[1]) / (bottom[1] - top[1])
        film.band(top, (top[0] + (bottom[0] - top[0]) * reach, 330.0), 30.0, 0.55)
        film.band(lm[f"head_centre_{side}"], lm[f"shaft_top_{side}"], 26.0, 0.45)  # neck
        lx, ly = lm[f"lesser_trochanter_{side}"]
        film.ellipse((lx, ly - 5.0), 7.0, 5.0, 0.4)
        ix, iy = lm[f"ischial_tuberosity_{side}"]
        film.ellipse(
            (ix, iy - 9.0), 10.0, 9.0, 0.35, ring=0.4
        )  # ischial tuberosity: lowest point is the landmark
    film.sphere_mm(lm["head_centre_r"], p.truth["head_radius_r"], 0.012)
    film.sphere_mm(lm["head_centre_l"], p.truth["head_radius_l"], 0.5)  # metal head of the left THA
    # Left cup: a metal hemispherical shell opening toward the rim line.
    cx, cy = lm["head_centre_l"]
    inclination = math.radians(p.truth["cup_inclination_l"])
    radius = p.truth["cup_radius_l"]
    rim = (math.cos(inclination), -math.sin(inclination))
    dome = (-math.sin(inclination), -math.cos(inclination))  # toward the acetabular roof (up and medial)
    shell = [
        (
            cx + radius * (math.cos(t) * rim[0] + math.sin(t) * dome[0]),
            cy + radius * (math.cos(t) * rim[1] + math.sin(t) * dome[1]),
        )
        for t in np.linspace(0, math.pi, 60)
    ]
    inner = [
        (
            cx + (radius - 4) * (math.cos(t) * rim[0] + math.sin(t) * dome[0]),
            cy + (radius - 4) * (math.cos(t) * rim[1] + math.sin(t) * dome[1]),
        )
        for t in np.linspace(math.pi, 0, 60)
    ]
    film.polygon(shell + inner, 2.5)
    film.band(lm["shaft_top_l"], lm["shaft_bottom_l"], 12.0, 1.8)  # the stem, down the shaft axis
    film.band((cx, cy), lm["shaft_top_l"], 10.0, 1.8)  # its neck
    _draw_marker(film)
    return film.stored_values(seed=7)


def _long_leg_pixels() -> np.ndarray:
    p = LONG_LEG
    film = _Film(p)
    lm = p.landmarks
    for side in ("r", "l"):
        hip, knee, ankle = lm[f"hip_{side}"], lm[f"knee_{side}"], lm[f"ankle_{side}"]
        film.band((hip[0], 40.0), (knee[0], knee[1]), 150.0, 0.25)  # thigh
        film.band((knee[0], knee[1]), (ankle[0], 1100.0), 110.0, 0.25)  # calf
        film.sphere_mm(hip, 24.0, 0.012)
        film.band(_along(hip, 0, 40.0), _along(knee, 180.0, 30.0), 28.0, 0.6)  # femoral shaft
        film.polygon(
            [
                lm[f"condyle_lateral_{side}"],
                lm[f"condyle_medial_{side}"],
                (lm[f"condyle_medial_{side}"][0], knee[1] - 40),
                (lm[f"condyle_lateral_{side}"][0], knee[1] - 40),
            ],
            0.55,
        )
        film.polygon(
            [
                lm[f"plateau_lateral_{side}"],
                lm[f"plateau_medial_{side}"],
                (lm[f"plateau_medial_{side}"][0] * 0.8 + knee[0] * 0.2, knee[1] + 45),
                (lm[f"plateau_lateral_{side}"][0] * 0.8 + knee[0] * 0.2, knee[1] + 45),
            ],
            0.55,
        )
        film.band(_along(knee, 0, 40.0), ankle, 24.0, 0.6)  # tibial shaft
        film.ellipse(ankle, 16.0, 12.0, 0.6)  # talar dome
    _draw_marker(film)
    return film.stored_values(seed=11)


# -- DICOM ------------------------------------------------------------------------------------


def _dataset(
    phantom: RadiographPhantom,
    pixels: np.ndarray,
    series_number: int,
    description: str,
    body_part: str,
    view: str,
) -> FileDataset:
    study_uid = derived_uid("orthopedics", "study", ACCESSION)
    series_uid = derived_uid("orthopedics", "series", ACCESSION, series_number)
    sop_uid = derived_uid("orthopedics", "instance", series_uid, 1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = STUDY_TIME
    ds.SeriesTime = ds.ContentTime = f"10{15 + series_number:02d}00"
    ds.AccessionNumber = ACCESSION
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Tessera Sample Data"
    ds.ManufacturerModelName = "Orthopedic Phantom"
    ds.InstitutionName = "Tessera Teaching Hospital"
    ds.ReferringPhysicianName = "Ortho^Referrer"
    ds.StudyDescription = "XR PELVIS AND LONG LEG FOR PLANNING"
    ds.SeriesDescription = description
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    ds.PatientOrientation = ["R", "F"]  # image rows run to the patient's left, columns to the feet
    ds.ImageLaterality = "B"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.ImagerPixelSpacing = [phantom.imager_pixel_spacing_mm, phantom.imager_pixel_spacing_mm]
    ds.EstimatedRadiographicMagnificationFactor = phantom.magnification
    ds.DistanceSourceToDetector = 1150.0 if phantom.name == "pelvis" else 3000.0
    ds.DistanceSourceToPatient = round(ds.DistanceSourceToDetector / phantom.magnification, 1)
    ds.KVP = 75 if phantom.name == "pelvis" else 85
    ds.WindowCenter = 2000
    ds.WindowWidth = 3600
    ds.VOILUTFunction = "LINEAR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = pixels.tobytes()
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return ds


def _build_pelvis() -> FileDataset:
    return _dataset(PELVIS, _pelvis_pixels(), 1, "AP PELVIS", "PELVIS", "AP")


def _build_long_leg() -> FileDataset:
    ds = _dataset(LONG_LEG, _long_leg_pixels(), 2, "AP LONG LEG STANDING", "LEG", "AP")
    spacing = round(LONG_LEG.patient_pixel_spacing_mm, 6)
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "source-to-object distance from the stand geometry"
    return ds


@functools.cache
def _encoded(name: str) -> bytes:
    """The Part-10 bytes of one phantom, built once per process (drawing and JPEG 2000 take seconds,
    and the output is deterministic)."""
    ds = _build_pelvis() if name == "pelvis" else _build_long_leg()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pelvis_dataset() -> FileDataset:
    """The AP pelvis: ImagerPixelSpacing + magnification factor, no PixelSpacing (a fresh copy)."""
    return dcmread(io.BytesIO(_encoded("pelvis")))


def long_leg_dataset() -> FileDataset:
    """The standing long-leg film: PixelSpacing calibrated by geometry (= imager ÷ magnification)."""
    return dcmread(io.BytesIO(_encoded("long_leg")))


def write_orthopedics_demo(out_dir: Path) -> list[Path]:
    """Write the pelvis and long-leg radiographs under ``out_dir``; returns their paths."""
    folder = Path(out_dir) / PATIENT[1] / ACCESSION
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, description in (("pelvis", "01-DX-AP_PELVIS"), ("long_leg", "02-DX-AP_LONG_LEG_STANDING")):
        path = folder / f"{description}.dcm"
        path.write_bytes(_encoded(name))
        paths.append(path)
    return paths


# -- DICOM Generic Implant Template -----------------------------------------------------------

GENERIC_IMPLANT_TEMPLATE_STORAGE = "1.2.840.10008.5.1.4.43.1"
HPGL_UNITS_PER_MM = 40  # HPGL plots on a 25 µm grid (PS3.3 C.29.1.2.1.1)
GIT_DRAWING_ORIGIN_MM = (100.0, 100.0)  # printed-page position of the cup's centre (HPGL has no negatives)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def hemispherical_cup_hpgl(outer_diameter_mm: float, segments: int = 90) -> bytes:
    """A cup's AP outline as HPGL at 1:1: the dome (semicircle above the centre, y up on paper)
    closed by the rim line, and the liner's bearing circle (CI) with a second pen."""
    ox, oy = (v * HPGL_UNITS_PER_MM for v in GIT_DRAWING_ORIGIN_MM)
    radius = outer_diameter_mm / 2 * HPGL_UNITS_PER_MM
    dome = [
        (
            round(ox + radius * math.cos(math.pi * k / segments)),
            round(oy + radius * math.sin(math.pi * k / segments)),
        )
        for k in range(segments + 1)
    ]
    first = dome[0]
    pen_down = ",".join(f"{x},{y}" for x, y in [*dome[1:], first])
    inner = round((outer_diameter_mm / 2 - 8.0) * HPGL_UNITS_PER_MM)
    return f"IN;SP1;PA;PU{first[0]},{first[1]};PD{pen_down};PU;SP2;PU{round(ox)},{round(oy)};CI{inner};PU;SP0;".encode(
        "ascii"
    )


def generic_implant_template(
    outer_diameter_mm: float = 52.0,
    *,
    manufacturer: str = "Tessera Generic Implants",
    implant_name: str = "Hemispherical press-fit cup",
    hpgl: bytes | None = None,
    scaling: float = 1.0,
) -> FileDataset:
    """A Generic Implant Template instance for one cup size: AP drawing in HPGL at 1:1 scale
    (``scaling`` is HPGL Document Scaling, real mm per printed mm), the centre of rotation as a
    planning landmark. ``hpgl`` replaces the drawing (tests pass malformed documents)."""
    size = f"{outer_diameter_mm:g}"
    sop_uid = derived_uid("orthopedics", "git", manufacturer, implant_name, size)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = GENERIC_IMPLANT_TEMPLATE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = GENERIC_IMPLANT_TEMPLATE_STORAGE
    ds.SOPInstanceUID = sop_uid
    # The archive files every instance under a patient/study/series; templates get their own.
    ds.PatientName, ds.PatientID = "Implant^Templates", "TESSERA-GIT"
    ds.StudyInstanceUID = derived_uid("orthopedics", "git-study", manufacturer)
    ds.SeriesInstanceUID = derived_uid("orthopedics", "git-series", manufacturer, implant_name)
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(outer_diameter_mm)
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    ds.Manufacturer = manufacturer
    ds.ImplantName = implant_name
    ds.ImplantSize = size
    ds.ImplantPartNumber = f"CUP-{size}"
    ds.ImplantTemplateVersion = "1"
    ds.ImplantType = "ORIGINAL"
    ds.EffectiveDateTime = f"{STUDY_DATE}000000"
    ds.FrameOfReferenceUID = derived_uid("orthopedics", "git-frame", sop_uid)
    ds.ImplantTargetAnatomySequence = [Dataset()]
    ds.ImplantTargetAnatomySequence[0].AnatomicRegionSequence = [_code("T-15710", "SRT", "Hip joint")]
    ds.ImplantTypeCodeSequence = [_code("ACETABULAR-CUP", "99TESSERA", "Acetabular cup")]
    document = Dataset()
    document.HPGLDocumentID = 1
    document.HPGLDocumentLabel = "AP"
    document.ViewOrientationCodeSequence = [_code("R-10206", "SRT", "frontal")]
    document.HPGLDocumentScaling = scaling
    raw = hpgl if hpgl is not None else hemispherical_cup_hpgl(outer_diameter_mm)
    document.HPGLDocument = raw + b"\0" * (len(raw) % 2)  # OB: even length
    document.HPGLContourPenNumber = 1
    pens = []
    for number, label in ((1, "shell"), (2, "bearing")):
        pen = Dataset()
        pen.HPGLPenNumber, pen.HPGLPenLabel = number, label
        pens.append(pen)
    document.HPGLPenSequence = pens
    ds.HPGLDocumentSequence = [document]
    landmark = Dataset()
    landmark.PlanningLandmarkID = 1
    landmark.PlanningLandmarkDescription = "centre of rotation"
    landmark.PlanningLandmarkIdentificationCodeSequence = []
    point = Dataset()
    point.ReferencedHPGLDocumentID = 1
    point.TwoDPointCoordinates = list(GIT_DRAWING_ORIGIN_MM)  # printed-page mm
    landmark.TwoDPointCoordinatesSequence = [point]
    ds.PlanningLandmarkPointSequence = [landmark]
    return ds
