"""One policy for DICOM input that is non-conformant but still usable.

Like pydicom's ``config.settings.reading_validation_mode``: ``IGNORE`` uses such input silently,
``WARN`` (the default) uses it and records a QC note (logged, and kept on the selection or
volume), ``RAISE`` rejects the study with the reason code of the problem.

Cases the policy governs (anything else is either conformant or unusable):

* Modality (0008,0060) missing while the SOP Class is a CT image storage class: treated as CT.
* Rescale Slope/Intercept missing on a CT image: slope 1, intercept 0 assumed.
* Slice Thickness missing: the slice spacing measured from the positions is used instead.
* Lossy-compressed pixel data (Lossy Image Compression ``01``): used as is.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from pipeline.errors import ReasonCode, StudyError

log = logging.getLogger(__name__)

CT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)


class Policy(StrEnum):
    """What to do with non-conformant but usable input."""

    IGNORE = "IGNORE"
    WARN = "WARN"
    RAISE = "RAISE"


DEFAULT_POLICY = Policy.WARN


def tolerate(policy: Policy | str, reason: ReasonCode, message: str, notes: list[str], *, stage: str) -> None:
    """Apply ``policy`` to one non-conformance: note it, ignore it, or raise ``StudyError(reason)``."""
    policy = Policy(policy)
    if policy is Policy.RAISE:
        raise StudyError(reason, f"{message} (policy RAISE; use WARN to accept it)", stage=stage)
    if policy is Policy.WARN:
        log.warning("%s: %s", stage, message)
        notes.append(message)
