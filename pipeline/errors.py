"""The project's exception hierarchy and the stable reason codes of failed studies.

Reason codes are part of the output contract (the ``failures`` table, metrics labels,
the synthetic truth's expected outcomes): never rename one, only add.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    """Why a file or study could not be screened."""

    NOT_DICOM = "NOT_DICOM"
    UNREADABLE = "UNREADABLE"
    TRUNCATED_FILE = "TRUNCATED_FILE"
    DECODE_ERROR = "DECODE_ERROR"
    MISSING_UID = "MISSING_UID"
    NOT_CT = "NOT_CT"
    NO_SUITABLE_SERIES = "NO_SUITABLE_SERIES"
    THICK_SLICES = "THICK_SLICES"
    INSUFFICIENT_COVERAGE = "INSUFFICIENT_COVERAGE"
    MISSING_SLICES = "MISSING_SLICES"
    DUPLICATE_SLICES = "DUPLICATE_SLICES"
    NONUNIFORM_SPACING = "NONUNIFORM_SPACING"
    GANTRY_TILT = "GANTRY_TILT"
    MIXED_ORIENTATION = "MIXED_ORIENTATION"
    INFERENCE_ERROR = "INFERENCE_ERROR"
    TRITON_UNAVAILABLE = "TRITON_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class LungscreenError(Exception):
    """Base of every error this project raises on purpose."""


class StudyError(LungscreenError):
    """A study (or one of its files) cannot be screened, for a reason a person can act on.

    ``message`` is written for a person and never contains patient identifiers.
    """

    def __init__(self, reason: ReasonCode, message: str, *, stage: str = "", study: str = "") -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = ReasonCode(reason)
        self.message = message
        self.stage = stage
        self.study = study


class TritonError(LungscreenError):
    """Base of errors about the Triton server or talking to it."""


class ServerStartError(TritonError):
    """The local Triton server could not be started or did not become ready."""


class PortInUseError(ServerStartError):
    """A port asked for is already taken on this host."""


class ModelLoadError(ServerStartError):
    """One or more models failed to load; the message carries Triton's own reason."""

    def __init__(self, failures: dict[str, str], log_tail: str = "") -> None:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in sorted(failures.items()))
        super().__init__(f"Triton could not load {len(failures)} model(s):\n{lines}")
        self.failures = failures
        self.log_tail = log_tail


class ServerTimeoutError(ServerStartError):
    """The server did not become ready before its deadline."""


class SelectionError(StudyError):
    """No series of a study can be screened; ``rejected`` says why, per SeriesInstanceUID."""

    def __init__(
        self, reason: ReasonCode, message: str, *, rejected: dict[str, str], stage: str = "", study: str = ""
    ) -> None:
        super().__init__(reason, message, stage=stage, study=study)
        self.rejected = rejected
