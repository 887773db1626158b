"""What the archive tells the rest of the server after an instance is durably stored."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceStored:
    """Sent after the index commit; listeners run in the background, never inside ingest."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax_uid: str
    number_of_frames: int
