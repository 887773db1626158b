"""Synthetic screening mammography for one patient at two time points, with tomosynthesis.

What :func:`write_mammography_demo` writes (all for patient ``Rivera^Elena``):

* current exam (2025-06-10): RCC, LCC, RMLO, LMLO Digital Mammography X-Ray Images For
  Presentation, 12-bit, sigmoid VOI with two window presets; a spiculated mass with
  microcalcifications in the left upper outer quadrant (seen on LCC and LMLO), marked by a
  Mammography CAD SR; a Breast
  Tomosynthesis Image of the LCC view (enhanced multi-frame, per-frame functional groups)
  and its synthesized 2D image.
* prior exam (2024-06-04): the same four views, linear VOI, no finding, and an LCC
  tomosynthesis stack so the viewer can scroll current and prior together.

Geometry follows the IHE Mammography Image profile: images are stored ready to display,
right breasts with the chest wall on the right edge (PatientOrientation ``P\\L`` / ``P\\F``),
left breasts with it on the left (``A\\R`` / ``A\\F``). Pixel values are what a
for-presentation detector gives: air dark, fat mid-grey, fibroglandular tissue and the
pectoral muscle bright, calcifications brightest. UIDs are derived from names, so runs
are byte-identical.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from sample_data.radiology import IMPLEMENTATION_CLASS_UID, Patient, Study, derived_uid

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
BREAST_TOMOSYNTHESIS = UID("1.2.840.10008.5.1.4.1.1.13.1.3")
MAMMOGRAPHY_CAD_SR = UID("1.2.840.10008.5.1.4.1.1.88.50")

RIVERA = Patient("Rivera^Elena", "TES-MG-0001", "19680412", "F", "ISO_IR 100")
CURRENT = Study(
    "20250610", "083000", "ACC-MG-2025", "MAMMOGRAPHY SCREENING BILATERAL WITH TOMOSYNTHESIS", "1"
)
PRIOR = Study("20240604", "091500", "ACC-MG-2024", "MAMMOGRAPHY SCREENING BILATERAL WITH TOMOSYNTHESIS", "1")

VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medial-lateral"),
    "XCCL": ("399192008", "cranio-caudal exaggerated laterally"),
}
MODIFIER_CODES = {
    "MAGNIFICATION": ("399163009", "Magnification"),
    "SPOT_COMPRESSION": ("399055006", "Spot Compression"),
}
ORIENTATION = {
    ("R", "CC"): ["P", "L"],
    ("L", "CC"): ["A", "R"],
    ("R", "MLO"): ["P", "F"],
    ("L", "MLO"): ["A", "F"],
}
IMAGER_PIXEL_SPACING_MM = 0.2  # at 1024 × 1280: a 205 × 256 mm detector
MAGNIFICATION_FACTOR = 1.07
AIR, FAT, DENSE, MUSCLE, CALCIFICATION = 180.0, 1350.0, 2500.0, 2900.0, 3900.0


@dataclass(frozen=True)
class Finding:
    """A lesion drawn into an exam: where (as a fraction of breast depth and height) and how big."""

    laterality: str
    depth: float  # 0 at the chest wall, 1 at the nipple
    height: float  # -1 .. 1 across the breast (negative: toward the top of the CC / MLO image)
    radius_mm: float


LEFT_UOQ_MASS = Finding("L", 0.55, -0.45, 7.0)


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, scales: tuple[int, ...]) -> np.ndarray:
    """Cloud-like texture: random grids at a few coarse resolutions, bicubically enlarged and summed."""
    h, w = shape
    total = np.zeros(shape, np.float32)
    for weight, cells in enumerate(scales, start=1):
        grid = rng.standard_normal((max(2, h // cells), max(2, w // cells))).astype(np.float32)
        total += np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BICUBIC)) / weight
    return total / np.abs(total).max()


def _breast_mask(shape: tuple[int, int], view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a breast with the chest wall on the right edge: (tissue 0..1, depth 0..1, height -1..1)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    reach = 0.78 * w  # nipple distance from the chest wall
    half = 0.40 * h if view == "CC" else 0.47 * h
    center_y = 0.5 * h if view == "CC" else 0.46 * h
    depth = (w - x) / reach
    height = (y - center_y) / half
    r = np.sqrt(depth**2 + height**2)
    tissue = np.clip((1.0 - r) * 40.0, 0.0, 1.0)  # soft skin edge, about 1 mm
    return tissue, depth, height


def breast_image(
    laterality: str,
    view: str,
    seed: int,
    shape: tuple[int, int] = (1280, 1024),
    finding: Finding | None = None,
    density: float = 0.55,
) -> np.ndarray:
    """A 12-bit for-presentation mammogram (rows, columns) of one view, chest wall on the IHE side."""
    rng = np.random.default_rng(seed)
    tissue, depth, height = _breast_mask(shape, view)
    texture = _smooth_noise(shape, rng, (64, 24, 8))
    glandular = np.clip(texture * 0.8 + density - 0.6 * np.abs(height) - 0.4 * depth, 0.0, 1.0)
    values = FAT + (DENSE - FAT) * glandular
    # Thinner tissue at the skin line lets more x-rays through: darker periphery.
    r = np.sqrt(depth**2 + height**2)
    values = values - 500.0 * np.clip(r - 0.8, 0.0, 0.2) / 0.2
    if view == "MLO":
        # The pectoral muscle: a bright triangle along the chest wall, widest at the top.
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        muscle = (w - xx) < 0.32 * w * (1.0 - yy / (0.62 * h))
        values = np.where(muscle, MUSCLE + 150.0 * texture, values)
        tissue = np.maximum(tissue, muscle.astype(np.float32))
    if finding is not None and finding.laterality == laterality:
        values = _draw_mass(values, depth, height, finding, shape, rng)
    values = AIR + (values - AIR) * tissue
    values += rng.normal(0.0, 18.0, shape).astype(np.float32)  # quantum noise
    image = np.clip(np.rint(values), 0, 4095).astype(np.uint16)
    return image if laterality == "R" else np.ascontiguousarray(image[:, ::-1])


def _draw_mass(
    values: np.ndarray,
    depth: np.ndarray,
    height: np.ndarray,
    finding: Finding,
    shape: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """A spiculated mass (irregular, with radiating lines) and a cluster of fine calcifications."""
    h, w = shape
    cy = round(0.5 * h + finding.height * 0.4 * h)
    cx = round(w - finding.depth * 0.78 * w)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = y - cy, x - cx
    radius = finding.radius_mm / IMAGER_PIXEL_SPACING_MM
    angle = np.arctan2(dy, dx)
    wobble = 1.0 + 0.18 * np.sin(5 * angle) + 0.1 * np.sin(11 * angle + 1.3)
    distance = np.sqrt(dx**2 + dy**2) / (radius * wobble)
    mass = np.clip(1.4 - distance, 0.0, 1.0)
    spicules = np.zeros(shape, np.float32)
    for theta in rng.uniform(0, 2 * np.pi, 14):
        along = dx * np.cos(theta) + dy * np.sin(theta)
        across = np.abs(-dx * np.sin(theta) + dy * np.cos(theta))
        spicules += ((along > 0) & (along < radius * 2.6) & (across < 1.3)).astype(np.float32)
    values = values + 1100.0 * mass + 450.0 * np.clip(spicules, 0, 1)
    for _ in range(9):
        py = int(cy + rng.normal(0, radius * 0.5))
        px = int(cx + rng.normal(0, radius * 0.5))
        if 1 <= py < h - 2 and 1 <= px < w - 2:
            values[py : py + 2, px : px + 2] = CALCIFICATION
    return values


def _skeleton(
    sop_class_uid: UID,
    study: Study,
    series_number: int,
    series_description: str,
    instance_number: int,
    image_type: list[str],
) -> FileDataset:
    patient = RIVERA
    series_uid = derived_uid("mg-series", study.uid_for(patient), series_number)
    sop_uid = derived_uid("mg-instance", series_uid, instance_number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = patient.specific_character_set
    ds.ImageType = image_type
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = ds.ContentTime = f"{int(study.time[:2]):02d}{series_number:02d}00"
    ds.AccessionNumber = study.accession_number
    ds.Modality = "MG"
    ds.Manufacturer = "Tessera Sample Data"
    ds.ManufacturerModelName = "Phantom MG"
    ds.InstitutionName = "Tessera Breast Center"
    ds.ReferringPhysicianName = "Okoye^Adaeze^^Dr."
    ds.StudyDescription = study.description
    ds.SeriesDescription = series_description
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{int(study.date[:4]) - int(patient.birth_date[:4]):03d}Y"
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = study.uid_for(patient)
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.BurnedInAnnotation = "NO"
    return ds


def _view_code(view: str, modifiers: tuple[str, ...] = ()) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodeMeaning = VIEW_CODES[view]
    code.CodingSchemeDesignator = "SCT"
    code.ViewModifierCodeSequence = []
    for name in modifiers:
        modifier = Dataset()
        modifier.CodeValue, modifier.CodeMeaning = MODIFIER_CODES[name]
        modifier.CodingSchemeDesignator = "SCT"
        code.ViewModifierCodeSequence.append(modifier)
    return code


def _grayscale_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    if pixels.ndim == 2:
        del ds.NumberOfFrames


def _voi(ds: Dataset, sigmoid: bool) -> None:
    ds.WindowCenter = [2100, 2400]
    ds.WindowWidth = [2600, 1400]
    ds.WindowCenterWidthExplanation = ["STANDARD", "DENSE"]
    ds.VOILUTFunction = "SIGMOID" if sigmoid else "LINEAR"


def mammogram(
    study: Study,
    laterality: str,
    view: str,
    series_number: int,
    *,
    seed: int,
    shape: tuple[int, int] = (1280, 1024),
    finding: Finding | None = None,
    sigmoid: bool = False,
    modifiers: tuple[str, ...] = (),
) -> FileDataset:
    """One Digital Mammography X-Ray Image For Presentation with the Mammography and Breast View modules."""
    ds = _skeleton(
        DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
        study,
        series_number,
        f"{laterality}{view}",
        1,
        ["ORIGINAL", "PRIMARY", ""],
    )
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
    ds.ViewPosition = view
    ds.ViewCodeSequence = [_view_code(view, modifiers)]
    ds.PatientOrientation = ORIENTATION[(laterality, view if view in ("CC", "MLO") else "MLO")]
    ds.ImagerPixelSpacing = [IMAGER_PIXEL_SPACING_MM, IMAGER_PIXEL_SPACING_MM]
    ds.EstimatedRadiographicMagnificationFactor = MAGNIFICATION_FACTOR
    ds.DistanceSourceToDetector = 660.0
    ds.DistanceSourceToPatient = round(660.0 / MAGNIFICATION_FACTOR, 1)
    ds.BodyPartThickness = 52
    ds.CompressionForce = 110
    ds.KVP = 29
    ds.Exposure = 72
    ds.AnodeTargetMaterial = "TUNGSTEN"
    ds.FilterMaterial = "RHODIUM"
    ds.PositionerPrimaryAngle = 0 if view == "CC" else (45 if laterality == "R" else -45)
    ds.BreastImplantPresent = "NO"
    ds.OrganExposed = "BREAST"
    ds.QualityControlImage = "NO"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    _voi(ds, sigmoid)
    _grayscale_pixels(ds, breast_image(laterality, view, seed, shape, finding))
    return ds


def tomosynthesis(
    study: Study,
    laterality: str,
    view: str,
    series_number: int,
    *,
    seed: int,
    slices: int = 24,
    shape: tuple[int, int] = (640, 512),
    finding: Finding | None = None,
    functional_groups: bool = True,
) -> tuple[FileDataset, np.ndarray]:
    """A Breast Tomosynthesis Image (enhanced multi-frame) and the slices it holds.

    Each slice keeps the breast outline and varies the glandular texture with depth; a
    finding is in focus on the middle slices only, as in a real reconstruction.
    """
    base = breast_image(laterality, view, seed, shape, None).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    stack = np.empty((slices, *shape), np.uint16)
    lesion = (
        breast_image(laterality, view, seed, shape, finding).astype(np.float32) - base if finding else None
    )
    tissue = base > AIR + 100
    for i in range(slices):
        z = (i - (slices - 1) / 2) / ((slices - 1) / 2)  # -1 .. 1 through the compressed breast
        texture = _smooth_noise(shape, rng, (32, 10))
        if laterality == "L":
            texture = texture[:, ::-1]
        slice_values = base + 260.0 * texture * tissue
        if lesion is not None:
            slice_values += lesion * float(np.exp(-((z / 0.25) ** 2)))
        stack[i] = np.clip(np.rint(slice_values), 0, 4095).astype(np.uint16)
    ds = _skeleton(
        BREAST_TOMOSYNTHESIS,
        study,
        series_number,
        f"{laterality}{view} Tomosynthesis",
        1,
        ["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"],
    )
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewCodeSequence = [_view_code(view)]
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
    ds.PatientOrientation = ORIENTATION[(laterality, view)]
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.EstimatedRadiographicMagnificationFactor = MAGNIFICATION_FACTOR
    ds.FrameOfReferenceUID = derived_uid("mg-frame-of-reference", ds.SeriesInstanceUID)
    ds.ContentQualification = "PRODUCT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "TOMOSYNTHESIS"
    _voi(ds, sigmoid=False)
    spacing_mm = 52.0 / slices
    if functional_groups:
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = [0.4 / MAGNIFICATION_FACTOR, 0.4 / MAGNIFICATION_FACTOR]
        measures.SliceThickness = 1.0
        measures.SpacingBetweenSlices = round(spacing_mm, 4)
        shared.PixelMeasuresSequence = [measures]
        anatomy = Dataset()
        anatomy.FrameLaterality = laterality
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "76752008", "SCT", "Breast"
        anatomy.AnatomicRegionSequence = [region]
        shared.FrameAnatomySequence = [anatomy]
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 2100, 2600
        voi.VOILUTFunction = "LINEAR"
        shared.FrameVOILUTSequence = [voi]
        ds.SharedFunctionalGroupsSequence = [shared]
        per_frame = []
        for i in range(slices):
            group = Dataset()
            content = Dataset()
            content.StackID = "1"
            content.InStackPositionNumber = i + 1
            content.DimensionIndexValues = [i + 1]
            group.FrameContentSequence = [content]
            position = Dataset()
            position.ImagePositionPatient = [0.0, 0.0, round(i * spacing_mm, 4)]
            group.PlanePositionSequence = [position]
            per_frame.append(group)
        ds.PerFrameFunctionalGroupsSequence = per_frame
    _grayscale_pixels(ds, stack)
    return ds, stack


def synthesized_2d(study: Study, tomo: FileDataset, stack: np.ndarray, series_number: int) -> FileDataset:
    """The synthesized 2D mammogram generated from a stack (MIP of structure, mean of the background)."""
    laterality, view = str(tomo.ImageLaterality), str(tomo.ViewPosition)
    ds = _skeleton(
        DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
        study,
        series_number,
        f"{laterality}{view} Synthesized 2D",
        1,
        ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"],
    )
    for keyword in (
        "PresentationIntentType",
        "ImageLaterality",
        "Laterality",
        "ViewPosition",
        "ViewCodeSequence",
        "PatientOrientation",
        "ImagerPixelSpacing",
        "EstimatedRadiographicMagnificationFactor",
    ):
        setattr(ds, keyword, tomo.get(keyword))
    ds.BreastImplantPresent = "NO"
    ds.OrganExposed = "BREAST"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    source = Dataset()
    source.ReferencedSOPClassUID = tomo.SOPClassUID
    source.ReferencedSOPInstanceUID = tomo.SOPInstanceUID
    ds.SourceImageSequence = [source]
    _voi(ds, sigmoid=True)
    values = 0.6 * stack.max(axis=0).astype(np.float32) + 0.4 * stack.mean(axis=0)
    _grayscale_pixels(ds, np.clip(np.rint(values), 0, 4095).astype(np.uint16))
    return ds


def mass_center(laterality: str, view: str, shape: tuple[int, int], finding: Finding) -> tuple[float, float]:
    """Where :func:`breast_image` draws a finding, as (column, row) in the stored image."""
    h, w = shape
    x = w - finding.depth * 0.78 * w
    y = 0.5 * h + finding.height * 0.4 * h
    return (x if laterality == "R" else w - 1 - x), y


def cad_sr(study: Study, images: list[FileDataset], finding: Finding, series_number: int = 80) -> FileDataset:
    """A Mammography CAD SR (TID 4000 shape) marking ``finding`` on the images of its breast."""
    import highdicom as hd

    def code(value: str, scheme: str, meaning: str) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)

    root = hd.sr.ContainerContentItem(
        name=code("111036", "DCM", "Mammography CAD Report"), template_id="4000"
    )
    library = hd.sr.ContainerContentItem(
        name=code("111028", "DCM", "Image Library"), relationship_type="CONTAINS"
    )
    library.ContentSequence = [
        hd.sr.ImageContentItem(
            name=code("260753009", "SCT", "Source"),
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type="CONTAINS",
        )
        for ds in images
    ]
    summary = hd.sr.CodeContentItem(
        name=code("111017", "DCM", "CAD Processing and Findings Summary"),
        value=code("111242", "DCM", "All algorithms succeeded; with findings"),
        relationship_type="CONTAINS",
    )
    findings = []
    for ds in images:
        if str(ds.ImageLaterality) != finding.laterality:
            continue
        shape = (int(ds.Rows), int(ds.Columns))
        x, y = mass_center(finding.laterality, str(ds.ViewPosition), shape, finding)
        radius = 1.6 * finding.radius_mm / IMAGER_PIXEL_SPACING_MM
        single = hd.sr.CodeContentItem(
            name=code("111059", "DCM", "Single Image Finding"),
            value=code("129788004", "SCT", "Mammographic breast mass"),
            relationship_type="INFERRED FROM",
        )
        center = hd.sr.ScoordContentItem(
            name=code("111010", "DCM", "Center"),
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=np.array([[x, y]]),
            relationship_type="HAS PROPERTIES",
        )
        outline = hd.sr.ScoordContentItem(
            name=code("111041", "DCM", "Outline"),
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array(
                [[x + radius * np.cos(t), y + radius * np.sin(t)] for t in np.linspace(0, 2 * np.pi, 13)]
            ),
            relationship_type="HAS PROPERTIES",
        )
        for scoord in (center, outline):
            scoord.ContentSequence = [
                hd.sr.ImageContentItem(
                    name=code("260753009", "SCT", "Source"),
                    referenced_sop_class_uid=ds.SOPClassUID,
                    referenced_sop_instance_uid=ds.SOPInstanceUID,
                    relationship_type="SELECTED FROM",
                )
            ]
        certainty = hd.sr.NumContentItem(
            name=code("111012", "DCM", "Certainty of Finding"),
            value=87,
            unit=code("%", "UCUM", "Percent"),
            relationship_type="HAS PROPERTIES",
        )
        single.ContentSequence = [center, outline, certainty]
        findings.append(single)
    summary.ContentSequence = findings
    root.ContentSequence = [library, summary]
    series_uid = derived_uid("mg-series", study.uid_for(RIVERA), series_number)
    sr = hd.sr.ComprehensiveSR(
        evidence=images,
        content=root,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=derived_uid("mg-instance", series_uid, 1),
        instance_number=1,
        manufacturer="Tessera Sample CAD",
        is_complete=True,
    )
    sr.SOPClassUID = MAMMOGRAPHY_CAD_SR
    sr.file_meta.MediaStorageSOPClassUID = MAMMOGRAPHY_CAD_SR
    sr.SeriesDescription = "Mammography CAD"
    sr.ContentDate, sr.ContentTime = study.date, study.time
    # As CAD systems usually write it, each Center points into the Image Library by reference
    # (ReferencedContentItemIdentifier: root 1, library 1, image n); Outlines keep the image by value.
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    plain = dcmread(io.BytesIO(buffer.getvalue()))
    library_index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(images, start=1)}
    for single in plain.ContentSequence[1].ContentSequence:
        center = single.ContentSequence[0]
        sop = str(center.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        reference = Dataset()
        reference.RelationshipType = "SELECTED FROM"
        reference.ReferencedContentItemIdentifier = [1, 1, library_index[sop]]
        center.ContentSequence = Sequence([reference])
    return plain
    return sr


def write_dataset(ds: FileDataset, out_dir: Path) -> Path:
    """Write under out_dir/PatientID/Accession/NN-description.dcm."""
    folder = Path(out_dir) / str(ds.PatientID) / str(ds.AccessionNumber)
    folder.mkdir(parents=True, exist_ok=True)
    name = str(ds.SeriesDescription).replace(" ", "_")
    path = folder / f"{int(ds.SeriesNumber):02d}-{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def screening_exam(
    study: Study,
    *,
    seed: int,
    shape: tuple[int, int] = (1280, 1024),
    finding: Finding | None = None,
    sigmoid: bool = False,
) -> list[FileDataset]:
    """The four screening views in acquisition order (RCC, LCC, RMLO, LMLO)."""
    views = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]
    return [
        mammogram(study, lat, view, n, seed=seed + n, shape=shape, finding=finding, sigmoid=sigmoid)
        for n, (lat, view) in enumerate(views, start=1)
    ]


def write_mammography_demo(
    out_dir: Path,
    shape: tuple[int, int] = (1280, 1024),
    tomo_shape: tuple[int, int] = (640, 512),
    slices: int = 24,
) -> list[Path]:
    """Current exam (with finding, its CAD SR, LCC tomosynthesis + synthesized 2D) and prior exam
    (LCC tomosynthesis, to scroll in step with the current one); the paths, current exam first."""
    datasets: list[FileDataset] = screening_exam(
        CURRENT, seed=2025, shape=shape, finding=LEFT_UOQ_MASS, sigmoid=True
    )
    tomo, stack = tomosynthesis(
        CURRENT, "L", "CC", 10, seed=3025, slices=slices, shape=tomo_shape, finding=LEFT_UOQ_MASS
    )
    datasets += [tomo, synthesized_2d(CURRENT, tomo, stack, 11)]
    datasets.append(cad_sr(CURRENT, datasets[:4], LEFT_UOQ_MASS))
    datasets += screening_exam(PRIOR, seed=2024, shape=shape)
    prior_tomo, _ = tomosynthesis(PRIOR, "L", "CC", 10, seed=3024, slices=slices, shape=tomo_shape)
    datasets.append(prior_tomo)
    return [write_dataset(ds, out_dir) for ds in datasets]
