"""Triage: from a study's findings to a risk, a suggested Lung-RADS category, emphysema and a
short explanation; and across a run, a priority order for the radiologist's worklist.

Suggestions only: the categories follow ``pipeline.lungrads`` from measured size and predicted
type; models trained on synthetic data make every figure here a research output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from export.spec import ModelSpec
from pipeline.analysis import Finding
from pipeline.lungrads import NOT_SCREENABLE, nodule_category, study_category
from pipeline.preprocess import Preprocessed, lung_mask

# What a radiologist should read first: suspicious categories, then incomplete exams (which
# need a recall), then benign-appearing ones.
PRIORITY_ORDER = ("4X", "4B", "4A", "3", "0", "2", "1")
LAA_THRESHOLD_HU = -950.0
# Above this fraction of the lung below -950 HU, emphysema is reported as an incidental finding.
EMPHYSEMA_REPORT_FRACTION = 0.05
SUSPICIOUS_MALIGNANCY = 0.9
# The committed models' operating point of 1 false positive per scan on their tuning cohort
# (tuning.report_threshold in model_repository/lung_nodule_detector/evaluation.json), rounded
# down to 0.001 so that cohort's own 1 FP/scan finding is still reported.
REPORT_THRESHOLD = 0.971
# A first or last slice holding more lung than this share of the widest slice cuts the lungs.
CUT_LUNG_AREA_FRACTION = 0.15


@dataclass(frozen=True)
class TriageConfig:
    """Which candidates count as findings and when a malignancy looks suspicious."""

    report_threshold: float = REPORT_THRESHOLD
    suspicious_malignancy: float = SUSPICIOUS_MALIGNANCY


@dataclass(frozen=True)
class ReportedFinding:
    """A finding above the report threshold, with its suggested category."""

    finding: Finding
    category: str


@dataclass(frozen=True)
class Triage:
    """The study-level result."""

    findings: tuple[ReportedFinding, ...]
    category: str
    risk: float
    laa950: float
    complete: bool
    explanation: str


def laa950(pre: Preprocessed, spec: ModelSpec) -> float:
    """Fraction of lung voxels below -950 HU (LAA-950), from the model-space image."""
    low, high = spec.hu_window
    mask, step = lung_mask(pre, spec)
    if not mask.any():
        return float("nan")
    level = (LAA_THRESHOLD_HU - low) / (high - low)
    sub = pre.array[::step, ::step, ::step][: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    return float((sub[mask] < level).mean())


def lungs_covered(pre: Preprocessed, spec: ModelSpec) -> bool:
    """False when the lungs are cut by the first or last slice of the series.

    The mask includes the trachea, which always leaves through the top slice, so a slice is
    "cut" only when its lung area is a sizeable share of the widest slice's.
    """
    mask, _ = lung_mask(pre, spec)
    if not mask.any():
        return False
    area = mask.sum(axis=(0, 1)).astype(np.float64)
    return max(area[0], area[-1]) < CUT_LUNG_AREA_FRACTION * area.max()


def triage_study(
    findings: Sequence[Finding], laa: float, complete: bool, kernel: str, cfg: TriageConfig = TriageConfig()
) -> Triage:
    """Risk, category and explanation of one screened study."""
    reported = tuple(
        ReportedFinding(
            f,
            nodule_category(
                f.nodule_type,
                f.diameter_mm,
                f.solid_diameter_mm,
                suspicious=f.malignancy >= cfg.suspicious_malignancy,
            ),
        )
        for f in findings
        if f.score >= cfg.report_threshold
    )
    category = study_category(r.category for r in reported) if complete else NOT_SCREENABLE
    # Probability that at least one reported finding is a malignant nodule.
    risk = 1.0 - float(np.prod([1.0 - r.finding.malignancy * r.finding.nodule_probability for r in reported]))
    return Triage(reported, category, risk, laa, complete, explain(reported, laa, complete, kernel))


def explain(reported: Sequence[ReportedFinding], laa: float, complete: bool, kernel: str) -> str:
    """A one-line reason a person can read: the most suspicious finding first."""
    parts = []
    if not complete:
        parts.append("lungs not fully covered by the series: Lung-RADS 0 (incomplete)")
    if reported:
        top = max(reported, key=lambda r: (PRIORITY_ORDER[::-1].index(r.category), r.finding.malignancy))
        f = top.finding
        parts.append(
            f"{f.diameter_mm:.0f} mm {f.nodule_type.replace('_', '-')} nodule, {f.region}, "
            f"malignancy {f.malignancy:.2f}, Lung-RADS {top.category}"
        )
        if len(reported) > 1:
            parts.append(f"{len(reported) - 1} more nodule(s)")
    elif complete:
        parts.append("no nodule found")
    if laa == laa and laa >= EMPHYSEMA_REPORT_FRACTION:
        note = " (sharp kernel inflates it)" if kernel == "sharp" else ""
        parts.append(f"emphysema LAA-950 {100 * laa:.0f}%{note}")
    return "; ".join(parts)


def priority_key(category: str, risk: float) -> tuple[int, float]:
    """Sort key: smaller reads first."""
    return (PRIORITY_ORDER.index(category), -risk)
