"""Run tables (atomic parts, resume, ownership), job configuration, evaluation maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.dataset import TruthNodule
from export.evaluate import (
    Match,
    StudyFindings,
    StudyResult,
    choose_score_weight,
    froc_curve,
    roc_auc,
    sensitivity_at,
    summarize,
    summarize_at,
)
from pipeline.analysis import Finding, finding_score
from pipeline.config import ConfigError, load_config
from pipeline.tables import RunConflictError, RunWriter


def _study_row(key: str) -> dict[str, object]:
    return {"run_id": "r1", "study_key": key, "status": "ok", "category": "2", "risk": 0.1}


def _failure_row(key: str, scope: str = "study") -> dict[str, object]:
    return {
        "run_id": "r1",
        "scope": scope,
        "study_key": key,
        "stage": "load",
        "reason": "MISSING_SLICES",
        "message": "m",
    }


def test_parts_are_written_every_part_size_studies_and_read_back(tmp_path: Path) -> None:
    w = RunWriter(str(tmp_path), part_size=2)
    for key in ("a", "b", "c"):
        w.add("studies", [_study_row(key)])
        w.study_done()
    assert len(list((tmp_path / "parts").glob("studies-*.parquet"))) == 1  # "c" still buffered
    w.add("failures", [_failure_row("d")])
    w.study_done()
    assert sorted(w.read_parts("studies")["study_key"].to_pylist()) == ["a", "b", "c"]
    assert not list((tmp_path / "parts").glob("*.tmp-*"))


def test_resume_knows_what_an_earlier_attempt_wrote(tmp_path: Path) -> None:
    w = RunWriter(str(tmp_path), part_size=1)
    w.add("studies", [_study_row("a")])
    w.study_done()
    w.add("failures", [_failure_row("b"), _failure_row("x", scope="file")])
    w.study_done()
    w.add("studies", [_study_row("lost")])  # buffered, never flushed: as after a kill
    again = RunWriter(str(tmp_path), part_size=1)
    assert again.done_study_keys() == {"a", "b"}
    assert again.has_file_failures()
    again.add("studies", [_study_row("c")])
    again.flush()
    assert sorted(p.name for p in (tmp_path / "parts").glob("studies-*")) == [
        "studies-00001.parquet",
        "studies-00003.parquet",
    ]


def test_a_destination_belongs_to_one_run(tmp_path: Path) -> None:
    RunWriter(str(tmp_path)).claim("run-1")
    RunWriter(str(tmp_path)).claim("run-1")
    with pytest.raises(RunConflictError, match="--run-id run-1"):
        RunWriter(str(tmp_path)).claim("run-2")


def test_config_yaml_and_overrides_validate_once(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("triton:\n  url: host:8001\n  retries: 2\ndask:\n  n_workers: 3\n")
    cfg = load_config(path, {"triton": {"url": None, "in_flight": 8}, "dask": {"n_workers": None}})
    assert (cfg.triton.url, cfg.triton.retries, cfg.triton.in_flight, cfg.dask.n_workers) == (
        "host:8001",
        2,
        8,
        3,
    )


@pytest.mark.parametrize(
    ("yaml_text", "problem"),
    [
        ("triton:\n  retries: -1\n", "triton.retries"),
        ("analysis:\n  candidate_threshold: 2\n", "analysis.candidate_threshold"),
        ("dask:\n  n_wrkers: 2\n", "dask.n_wrkers"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_config_names_every_problem(tmp_path: Path, yaml_text: str, problem: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


def _finding(score: float, malignancy: float = 0.5) -> Finding:
    return Finding((0.0, 0.0, 0.0), 8.0, 8.0, 200.0, score, score, score, malignancy, "solid", 0.9, "r")


def test_froc_counts_hits_once_and_fps_per_scan() -> None:
    results = [
        StudyResult([Match(8.0, True, 0, _finding(0.9)), Match(4.0, False, 0, None)], [0.95, 0.3]),
        StudyResult([Match(12.0, True, 0, _finding(0.6))], [0.2]),
    ]
    fps, sens, _ = froc_curve(results)
    # scores in order: 0.95 FP, 0.9 TP, 0.6 TP, 0.3 FP, 0.2 FP over 2 scans and 3 nodules
    np.testing.assert_allclose(fps, [0.5, 0.5, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(sens, [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert sensitivity_at(fps, sens, 0.25) == 0.0
    assert sensitivity_at(fps, sens, 1.0) == pytest.approx(2 / 3)
    ev = summarize(results)
    assert ev.nodules == 3 and ev.studies == 2
    assert ev.cpm == pytest.approx(np.mean([0, 0, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]))


def _scored(at: tuple[float, float, float], detector: float, nodule: float) -> Finding:
    return Finding(at, 8.0, 8.0, 200.0, detector, nodule, 0.0, 0.5, "solid", 0.9, "r")


def _cohort(detector_right: bool) -> list[StudyFindings]:
    """Two studies with one 8 mm nodule and one false positive each; only one model ranks the
    nodule above the false positive, and only it alone (weight 1 or 0) ranks it right."""
    nodule = TruthNodule((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 8.0, 0, False, 0.1)
    hit, fp = ((0.9, 0.2), (0.6, 0.9)) if detector_right else ((0.2, 0.9), (0.9, 0.6))
    findings = [_scored((0.0, 0.0, 0.0), *hit), _scored((50.0, 0.0, 0.0), *fp)]
    return [StudyFindings(findings, (nodule,)), StudyFindings(findings, (nodule,))]


def test_the_score_weight_is_chosen_by_the_cohorts_cpm() -> None:
    by_detector = choose_score_weight(_cohort(detector_right=True), weights=(0.0, 0.5, 1.0), seed=3)
    assert by_detector.score_weight == 1.0  # the classifier alone ranks the false positive first
    assert by_detector.cpm_by_weight["0"] < by_detector.cpm_by_weight["1"]
    assert (by_detector.studies, by_detector.nodules, by_detector.seed) == (2, 2, 3)
    assert by_detector.report_threshold == pytest.approx(0.6)  # at w = 1: the false positives' peak
    by_classifier = choose_score_weight(_cohort(detector_right=False), weights=(1.0, 0.5, 0.0))
    assert by_classifier.score_weight == 0.0
    with pytest.raises(ValueError, match="at least one weight"):
        choose_score_weight(_cohort(True), weights=())


def test_findings_are_rescored_at_the_weight_asked_for() -> None:
    cohort = _cohort(detector_right=True)
    ev = summarize_at(cohort, 0.5)
    assert ev.score_weight == 0.5
    # One false positive per scan keeps every finding: the threshold is the lowest score, the hit's.
    # The hit's odds at w = 0.5: sqrt(9 x 0.25) = 1.5, a probability of 0.6.
    assert ev.threshold_1fp == pytest.approx(0.6)
    assert cohort[0].findings[0].score == 0.0  # the cohort's own findings are left as they were


def test_roc_auc() -> None:
    assert roc_auc([True, True, False, False], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc([True, False], [0.1, 0.9]) == 0.0
    assert roc_auc([True, False, True, False], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([True, True], [0.1, 0.2]))


def test_the_finding_score_mixes_log_odds() -> None:
    assert finding_score(0.3, 0.3, 0.4) == pytest.approx(0.3)  # agreeing models: that probability
    assert finding_score(0.9, 0.1, 0.5) == pytest.approx(0.5)  # odds 9 and 1/9 cancel
    assert finding_score(0.8, 0.1, 1.0) == pytest.approx(0.8)  # weight 1: the detector alone
    assert finding_score(0.8, 0.1, 0.0) == pytest.approx(0.1)
    # Near 1 the detector's order survives a classifier that disagrees (a weighted geometric mean
    # of these two ranks them the other way round).
    assert finding_score(0.99999, 0.2, 0.7) > finding_score(0.999, 0.4, 0.7)
    assert 0.999**0.7 * 0.4**0.3 > 0.99999**0.7 * 0.2**0.3
    # A saturated float32 sigmoid (exactly 1.0) still gives a finite, ordered score.
    assert finding_score(0.9999, 0.5, 0.5) < finding_score(1.0, 0.5, 0.5) < 1.0
