"""Every fault kind of the synthetic generator ends in its documented outcome: index -> select -> load."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.errors import ReasonCode, StudyError
from pipeline.index import build_index, iter_studies
from pipeline.select import select_series
from pipeline.sources import open_source
from pipeline.volume import load_volume
from synth.cohort import generate_cohort
from synth.faults import FAULT_NAMES

pytestmark = pytest.mark.slow


def screen(rows) -> str:
    """The ingestion outcome of one study: ``ok`` or its reason code."""
    try:
        load_volume(select_series(rows).files)
    except StudyError as exc:
        return str(exc.reason)
    return "ok"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[dict], dict[str, list[str]], object]:
    """A small cohort: one clean study, then one study per fault kind; its index and outcomes."""
    out = tmp_path_factory.mktemp("synth")
    generate_cohort(out, len(FAULT_NAMES) + 1, seed=7, profile="small", faults=[None, *FAULT_NAMES])
    truth = pq.read_table(out / "truth_studies.parquet").to_pylist()
    index = build_index(open_source(str(out)))
    outcomes: dict[str, list[str]] = {}
    for group in iter_studies(index):
        folder = Path(group.rows["url"][0].as_py()).relative_to(out).parts[0]
        outcomes.setdefault(folder, []).append(screen(group.rows))
    return out, truth, outcomes, index


def test_cohort_covers_every_fault(cohort) -> None:
    _, truth, _, _ = cohort
    assert {t["fault"] for t in truth} == {None, *FAULT_NAMES}


@pytest.mark.parametrize("fault", [None, *FAULT_NAMES])
def test_fault_outcome(cohort, fault: str | None) -> None:
    _, truth, outcomes, _ = cohort
    (study,) = [t for t in truth if t["fault"] == fault]
    folder = Path(study["study_dir"]).parts[0]
    # a study without UIDs may split into several surrogate groups (one per folder): all must fail alike
    assert set(outcomes[folder]) == {study["expected_outcome"]}, f"{fault}: {outcomes[folder]}"


def test_stray_file_is_a_not_dicom_row(cohort) -> None:
    out, truth, _, index = cohort
    (study,) = [t for t in truth if t["fault"] == "non_dicom_file"]
    rows = [r for r in index.to_pylist() if r["url"].startswith(str(out / study["study_dir"]))]
    assert ReasonCode.NOT_DICOM in {r["status"] for r in rows}
