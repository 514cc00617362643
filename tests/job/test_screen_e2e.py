"""The screening job end to end: synthetic DICOM -> real Dask cluster -> real Triton -> Parquet.

Uses the reference models in ``model_repository/`` served by the real local tritonserver (CPU
profile). Known truth: large nodules must be found where they are, every faulty study must
end in ``failures`` with its documented reason, counts must add up, and a killed and resumed
run must end with the same tables as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.job import RunSummary, run_screen
from pipeline.serving import LocalTriton
from synth.cohort import generate_cohort

pytestmark = [pytest.mark.slow, pytest.mark.triton]

# Columns that differ between two runs of the same studies by design.
VOLATILE = {
    "run_id",
    "select_s",
    "load_s",
    "preprocess_s",
    "inference_s",
    "postprocess_s",
    "triage_s",
    "total_s",
}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two clean full-size screening studies and, in the small profile, every fault kind."""
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root / "screening", 2, seed=11, profile="screening")
    generate_cohort(root / "faults", 11, seed=3, profile="small", faults="all")
    return root


@pytest.fixture(scope="module")
def run(cohorts: Path, reference_server: LocalTriton, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("run")
    cfg = load_config(None, {"dask": {"n_workers": 2}, "sinks": {"part_size": 4}})
    summary = run_screen(str(cohorts), str(dest), cfg, run_id="e2e", triton_url=reference_server.grpc_url)
    assert isinstance(summary, RunSummary)
    return dest


def _truth(cohorts: Path, name: str) -> list[dict]:
    return pq.read_table(cohorts / name / "truth_studies.parquet").to_pylist()


def test_counts_add_up_exactly(run: Path, cohorts: Path) -> None:
    manifest = json.loads((run / "run.json").read_text())
    studies = pq.read_table(run / "studies.parquet")
    failures = pq.read_table(run / "failures.parquet").to_pylist()
    study_failures = [f for f in failures if f["scope"] == "study"]
    screened = set(studies["study_key"].to_pylist())
    failed = {f["study_key"] for f in study_failures}
    index = pq.read_table(run / "index.parquet")
    keyed = {k for k in index["study_key"].to_pylist() if k}
    assert not screened & failed
    assert screened | failed == keyed
    assert len(study_failures) == len(failed)  # one row per failed study
    assert manifest["complete"] is True
    assert manifest["counts"]["studies"] == len(keyed)
    assert manifest["counts"]["screened"] + manifest["counts"]["failed"] == len(keyed)


def test_faulty_studies_end_with_their_documented_outcome(run: Path, cohorts: Path) -> None:
    studies = {r["study_instance_uid"] for r in pq.read_table(run / "studies.parquet").to_pylist()}
    failures = [f for f in pq.read_table(run / "failures.parquet").to_pylist() if f["scope"] == "study"]
    by_uid = {f["study_instance_uid"]: f for f in failures if f["study_instance_uid"]}
    missing_uid = [f for f in failures if f["reason"] == "MISSING_UID"]
    for truth in _truth(cohorts, "faults"):
        expected = truth["expected_outcome"]
        if truth["fault"] == "empty_uids":
            assert missing_uid, "the study without UIDs must fail with MISSING_UID"
            assert all(f["study_instance_uid"] is None for f in missing_uid)
        elif expected == "ok":
            assert truth["study_instance_uid"] in studies, truth["fault"]
        else:
            row = by_uid.get(truth["study_instance_uid"])
            assert row is not None, f"{truth['fault']} should have failed"
            assert row["reason"] == expected, (truth["fault"], row["message"])
            assert row["message"] and row["stage"]
    file_rows = [f for f in pq.read_table(run / "failures.parquet").to_pylist() if f["scope"] == "file"]
    assert any(f["reason"] == "NOT_DICOM" for f in file_rows)


def test_large_nodules_are_found_where_they_are(run: Path, cohorts: Path) -> None:
    truth = pq.read_table(cohorts / "screening" / "truth.parquet").to_pylist()
    findings = pq.read_table(run / "findings.parquet").to_pylist()
    large = [t for t in truth if t["diameter_mm"] >= 10.0 and t["type"] != "ground_glass"]
    if not large:
        pytest.fail("the screening cohort of this test has no solid nodule >= 10 mm: change its seed")
    for t in large:
        mine = [f for f in findings if f["study_instance_uid"] == t["study_instance_uid"] and f["reported"]]
        centre = np.array([t["center_x_mm"], t["center_y_mm"], t["center_z_mm"]])
        dists = [
            np.linalg.norm(centre - [f["center_x_mm"], f["center_y_mm"], f["center_z_mm"]]) for f in mine
        ]
        assert dists and min(dists) <= t["diameter_mm"] / 2, (t["diameter_mm"], t["type"], sorted(dists)[:3])


def test_worklist_is_the_studies_in_priority_order(run: Path) -> None:
    worklist = pq.read_table(run / "worklist.parquet").to_pylist()
    studies = pq.read_table(run / "studies.parquet")
    assert [w["priority"] for w in worklist] == list(range(1, studies.num_rows + 1))
    jsonl = [json.loads(line) for line in (run / "worklist.jsonl").read_text().splitlines()]
    assert jsonl == worklist
    assert all(w["model_data"] == "synthetic" for w in worklist)
    assert all(w["reason"] for w in worklist)


def _comparable(table: pa.Table, sort: list[str]) -> list[dict]:
    rows = table.drop_columns([c for c in table.column_names if c in VOLATILE]).to_pylist()
    rounded = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return sorted(rounded, key=lambda r: tuple(str(r[k]) for k in sort))


def test_killed_and_resumed_run_equals_an_uninterrupted_one(
    cohorts: Path, reference_server: LocalTriton, tmp_path: Path
) -> None:
    source = str(cohorts / "faults")
    whole = tmp_path / "whole"
    cfg = load_config(None, {"dask": {"n_workers": 1}, "sinks": {"part_size": 1}})
    run_screen(source, str(whole), cfg, run_id="whole", triton_url=reference_server.grpc_url)

    resumed = tmp_path / "resumed"
    job = tmp_path / "job.yaml"
    job.write_text("sinks:\n  part_size: 1\ndask:\n  n_workers: 1\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "screen", source, "--out", str(resumed),
           "--config", str(job), "--triton", reference_server.grpc_url, "--run-id", "resumed"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((resumed / "parts").glob("studies-*.parquet"))) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "run.json").exists(), "killed too late: the run had finished"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    for name, keys in (("studies", ["study_key"]), ("findings", ["study_key", "finding_index"]),
                       ("failures", ["scope", "study_key", "url"])):  # fmt: skip
        a = _comparable(pq.read_table(whole / f"{name}.parquet"), keys)
        b = _comparable(pq.read_table(resumed / f"{name}.parquet"), keys)
        assert a == b, name
