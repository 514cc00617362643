"""The screening job's configuration: one validated model, from YAML plus CLI overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from export.networks import CLASSIFIER_NAME, DETECTOR_NAME
from pipeline.analysis import CANDIDATE_THRESHOLD, DETECTOR_SCORE_WEIGHT, AnalysisConfig
from pipeline.errors import LungscreenError
from pipeline.triage import REPORT_THRESHOLD, SUSPICIOUS_MALIGNANCY, TriageConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TritonSettings(_Section):
    """How workers talk to Triton."""

    url: str | None = Field(None, description="gRPC host:port; None starts a local server (CPU profile)")
    detector: str = DETECTOR_NAME
    classifier: str = CLASSIFIER_NAME
    detector_version: str = ""  # "" = the latest version the server has
    classifier_version: str = ""
    request_timeout_s: float = Field(120.0, gt=0)
    ready_timeout_s: float = Field(180.0, gt=0)
    retries: int = Field(4, ge=0)
    backoff_s: float = Field(0.5, gt=0)
    in_flight: int = Field(4, ge=1, description="concurrent requests per study")
    max_message_mb: int = Field(256, ge=4)


class AnalysisSettings(_Section):
    """Candidate extraction and batching."""

    candidate_threshold: float = Field(CANDIDATE_THRESHOLD, gt=0, lt=1)
    max_candidates: int = Field(32, ge=1)
    detector_batch: int = Field(4, ge=1)
    classifier_batch: int = Field(8, ge=1)
    lung_gate: bool = Field(True, description="keep detections only in the (grown) lung mask")
    detector_score_weight: float = Field(
        DETECTOR_SCORE_WEIGHT,
        ge=0,
        le=1,
        description="detector weight of a finding's log-odds score (analysis.finding_score)",
    )

    def to_runtime(self, in_flight: int) -> AnalysisConfig:
        return AnalysisConfig(in_flight=in_flight, **self.model_dump())


class TriageSettings(_Section):
    """Which findings are reported and when malignancy counts as a suspicious feature."""

    report_threshold: float = Field(REPORT_THRESHOLD, gt=0, lt=1)
    suspicious_malignancy: float = Field(SUSPICIOUS_MALIGNANCY, gt=0, le=1)

    def to_runtime(self) -> TriageConfig:
        return TriageConfig(**self.model_dump())


class DaskSettings(_Section):
    """The local cluster (ignored with --scheduler)."""

    n_workers: int | None = Field(None, ge=1, description="None: one per core")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "auto"
    max_in_flight: int | None = Field(None, ge=1, description="studies in flight; None: 2 per worker")


class SinkSettings(_Section):
    """What is written, and how often."""

    part_size: int = Field(25, ge=1, description="studies per Parquet part file")
    worklist_jsonl: bool = True


class JobConfig(_Section):
    """Everything a screening run needs besides its source and destination."""

    triton: TritonSettings = TritonSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    triage: TriageSettings = TriageSettings()
    dask: DaskSettings = DaskSettings()
    sinks: SinkSettings = SinkSettings()
    selection_rules: Path | None = Field(None, description="YAML rule set; None: the screening default")


class ConfigError(LungscreenError):
    """The configuration is invalid; the message lists every problem."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, recursively; ``None`` in ``override`` means "not given"."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read YAML (if any), apply nested overrides (CLI flags), validate once."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"Cannot read the job configuration {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level.")
    try:
        return JobConfig.model_validate(_merge(raw, overrides or {}))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"Invalid job configuration: {problems}") from None
