"""One study through every stage, on a worker: select -> load -> preprocess -> infer -> triage.

:func:`screen_study` never raises: whatever happens, it returns one outcome, either a
``studies`` row (with its findings) or a ``failures`` row whose stage, reason code and message
say what went wrong. Messages never carry patient identifiers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from export.spec import ModelSpec
from pipeline.analysis import AnalysisConfig, ModelRunner, analyze
from pipeline.errors import ReasonCode, StudyError, TritonError
from pipeline.preprocess import preprocess, same_grid
from pipeline.select import DEFAULT_SCREENING_RULES, RuleSet, select_series
from pipeline.triage import TriageConfig, laa950, lungs_covered, triage_study
from pipeline.volume import load_volume

STAGES = ("select", "load", "preprocess", "inference", "postprocess", "triage", "total")
SHARP_KERNELS = frozenset({"L", "YA", "YB", "YC", "D"})
SHARP_WORDS = ("LUNG", "BONE", "SHARP", "DETAIL", "EDGE")
SHARP_PREFIXES = ("B6", "B7", "B8", "BR6", "BR7", "BL6", "BL7", "FC5", "FC8")


@dataclass(frozen=True)
class ModelContext:
    """What every study of a run shares: the models' contracts and versions, and the settings."""

    run_id: str
    detector: ModelSpec
    classifier: ModelSpec
    detector_version: str
    classifier_version: str
    analysis: AnalysisConfig
    triage: TriageConfig
    rules: RuleSet = DEFAULT_SCREENING_RULES


@dataclass
class StudyOutcome:
    """The rows one study contributes, and numbers for the driver's metrics."""

    study_key: str
    status: str  # "ok" or a reason code
    study_row: dict[str, Any] | None = None
    finding_rows: list[dict[str, Any]] = field(default_factory=list)
    failure_row: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    request_seconds: dict[str, list[float]] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)


def classify_kernel(kernel: str | None) -> str:
    """``sharp``, ``soft`` or ``unknown`` from a vendor's ConvolutionKernel.

    Recorded with every study because sharp (lung, bone) kernels inflate LAA-950. Known names:
    GE LUNG/BONE vs STANDARD/SOFT, Siemens B60f-B80f or Br6x+ vs B30f, Philips L/YA/YB vs B/C,
    Canon/Toshiba FC5x/FC8x vs FC0x.
    """
    k = (kernel or "").strip().upper()
    if not k:
        return "unknown"
    if k in SHARP_KERNELS or any(w in k for w in SHARP_WORDS) or k.startswith(SHARP_PREFIXES):
        return "sharp"
    return "soft"


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started


def _first(rows: Sequence[Mapping[str, Any]], key: str) -> Any:
    return next((r.get(key) for r in rows if r.get(key)), None)


