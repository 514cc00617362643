"""Run tables (atomic parts, resume, ownership), job configuration, evaluation maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.evaluate import Match, StudyResult, froc_curve, roc_auc, sensitivity_at, summarize
from pipeline.analysis import Finding
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


def test_roc_auc() -> None:
    assert roc_auc([True, True, False, False], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc([True, False], [0.1, 0.9]) == 0.0
    assert roc_auc([True, False, True, False], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([True, True], [0.1, 0.2]))
