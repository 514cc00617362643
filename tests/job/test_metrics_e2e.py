"""Job metrics reach a real Pushgateway and a real Prometheus scrapes them (both on loopback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli_screen import push_metrics
from pipeline.config import load_config
from pipeline.job import run_screen
from pipeline.metrics import JobMetrics
from pipeline.serving import LocalTriton, free_port
from synth.cohort import generate_cohort

pytestmark = [pytest.mark.slow, pytest.mark.triton]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `apt-get install {name.split('-')[0]}` (.ci/run does it)")
    return path


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def _wait(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture
def prometheus_stack(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Pushgateway and a Prometheus that scrapes it every second; (pushgateway, prometheus) URLs."""
    gw_port, prom_port = free_port(), free_port()
    gateway = subprocess.Popen(
        [_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{gw_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{gw_port}']\n"
    )
    prometheus = subprocess.Popen(
        [_binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{gw_port}/metrics")
        _wait(f"http://127.0.0.1:{prom_port}/-/ready")
        yield f"127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}"
    finally:
        for proc in (prometheus, gateway):
            proc.terminate()
            proc.wait(timeout=20)


def _query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(_get(url))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_pushed_run_metrics_are_queryable_in_prometheus(
    prometheus_stack: tuple[str, str],
    reference_server: LocalTriton,
    tmp_path: Path,
) -> None:
    gateway, prometheus = prometheus_stack
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, 3, seed=5, profile="small", faults={1: "non_ct"})
    metrics = JobMetrics()
    cfg = load_config(None, {"dask": {"n_workers": 1}})
    summary = run_screen(str(cohort), str(tmp_path / "out"), cfg, run_id="metrics-test",
                         triton_url=reference_server.grpc_url, metrics=metrics)  # fmt: skip
    push_metrics(gateway, metrics, "metrics-test")

    deadline = time.monotonic() + 30
    result: list[dict] = []
    while time.monotonic() < deadline and not result:
        result = _query(prometheus, 'lungscreen_studies_total{run_id="metrics-test"}')
        time.sleep(0.5)
    # Prometheus drops empty label values: an "ok" series has no reason label.
    by_status = {(r["metric"]["status"], r["metric"].get("reason", "")): float(r["value"][1]) for r in result}
    failures = pq.read_table(tmp_path / "out" / "failures.parquet").to_pylist()
    messages = [f["message"] for f in failures if f["scope"] == "study"]
    assert summary.screened == 2, messages
    assert by_status == {("ok", ""): 2.0, ("failed", "NOT_CT"): 1.0}
    assert all(r["metric"]["job"] == "lungscreen" for r in result)
    done = _query(prometheus, 'lungscreen_run_studies_done{run_id="metrics-test"}')
    assert float(done[0]["value"][1]) == 3.0
    stages = _query(prometheus, 'lungscreen_stage_duration_seconds_count{run_id="metrics-test",stage="load"}')
    assert float(stages[0]["value"][1]) >= summary.screened
    # No patient identifier ever becomes a label: only known label names appear.
    series = json.loads(
        _get(f"{prometheus}/api/v1/series?match[]=" + urllib.parse.quote('{job="lungscreen"}'))
    )
    label_names = {k for s in series["data"] for k in s}
    assert label_names <= {"__name__", "job", "run_id", "instance", "status", "reason", "stage", "model",
                           "version", "category", "le"}  # fmt: skip