def screen_study(
    study_key: str, rows: Sequence[Mapping[str, Any]], ctx: ModelContext, runner: ModelRunner
) -> StudyOutcome:
    """Screen one study from its index rows; always returns an outcome."""
    timings: dict[str, float] = {}
    uid = _first(rows, "StudyInstanceUID") if not study_key.startswith("nouid-") else None
    accession = _first(rows, "AccessionNumber")
    stage = "select"
    started = time.perf_counter()
    try:
        with _stage(timings, "select"):
            selection = select_series(rows, ctx.rules)
        chosen = [r for r in rows if r.get("SeriesInstanceUID") == selection.chosen]
        stage = "load"
        with _stage(timings, "load"):
            volume = load_volume(list(selection.files))
        stage = "preprocess"
        with _stage(timings, "preprocess"):
            pre = preprocess(volume, ctx.detector)
            volume_notes = volume.notes
            # The HU volume is the biggest object of a study: freed before inference unless the
            # classifier crops from it on a grid of its own.
            hu = None if same_grid(ctx.detector, ctx.classifier) else volume
            del volume
        stage = "inference"
        analysis = analyze(pre, ctx.detector, ctx.classifier, runner, ctx.analysis, hu)
        timings["inference"] = analysis.timings["detect"] + analysis.timings["classify"]
        timings["postprocess"] = analysis.timings["candidates"]
        stage = "triage"
        with _stage(timings, "triage"):
            kernel = classify_kernel(_first(chosen, "ConvolutionKernel"))
            result = triage_study(
                analysis.findings,
                laa950(pre, ctx.detector),
                lungs_covered(pre, ctx.detector),
                kernel,
                ctx.triage,
            )
    except StudyError as e:
        return _failure(ctx, study_key, uid, accession, e.stage or stage, e.reason, e.message, timings)
    except TritonError as e:
        reason = ReasonCode.TRITON_UNAVAILABLE if "unavailable" in str(e) else ReasonCode.INFERENCE_ERROR
        return _failure(ctx, study_key, uid, accession, stage, reason, str(e), timings)
    except Exception as e:  # the run must go on: an unexpected error is this study's failure
        message = f"unexpected {type(e).__name__} in stage {stage}; please report it with the run id"
        return _failure(ctx, study_key, uid, accession, stage, ReasonCode.INTERNAL_ERROR, message, timings)
    timings["total"] = time.perf_counter() - started
    reported = {id(r.finding): r.category for r in result.findings}
    findings = [
        {
            "run_id": ctx.run_id,
            "study_key": study_key,
            "study_instance_uid": uid,
            "finding_index": i,
            "reported": id(f) in reported,
            "center_x_mm": f.center_lps_mm[0],
            "center_y_mm": f.center_lps_mm[1],
            "center_z_mm": f.center_lps_mm[2],
            "diameter_mm": f.diameter_mm,
            "solid_diameter_mm": f.solid_diameter_mm,
            "volume_mm3": f.volume_mm3,
            "nodule_type": f.nodule_type,
            "type_probability": f.type_probability,
            "malignancy": f.malignancy,
            "nodule_probability": f.nodule_probability,
            "detector_score": f.detector_score,
            "score": f.score,
            "category": reported.get(id(f)),
            "region": f.region,
        }
        for i, f in enumerate(analysis.findings)
    ]
    study = {
        "run_id": ctx.run_id,
        "study_key": study_key,
        "study_instance_uid": uid,
        "accession_number": accession,
        "series_instance_uid": selection.chosen,
        "status": "ok",
        "category": result.category,
        "risk": result.risk,
        "priority": None,
        "complete": result.complete,
        "laa950": result.laa950,
        "kernel": kernel,
        "slice_thickness_mm": _first(chosen, "SliceThickness"),
        "n_findings": len(result.findings),
        "n_candidates": len(analysis.findings),
        "n_patches": analysis.patches,
        "explanation": result.explanation,
        "qc_notes": [*selection.notes, *volume_notes],
        "rejected_series": [f"{k or '(no uid)'}: {v}" for k, v in sorted(selection.rejected.items())],
        "detector_model": ctx.detector.name,
        "detector_version": ctx.detector_version,
        "classifier_model": ctx.classifier.name,
        "classifier_version": ctx.classifier_version,
        **{f"{k}_s": timings.get(k, 0.0) for k in STAGES},
        "model_data": ctx.detector.training_data,
    }
    return StudyOutcome(study_key, "ok", study_row=study, finding_rows=findings, timings=timings)


def _failure(
    ctx: ModelContext,
    study_key: str,
    uid: str | None,
    accession: str | None,
    stage: str,
    reason: ReasonCode,
    message: str,
    timings: dict[str, float],
) -> StudyOutcome:
    row = {
        "run_id": ctx.run_id,
        "scope": "study",
        "study_key": study_key,
        "study_instance_uid": uid,
        "accession_number": accession,
        "url": None,
        "stage": stage,
        "reason": str(reason),
        "message": message,
    }
    return StudyOutcome(study_key, str(reason), failure_row=row, timings=timings)
