"""Presentation contexts: what Tessera accepts as an SCP and proposes as an SCU.

One list of storage SOP classes and transfer syntaxes for every role, so the
conformance statement, the SCP and the SCU cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    MPEG2MPHL,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP42STEREO,
    MPEG4HP422D,
    MPEG4HP423D,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from server.archive.archive import StoredInstance

NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# Every transfer syntax the archive stores as received (it never transcodes on the way in).
STORAGE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    JPEG2000MCLossless,
    JPEG2000MC,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    MPEG2MPML,
    MPEG2MPHL,
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP422D,
    MPEG4HP423D,
    MPEG4HP42STEREO,
    HEVCMP51,
    HEVCM10P51,
)

# pynetdicom's list covers the storage SOP classes of the current standard, including
# VL Whole Slide Microscopy, Breast Tomosynthesis, video (endoscopic, microscopic,
# photographic), waveforms (ECG and others), SR and the encapsulated documents.
STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(
    dict.fromkeys(UID(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax)
)

QUERY_RETRIEVE_SOP_CLASSES: tuple[UID, ...] = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)
VERIFICATION: UID = Verification

MAX_REQUESTED_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255


def offered_transfer_syntaxes(stored: str) -> list[UID]:
    """What to propose for an instance stored in ``stored``: its own syntax first.

    Native data sets can be re-encoded by pynetdicom, so both little-endian syntaxes are
    offered as a fallback; compressed ones are sent exactly as stored or not at all.
    """
    syntaxes = [UID(stored)]
    if UID(stored) in NATIVE_TRANSFER_SYNTAXES:
        syntaxes += [ts for ts in NATIVE_TRANSFER_SYNTAXES if ts != stored]
    return syntaxes


def storage_contexts_for(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """One context per (SOP class, stored transfer syntax) of the instances to send."""
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances)
    contexts = [build_context(sop_class, offered_transfer_syntaxes(syntax)) for sop_class, syntax in pairs]
    if len(contexts) > MAX_REQUESTED_CONTEXTS:
        raise ValueError(
            f"{len(contexts)} SOP class/transfer syntax combinations need more than "
            f"{MAX_REQUESTED_CONTEXTS} presentation contexts on one association"
        )
    return contexts


# What a retrieving SCU (C-GET) offers beside the native syntaxes, most common first: the SCP
# chooses one transfer syntax per context, so each compressed one needs a context of its own.
RETRIEVE_COMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    RLELossless,
    JPEG2000,
    JPEGLSLossless,
    DeflatedExplicitVRLittleEndian,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEGLossless,
    MPEG4HP41,
    HTJ2KLossless,
    HTJ2K,
    MPEG2MPML,
    HEVCMP51,
)


def retrieve_storage_contexts(
    sop_classes: Iterable[str], budget: int = MAX_REQUESTED_CONTEXTS - 1
) -> list[PresentationContext]:
    """Storage contexts for receiving over our own association (C-GET), within ``budget``."""
    classes = list(dict.fromkeys(sop_classes))[:budget]
    contexts = [build_context(uid, list(NATIVE_TRANSFER_SYNTAXES)) for uid in classes]
    for syntax in RETRIEVE_COMPRESSED_TRANSFER_SYNTAXES:
        for uid in classes:
            if len(contexts) >= budget:
                return contexts
            contexts.append(build_context(uid, [syntax]))
    return contexts
