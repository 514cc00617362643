"""Lung-RADS, triage, kernels: table-driven."""

from __future__ import annotations

import pytest

from pipeline.analysis import Finding
from pipeline.lungrads import nodule_category, study_category
from pipeline.study import classify_kernel
from pipeline.triage import TriageConfig, priority_key, triage_study

CATEGORY_CASES = (
    # type, diameter, solid part, juxtapleural smooth, suspicious, expected
    ("calcified", 20.0, 20.0, False, False, "1"),
    ("solid", 5.9, 5.9, False, False, "2"),
    ("solid", 6.0, 6.0, False, False, "3"),
    ("solid", 8.0, 8.0, False, False, "4A"),
    ("solid", 15.0, 15.0, False, False, "4B"),
    ("solid", 9.0, 9.0, True, False, "2"),
    ("solid", 9.0, 9.0, False, True, "4X"),
    ("solid", 5.0, 5.0, False, True, "2"),
    ("part_solid", 5.0, 2.0, False, False, "2"),
    ("part_solid", 12.0, 5.0, False, False, "3"),
    ("part_solid", 12.0, 7.0, False, False, "4A"),
    ("part_solid", 12.0, 9.0, False, False, "4B"),
    ("ground_glass", 29.9, 0.0, False, False, "2"),
    ("ground_glass", 30.0, 0.0, False, False, "3"),
)


@pytest.mark.parametrize(("kind", "d", "s", "jp", "susp", "expected"), CATEGORY_CASES)
def test_lungrads_thresholds(kind: str, d: float, s: float, jp: bool, susp: bool, expected: str) -> None:
    assert nodule_category(kind, d, s, juxtapleural_smooth=jp, suspicious=susp) == expected


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown nodule type"):
        nodule_category("cystic", 10, 10)


def test_study_category_is_the_most_suspicious() -> None:
    assert study_category([]) == "1"
    assert study_category(["2", "4A", "3"]) == "4A"


def _finding(d: float, kind: str = "solid", score: float = 0.9, malignancy: float = 0.5) -> Finding:
    return Finding(
        (10.0, 20.0, -30.0),
        d,
        d,
        0.5 * d**3,
        score,
        0.95,
        score,
        malignancy,
        kind,
        0.9,
        "right upper lung zone",
    )


def test_triage_reports_only_findings_above_threshold_and_explains() -> None:
    result = triage_study([_finding(12.0), _finding(4.0, score=0.2)], 0.12, True, "sharp", TriageConfig(0.5))
    assert [r.category for r in result.findings] == ["4A"]
    assert result.category == "4A"
    assert result.explanation.startswith(
        "12 mm solid nodule, right upper lung zone, malignancy 0.50, Lung-RADS 4A"
    )
    assert "LAA-950 12% (sharp kernel inflates it)" in result.explanation
    assert 0.0 < result.risk < 1.0


def test_incomplete_exam_is_category_zero() -> None:
    result = triage_study([], 0.0, False, "soft")
    assert result.category == "0"
    assert "incomplete" in result.explanation


def test_no_finding_is_category_one_and_says_so() -> None:
    result = triage_study([], 0.01, True, "soft")
    assert (result.category, result.risk, result.explanation) == ("1", 0.0, "no nodule found")


def test_priority_reads_suspicious_first_then_incomplete() -> None:
    order = sorted(
        [("1", 0.0), ("0", 0.0), ("4B", 0.3), ("4B", 0.9), ("2", 0.1)], key=lambda c: priority_key(*c)
    )
    assert order == [("4B", 0.9), ("4B", 0.3), ("0", 0.0), ("2", 0.1), ("1", 0.0)]


KERNELS = (
    ("B30f", "soft"), ("B60f", "sharp"), ("LUNG", "sharp"), ("STANDARD", "soft"), ("L", "sharp"),
    ("B", "soft"), ("FC52", "sharp"), ("FC08", "soft"), ("", "unknown"), (None, "unknown"),
)  # fmt: skip


@pytest.mark.parametrize(("kernel", "expected"), KERNELS)
def test_kernel_classes(kernel: str | None, expected: str) -> None:
    assert classify_kernel(kernel) == expected


def test_the_jobs_defaults_are_the_committed_models_tuned_operating_point() -> None:
    import json

    from pipeline.analysis import DETECTOR_SCORE_WEIGHT
    from pipeline.job import DEFAULT_REPOSITORY
    from pipeline.triage import REPORT_THRESHOLD

    evaluation = json.loads((DEFAULT_REPOSITORY / "lung_nodule_detector" / "evaluation.json").read_text())
    tuning = evaluation["tuning"]
    assert tuning is not None, (
        "the committed models' evaluation must have chosen its weight on the tuning cohort"
    )
    assert DETECTOR_SCORE_WEIGHT == tuning["score_weight"] == evaluation["score_weight"]
    # Rounded down, so the tuning cohort's own 1 FP/scan finding is still reported.
    assert REPORT_THRESHOLD <= tuning["report_threshold"] < REPORT_THRESHOLD + 0.001
