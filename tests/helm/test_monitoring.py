"""The chart's monitoring: dashboard queries name only real metrics; alert rules pass promtool.

Job metrics are the ones pipeline/metrics.py declares (``metric_names()``). Triton's are listed
in ``TRITON_METRICS`` with where each name comes from.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.metrics import metric_names
from tests.helm.conftest import NAMESPACE, RELEASE, need_promtool, render

# Triton's own metrics the dashboard and alerts use. Source: Triton's user guide, "Metrics"
# (triton-inference-server/server docs/user_guide/metrics.md, r24.x: the Inference Request
# Metrics table (counts, latencies, pending requests) and the GPU Metrics table); the
# CPU_SIDE ones are also checked against a real local tritonserver 2.51 below.
TRITON_INFERENCE_METRICS = {
    "nv_inference_request_success",  # Count: successful requests
    "nv_inference_request_failure",  # Count: failed requests
    "nv_inference_count",  # Count: inferences (a request of batch n counts n)
    "nv_inference_exec_count",  # Count: executions (count / exec_count = batch size achieved)
    "nv_inference_pending_request_count",  # Count: requests waiting (Per Interval)
    "nv_inference_request_duration_us",  # Latency: end to end, cumulative
    "nv_inference_queue_duration_us",  # Latency: time in queue, cumulative
    "nv_inference_compute_input_duration_us",  # Latency: input processing, cumulative
    "nv_inference_compute_infer_duration_us",  # Latency: model execution, cumulative
    "nv_inference_compute_output_duration_us",  # Latency: output processing, cumulative
}
TRITON_CPU_METRICS = {"nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"}
TRITON_GPU_METRICS = {  # GPU Metrics table; only on GPU hosts (--allow-gpu-metrics)
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
}
TRITON_METRICS = TRITON_INFERENCE_METRICS | TRITON_CPU_METRICS | TRITON_GPU_METRICS
# Alerts may also use what every kube-prometheus-stack has: Prometheus' own scrape health
# (`up`) and kube-state-metrics' Deployment status (docs: kube-state-metrics deployment-metrics).
CLUSTER_METRICS = {"up", "kube_deployment_status_replicas_available"}

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip
REQUIRED_PANELS = {
    "Studies per minute": {"lungscreen_studies_total"},
    "Failures by reason": {"lungscreen_studies_total"},
    "Stage latency (p50, p95)": {"lungscreen_stage_duration_seconds_bucket"},
    "Triton queue and compute time per request": {
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    },
    "Batch size achieved (inferences per execution)": {"nv_inference_count", "nv_inference_exec_count"},
    "GPU utilization": {"nv_gpu_utilization"},
    "Category mix of the last run": {"lungscreen_study_categories_total"},
}  # fmt: skip


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label names, functions, keywords removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\boffset\s+\d+\w*", " ", e)
    e = re.sub(r"\$\w+", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        following = e[m.end() :].lstrip()[:1]
        word = m.group()
        if following == "(" or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def test_promql_metric_extraction() -> None:
    expr = (
        'sum by (le, stage) (rate(a_bucket{stage="x"}[5m])) / on () group_left () max(b offset 1h) > 2 and c'
    )
    assert metrics_in(expr) == {"a_bucket", "b", "c"}


def dashboard() -> dict[str, Any]:
    (cm,) = [d for d in render("default") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    return json.loads(cm["data"]["lungscreen.json"])


def test_dashboard_queries_name_only_exported_metrics() -> None:
    job_metrics = metric_names()
    known = job_metrics | TRITON_METRICS
    panels = {p["title"]: p for p in dashboard()["panels"]}
    used: set[str] = set()
    for title, panel in panels.items():
        assert panel["targets"], title
        for target in panel["targets"]:
            names = metrics_in(target["expr"])
            assert names, f"{title}: no metric in {target['expr']!r}"
            unknown = names - known
            assert not unknown, (
                f"{title}: {sorted(unknown)} is exported neither by pipeline/metrics.py nor by Triton"
            )
            used |= names
    for title, needs in REQUIRED_PANELS.items():
        assert title in panels, f"dashboard lacks the panel {title!r}"
        panel_names = set().union(*(metrics_in(t["expr"]) for t in panels[title]["targets"]))
        assert needs <= panel_names, title
    assert used & job_metrics and used & TRITON_METRICS


def test_dashboard_queries_a_prometheus_datasource_variable() -> None:
    dash = dashboard()
    (var,) = dash["templating"]["list"]
    assert (var["type"], var["query"]) == ("datasource", "prometheus")
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"


def rules() -> dict[str, Any]:
    (rule,) = [d for d in render("default") if d["kind"] == "PrometheusRule"]
    return rule["spec"]


def test_alert_rules_name_only_exported_metrics() -> None:
    known = metric_names() | TRITON_METRICS | CLUSTER_METRICS
    alerts = {r["alert"]: r for g in rules()["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "LungscreenRunFailed", "LungscreenRunOverdue", "LungscreenFailureRatioHigh",
        "TritonNotReady", "TritonQueueTimeRising",
    }  # fmt: skip
    for name, rule in alerts.items():
        unknown = metrics_in(rule["expr"]) - known
        assert not unknown, f"{name}: {sorted(unknown)}"


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "lungscreen-rules.yaml"
    path.write_text(yaml.safe_dump(rules(), sort_keys=False))
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_rules(rules_file: Path) -> None:
    out = promtool("check", "rules", str(rules_file), cwd=rules_file.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout, out.stdout


JOB = {"namespace": NAMESPACE, "job": "lungscreen", "instance": "pushgateway"}
TRITON = {"namespace": NAMESPACE, "job": f"{RELEASE}-triton"}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def alert(
    name: str, at: str, labels: dict[str, str] | None, annotations: dict[str, str] | None = None
) -> dict:
    """An expectation: the alert fires with these labels (and the rule's annotations), or not."""
    expected = []
    if labels is not None:
        expected = [{"exp_labels": labels, "exp_annotations": annotations or annotations_of(name)}]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def annotations_of(name: str) -> dict[str, str]:
    (rule,) = [r for g in rules()["groups"] for r in g["rules"] if r["alert"] == name]
    return rule["annotations"]


def test_promtool_unit_tests_fire_each_alert(rules_file: Path) -> None:
    r1 = {**JOB, "run_id": "r1"}
    r2 = {**JOB, "run_id": "r2"}
    r3 = {**JOB, "run_id": "r3"}
    detector = {**TRITON, "model": "detector"}
    queue_rise = {**annotations_of("TritonQueueTimeRising")}
    queue_rise["description"] = queue_rise["description"].replace(
        "{{ $labels.model }}", "detector").replace("{{ $value | humanize }}", "300")  # fmt: skip
    ratio = {**annotations_of("LungscreenFailureRatioHigh")}
    ratio["description"] = ratio["description"].replace("{{ $value | humanizePercentage }}", "10%")
    tests = {
        "rule_files": [rules_file.name],
        "evaluation_interval": "1m",
        "tests": [
            {  # r1 ended (t=60 s) without writing every study; r2 started at 0 and never ends.
                "interval": "1m",
                "input_series": [
                    series("lungscreen_run_success", r1, "0x500"),
                    series("lungscreen_run_end_timestamp_seconds", r1, "60x500"),
                    series("lungscreen_run_start_timestamp_seconds", r1, "0x500"),
                    series("lungscreen_run_success", r2, "0x500"),
                    series("lungscreen_run_end_timestamp_seconds", r2, "0x500"),
                    series("lungscreen_run_start_timestamp_seconds", r2, "0x500"),
                    series(
                        "lungscreen_studies_total",
                        {**r3, "status": "failed", "reason": "decode_error"},
                        "10x30",
                    ),
                    series("lungscreen_studies_total", {**r3, "status": "ok", "reason": "none"}, "90x30"),
                    # r4: 1 failure in 100 studies, under the threshold.
                    series(
                        "lungscreen_studies_total",
                        {**JOB, "run_id": "r4", "status": "failed", "reason": "x"},
                        "1x30",
                    ),
                    series(
                        "lungscreen_studies_total",
                        {**JOB, "run_id": "r4", "status": "ok", "reason": "none"},
                        "99x30",
                    ),
                ],
                "alert_rule_test": [
                    alert("LungscreenRunFailed", "5m", {**r1, "severity": "critical"}),
                    alert("LungscreenRunOverdue", "5m", None),  # within the deadline (6 h)
                    alert("LungscreenRunOverdue", "7h", {**r2, "severity": "warning"}),
                    alert("LungscreenFailureRatioHigh", "10m", {**r3, "severity": "warning"}, ratio),
                ],
            },
            {  # Triton's Deployment loses its last ready replica at 10m.
                "interval": "1m",
                "input_series": [
                    series(
                        "kube_deployment_status_replicas_available",
                        {"namespace": NAMESPACE, "deployment": f"{RELEASE}-triton"},
                        "1x9 0x20",
                    ),
                    series("up", {**TRITON, "instance": "10.0.0.1:8002"}, "1x30"),
                ],
                "alert_rule_test": [
                    alert("TritonNotReady", "12m", None),  # not yet for 5m
                    alert(
                        "TritonNotReady",
                        "16m",
                        {"namespace": NAMESPACE, "deployment": f"{RELEASE}-triton", "severity": "critical"},
                    ),
                ],
            },
            {  # 10 requests a minute: 1 ms in the queue each until 70m, then 300 ms each.
                "interval": "1m",
                "input_series": [
                    series("nv_inference_request_success", detector, "0+10x120"),
                    series("nv_inference_queue_duration_us", detector, "0+10000x70 3700000+3000000x49"),
                ],
                "alert_rule_test": [
                    alert("TritonQueueTimeRising", "60m", None),
                    alert(
                        "TritonQueueTimeRising",
                        "90m",
                        {"model": "detector", "severity": "warning"},
                        queue_rise,
                    ),
                ],
            },
        ],
    }
    test_file = rules_file.parent / "lungscreen-rules.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = promtool("test", "rules", test_file.name, cwd=rules_file.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.triton
def test_triton_really_exports_the_cpu_side_metrics(triton_server: Any) -> None:
    """The local tritonserver 2.51 (CPU profile) exposes the non-GPU names the chart relies on."""
    import urllib.request

    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert exported >= TRITON_INFERENCE_METRICS | TRITON_CPU_METRICS, sorted(exported)
