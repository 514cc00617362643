"""The reference recipe's cohorts: generated once, and never silently swapped for another recipe's."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from export.reference import make_cohort


def test_a_kept_cohort_is_reused_only_when_it_is_the_one_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    logged: list[str] = []
    make_cohort(out, 1, 7, "small", logged.append)
    assert pq.read_table(out / "truth_studies.parquet").num_rows == 1
    stamp = (out / "truth_studies.parquet").stat().st_mtime_ns
    assert make_cohort(out, 1, 7, "small", logged.append) == out
    assert (out / "truth_studies.parquet").stat().st_mtime_ns == stamp  # not generated again
    for studies, seed in ((2, 7), (1, 8)):
        with pytest.raises(ValueError, match="remove it"):
            make_cohort(out, studies, seed, "small", logged.append)
