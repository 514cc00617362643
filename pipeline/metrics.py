"""Prometheus metrics of a screening run: the names dashboards and alerts rely on.

Every metric lives in a registry of its own per run, so a batch job can push it to a
Pushgateway (the batch-job pattern) and expose it on ``--metrics-port`` at the same time.
Labels never carry patient identifiers: only statuses, reason codes, stage and model names,
Lung-RADS categories and the run id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NAMESPACE = "lungscreen"
# Stage latencies span milliseconds (select) to minutes (a large study's inference).
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class JobMetrics:
    """The metrics of one screening run, registered in their own registry."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.studies = Counter(
            "studies", "Studies finished, by status (ok|failed) and failure reason code.",
            ["status", "reason"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "stage_duration_seconds", "Wall time of one pipeline stage for one study.",
            ["stage"], namespace=NAMESPACE, buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.triton_request_seconds = Histogram(
            "triton_request_duration_seconds", "Round-trip time of one inference request to Triton.",
            ["model"], namespace=NAMESPACE, buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.patches = Counter(
            "patches", "Patches (detector) or crops (classifier) sent to Triton.",
            ["model"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "studies_in_flight", "Studies submitted to workers and not yet finished.",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.findings = Counter(
            "findings", "Findings reported, by suggested Lung-RADS category of the finding.",
            ["category"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.study_categories = Counter(
            "study_categories", "Screened studies by suggested Lung-RADS category.",
            ["category"], namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.run_expected = Gauge(
            "run_studies_expected", "Studies in this run's cohort.", namespace=NAMESPACE, registry=r
        )
        self.run_done = Gauge(
            "run_studies_done", "Studies of this run written (ok or failed).", namespace=NAMESPACE, registry=r
        )
        self.run_start = Gauge(
            "run_start_timestamp_seconds", "Unix time the run started.", namespace=NAMESPACE, registry=r
        )
        self.run_end = Gauge(
            "run_end_timestamp_seconds", "Unix time the run ended (0 while running).",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.run_success = Gauge(
            "run_success", "1 when the run finished with every study written, 0 otherwise.",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "run_last_success_timestamp_seconds", "Unix time of the last run that finished successfully.",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "model_info", "Model versions this run used (value 1).", ["model", "version"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip


_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def metric_names() -> set[str]:
    """Every sample name a :class:`JobMetrics` can expose (for checking dashboards and alerts)."""
    return {
        family.name + suffix
        for family in JobMetrics().registry.collect()
        for suffix in _SAMPLE_SUFFIXES[family.type]
    }
