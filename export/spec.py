"""A model's preprocessing and output contract: the single source of truth the job reads.

Export writes the spec into the model's Triton configuration as the ``lungscreen_spec``
parameter; the screening job reads it back from the server's model-config endpoint, so a
job can never preprocess for another model version than the one it calls.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

SPEC_PARAMETER = "lungscreen_spec"
SYNTHETIC_DATA_NOTICE = (
    "Trained on synthetic CT data only. Research software, not a medical device: not for clinical use."
)


class ModelTask(StrEnum):
    """What a model's output means."""

    NODULE_SEGMENTATION = "nodule_segmentation"
    CANDIDATE_CLASSIFICATION = "candidate_classification"


class TensorIO(BaseModel):
    """One named tensor of the network, without the batch axis."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    shape: tuple[int, ...]
    dtype: str = "FP32"
    meaning: str = ""

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(d < 1 for d in v):
            raise ValueError(f"shape must be positive integers, got {v}")
        return v


class ModelSpec(BaseModel):
    """Preprocessing (spacing, orientation, HU window, patch) and I/O of one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    task: ModelTask
    target_spacing_mm: tuple[float, float, float]
    orientation: str = "RAS"
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    patch_size: tuple[int, int, int]
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    classes: tuple[str, ...] = ()
    # Test-time mirroring: the model's output for a patch (or crop) is the mean of its logits
    # over these copies of it, each flipped along the listed spatial axes (0-2, in the spec's
    # orientation); a segmentation model's outputs are flipped back first. () is the input as it
    # is. Empty: one pass.
    test_time_flips: tuple[tuple[int, ...], ...] = ()
    training_data: str = "synthetic"
    notice: str = SYNTHETIC_DATA_NOTICE
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("target_spacing_mm")
    @classmethod
    def _spacing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"target spacing must be positive, got {v}")
        return v

    @field_validator("hu_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"HU window low must be below high, got {v}")
        return v

    @field_validator("test_time_flips")
    @classmethod
    def _flips(cls, v: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
        for axes in v:
            if len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
                raise ValueError(f"each test-time flip lists distinct spatial axes 0-2, got {axes}")
        if len(set(v)) != len(v):
            raise ValueError(f"test-time flips repeat: {v}")
        return v

    def to_parameter(self) -> str:
        """The spec as the compact JSON string stored in the Triton config."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_parameter(cls, text: str) -> ModelSpec:
        """Parse the JSON string from a Triton config's ``lungscreen_spec`` parameter."""
        return cls.model_validate_json(text)

    @classmethod
    def from_triton_config(cls, config: dict[str, Any]) -> ModelSpec:
        """Read the spec from a model config as Triton's HTTP/gRPC JSON returns it."""
        try:
            text = config["parameters"][SPEC_PARAMETER]["string_value"]
        except KeyError as e:
            raise ValueError(
                f"Model {config.get('name', '?')!r} has no {SPEC_PARAMETER!r} parameter: it was not "
                "exported by `lungscreen export`, so its preprocessing is unknown."
            ) from e
        return cls.from_parameter(text)
