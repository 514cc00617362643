"""The benchmark script runs end to end on a tiny cohort (figures are not checked: that is
what `make bench` is for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import run as bench_run

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def test_bench_runs_on_a_tiny_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_run, "WORK", tmp_path / "work")
    cfg = bench_run.BenchConfig(
        studies=2,
        seed=1,
        profile="small",
        repeats=1,
        floor_sample=1,
        workers=1,
        scale_studies=3,
        scale_profile="small",
    )
    result = bench_run.run_bench(cfg)
    summary = result["summary"]
    assert summary["platform_studies_per_min"]["median"] > 0
    assert summary["baseline_studies_per_min"]["median"] > 0
    assert result["floors"]["load_x_floor"] > 0
    table = bench_run.markdown(result)
    assert "Platform / baseline" in table and "| load + assemble" in table
    scaling = result["memory_scaling"]
    assert set(scaling["runs"]) == {"2", "3"} and scaling["runs"]["3"]["studies"] == 3
    assert "Peak memory at 2 vs 3 studies" in table
    # The driver ran in its own process: its memory and its one worker's were sampled there.
    run = result["platform"][0]
    assert run["driver_peak_mb"] > 50 and 0 < run["worker_peak_mb"] <= run["workers_peak_mb"]
    assert any(workers for _, _, workers in run["memory_timeline"])
    assert run["cpu_s_per_study"] > 0
