"""Writing VL Whole Slide Microscopy instances: one per pyramid level, plus label/overview/thumbnail.

Used by the slide converter (vendor file → DICOM WSI) and by the sample-data generator,
so both produce the same attributes. Frames are spooled to a temporary file first, so a
level of any size is written without holding its tiles in memory, and the offset table
(Basic, or Extended beyond 4 GiB) is known before the header is written.
"""

from __future__ import annotations

import datetime
import functools
import os
import struct
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage

IMPLEMENTATION_CLASS_UID = UID("2.25.224497393917437137335430096458373232937")
IMPLEMENTATION_VERSION_NAME = "TESSERA_WSI1"
_NAMESPACE = uuid.UUID("4f2d3c7e-5b0a-4c61-9f57-0a8e2d7c1b93")
ITEM = b"\xfe\xff\x00\xe0"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def uid_from(*parts: object) -> UID:
    """A stable 2.25 UID for a name (PS3.5 B.2): re-converting a slide gives the same UIDs."""
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, '/'.join(map(str, parts))).int}")


@dataclass(frozen=True)
class SlideIdentity:
    """Who and what a slide belongs to; parameters named after the DICOM attributes they fill."""

    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""
    study_id: str = "1"
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    series_instance_uid: str = ""
    series_number: int = 1
    series_description: str = ""
    container_identifier: str = ""  # the slide's barcode / label
    specimen_identifier: str = ""
    manufacturer: str = ""
    manufacturer_model_name: str = ""
    device_serial_number: str = ""
    objective_lens_power: float | None = None
    optical_path_description: str = "Brightfield"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def wsi_dataset(
    identity: SlideIdentity,
    instance_number: int,
    image_type: list[str],
    size: tuple[int, int],
    frame_size: tuple[int, int],
    number_of_frames: int,
    mpp: float | None,
) -> FileDataset:
    """The header of one WSI instance (everything but Pixel Data), TILED_FULL, JPEG baseline."""
    if not (identity.study_instance_uid and identity.series_instance_uid):
        raise ValueError("the identity needs Study and Series Instance UIDs")
    series_uid = identity.series_instance_uid
    sop_uid = uid_from("wsi-instance", series_uid, instance_number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    date = identity.study_date or now.strftime("%Y%m%d")
    time = identity.study_time or now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = image_type
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AcquisitionDateTime = date + time
    ds.AccessionNumber = identity.accession_number
    ds.Modality = "SM"
    ds.Manufacturer = identity.manufacturer
    ds.ManufacturerModelName = identity.manufacturer_model_name or "unknown"
    ds.DeviceSerialNumber = identity.device_serial_number or "unknown"
    ds.SoftwareVersions = "Tessera"
    ds.ReferringPhysicianName = identity.referring_physician_name
    ds.StudyDescription = identity.study_description
    ds.SeriesDescription = identity.series_description
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.patient_birth_date
    ds.PatientSex = identity.patient_sex
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = identity.study_id
    ds.SeriesNumber = identity.series_number
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = uid_from("wsi-frame-of-reference", series_uid)
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "YES" if "LABEL" in image_type else "NO"
    ds.BurnedInAnnotation = ds.SpecimenLabelInImage
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    container = identity.container_identifier or series_uid[-16:]
    ds.ContainerIdentifier = container
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = [_code("433466003", "SCT", "Microscope slide")]
    specimen = Dataset()
    specimen.SpecimenIdentifier = identity.specimen_identifier or container
    specimen.SpecimenUID = uid_from("specimen", series_uid, specimen.SpecimenIdentifier)
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.AcquisitionContextSequence = []
    ds.DimensionOrganizationType = "TILED_FULL"
    organization = Dataset()
    organization.DimensionOrganizationUID = uid_from("wsi-dimension-organization", series_uid)
    ds.DimensionOrganizationSequence = [organization]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = frame_size[1], frame_size[0]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = number_of_frames
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = size
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    shared = Dataset()
    if mpp:
        ds.ImagedVolumeWidth = round(size[0] * mpp / 1000, 6)
        ds.ImagedVolumeHeight = round(size[1] * mpp / 1000, 6)
        ds.ImagedVolumeDepth = 0.004
        measures = Dataset()
        measures.PixelSpacing = [round(mpp / 1000, 9), round(mpp / 1000, 9)]  # mm: rows, columns
        measures.SliceThickness = 0.004
        measures.SpacingBetweenSlices = 0.0
        shared.PixelMeasuresSequence = [measures]
    frame_type = Dataset()
    frame_type.FrameType = image_type
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    optical_id = Dataset()
    optical_id.OpticalPathIdentifier = "1"
    shared.OpticalPathIdentificationSequence = [optical_id]
    ds.SharedFunctionalGroupsSequence = [shared]
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.OpticalPathDescription = identity.optical_path_description
    path.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
    path.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
    if identity.objective_lens_power:
        path.ObjectiveLensPower = identity.objective_lens_power
    path.ICCProfile = _srgb_profile()
    ds.OpticalPathSequence = Sequence([path])
    return ds


@functools.cache
def _srgb_profile() -> bytes:
    """sRGB, with the header's creation date fixed so equal slides give byte-equal files."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)
    return bytes(profile)


def write_wsi_instance(path: Path, ds: FileDataset, frames: Iterable[bytes]) -> int:
    """Write ``ds`` with ``frames`` as encapsulated Pixel Data, one fragment per frame.

    Odd-length frames get the one pad byte DICOM requires. Returns the number of frames;
    NumberOfFrames in ``ds`` must match. The file appears atomically (temp + rename).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths: list[int] = []
    with tempfile.TemporaryFile(dir=path.parent) as spool:
        for frame in frames:
            padded = frame + b"\0" if len(frame) % 2 else frame
            spool.write(ITEM + struct.pack("<I", len(padded)) + padded)
            lengths.append(8 + len(padded))
        if len(lengths) != int(ds.NumberOfFrames):
            raise ValueError(f"{len(lengths)} frames written, NumberOfFrames says {ds.NumberOfFrames}")
        offsets = [0]
        for length in lengths[:-1]:
            offsets.append(offsets[-1] + length)
        if offsets[-1] + lengths[-1] < 2**32:
            table = struct.pack(f"<{len(offsets)}I", *offsets)
        else:  # beyond a Basic Offset Table's reach: an empty one and an Extended Offset Table
            ds.ExtendedOffsetTable = struct.pack(f"<{len(offsets)}Q", *offsets)
            ds.ExtendedOffsetTableLengths = struct.pack(f"<{len(lengths)}Q", *(n - 8 for n in lengths))
            table = b""
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".dcm.tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                ds.save_as(out, enforce_file_format=True)
                out.write(b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff")  # (7FE0,0010) OB, undefined length
                out.write(ITEM + struct.pack("<I", len(table)) + table)
                spool.seek(0)
                while chunk := spool.read(1 << 22):
                    out.write(chunk)
                out.write(SEQUENCE_DELIMITER)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    return len(lengths)
