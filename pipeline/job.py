"""The screening job: index a cohort, stream its studies through Dask workers and Triton, write
tables as results arrive, and finish with the worklist and the run manifest.

Back-pressure: at most ``max_in_flight`` studies are submitted at a time; each result is
written (buffered into part files) as it completes, so driver memory does not grow with the
cohort, and a worker holds one study at a time. A re-run with the same run id skips every
study an earlier attempt wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient
from distributed import Client, LocalCluster, as_completed, get_worker

from pipeline.config import JobConfig
from pipeline.errors import ReasonCode, ServerTimeoutError
from pipeline.index import OK, build_index, count_studies, iter_studies
from pipeline.infer import TritonRunner, TritonWorkerPlugin
from pipeline.metrics import JobMetrics
from pipeline.select import DEFAULT_SCREENING_RULES, load_rules
from pipeline.serving import PROJECT_ROOT, LocalTriton, Profile
from pipeline.sources import open_source
from pipeline.study import STAGES, ModelContext, StudyOutcome, screen_study
from pipeline.tables import WORKLIST_SCHEMA, RunWriter, worklist_jsonl
from pipeline.triage import priority_key

log = logging.getLogger(__name__)
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
Progress = Callable[[int, int, int, int], None]  # done, failed, total, in flight


@dataclass
class RunSummary:
    """What a run did, for the CLI, the demo and tests."""

    run_id: str
    dest: str
    studies: int
    screened: int
    failed: int
    skipped_resumed: int
    findings: int
    by_reason: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    dashboard: str | None = None
    complete: bool = False
    # Driver-side stages (the in-worker ones are per-study columns of ``studies``): seconds spent
    # indexing the source and writing result rows, part files and the final tables.
    driver_seconds: dict[str, float] = field(default_factory=dict)


def new_run_id() -> str:
    """A sortable run id: UTC time plus a short random suffix."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def wait_for_grpc(url: str, timeout_s: float) -> None:
    """Poll a Triton gRPC endpoint until it is ready; connection errors mean "not yet"."""
    deadline = time.monotonic() + timeout_s
    with grpcclient.InferenceServerClient(url) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if client.is_server_ready():
                    return
            time.sleep(0.5)
    raise ServerTimeoutError(f"Triton at {url} was not ready within {timeout_s:.0f} s.")


def _screen_on_worker(study_key: str, rows: pa.Table, ctx: ModelContext) -> StudyOutcome:
    runner: TritonRunner = get_worker().lungscreen_runner  # type: ignore[attr-defined]
    outcome = screen_study(study_key, rows.to_pylist(), ctx, runner)
    stats = runner.take_stats()
    outcome.request_seconds, outcome.items = stats.seconds, stats.items
    return outcome


@contextlib.contextmanager
def _triton(cfg: JobConfig, url: str | None, repository: Path) -> Iterator[str]:
    if url:
        wait_for_grpc(url, cfg.triton.ready_timeout_s)
        yield url
        return
    with LocalTriton(repository, profile=Profile.CPU, startup_timeout_s=cfg.triton.ready_timeout_s) as server:
        yield server.grpc_url


# Dask keeps its last N messages per connection for debugging (``low-level-log-length``,
# default 1000), task arguments included: with each study's index rows in its task, the
# driver grew by ~1.3 MB per study (measured with no-op tasks: 202 -> 492 MB over 200 studies).
MESSAGE_LOG_LENGTH = 32


@contextlib.contextmanager
def _dask(cfg: JobConfig, scheduler: str | None) -> Iterator[Client]:
    with dask.config.set({"distributed.admin.low-level-log-length": MESSAGE_LOG_LENGTH}):
        if scheduler:
            with Client(scheduler) as client:
                yield client
        else:
            with _local_cluster(cfg) as client:
                yield client


@contextlib.contextmanager
def _local_cluster(cfg: JobConfig) -> Iterator[Client]:
    n_workers = cfg.dask.n_workers or max(os.cpu_count() or 1, 1)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=cfg.dask.threads_per_worker,
            processes=True,
            memory_limit=cfg.dask.memory_limit,
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def model_context(runner: TritonRunner, cfg: JobConfig, run_id: str) -> ModelContext:
    """Read both models' specs and versions from the server the run will use."""
    rules = load_rules(cfg.selection_rules) if cfg.selection_rules else DEFAULT_SCREENING_RULES
    return ModelContext(
        run_id=run_id,
        detector=runner.spec(cfg.triton.detector),
        classifier=runner.spec(cfg.triton.classifier),
        detector_version=runner.served_version(cfg.triton.detector),
        classifier_version=runner.served_version(cfg.triton.classifier),
        analysis=cfg.analysis.to_runtime(cfg.triton.in_flight),
        triage=cfg.triage.to_runtime(),
        rules=rules,
    )


def run_screen(
    source: str,
    dest: str,
    cfg: JobConfig,
    *,
    run_id: str | None = None,
    scheduler: str | None = None,
    triton_url: str | None = None,
    repository: Path = DEFAULT_REPOSITORY,
    metrics: JobMetrics | None = None,
    progress: Progress | None = None,
    on_dashboard: Callable[[str], None] | None = None,
) -> RunSummary:
    """Screen every study of ``source`` into ``dest``; resumable by ``run_id``."""
    run_id = run_id or new_run_id()
    metrics = metrics or JobMetrics()
    started = time.time()
    driver_seconds = {"index": 0.0, "write": 0.0}
    metrics.run_start.set(started)
    writer = RunWriter(dest, cfg.sinks.part_size)
    writer.claim(run_id)
    with _triton(cfg, triton_url or cfg.triton.url, repository) as url, _dask(cfg, scheduler) as client:
        if on_dashboard and client.dashboard_link:
            on_dashboard(client.dashboard_link)
        driver_runner = TritonRunner(url, cfg.triton)
        ctx = model_context(driver_runner, cfg, run_id)
        driver_runner.close()
        metrics.model_info.labels(model=ctx.detector.name, version=ctx.detector_version).set(1)
        metrics.model_info.labels(model=ctx.classifier.name, version=ctx.classifier_version).set(1)
        client.register_plugin(TritonWorkerPlugin(url, cfg.triton))
        with _stopwatch(driver_seconds, "index"):
            index = _index(source, writer, client)
        if not writer.has_file_failures():
            writer.add("failures", _file_failures(index, run_id))
        done_before = writer.done_study_keys()
        total = count_studies(index)
        metrics.run_expected.set(total)
        todo = (g for g in iter_studies(index) if g.key not in done_before)
        max_in_flight = cfg.dask.max_in_flight or 2 * len(client.scheduler_info()["workers"])
        counts = {"done": len(done_before), "failed": 0}
        metrics.run_done.set(counts["done"])
        submitted: dict[str, StudyIdentity] = {}
        sequence = itertools.count(1)

        def submit_next(ac: as_completed) -> bool:
            group = next(todo, None)
            if group is None:
                return False
            # Task keys carry a counter, never a UID: the dashboard shows them. The rows travel as
            # Arrow (a fifth of their size as Python dicts); the worker unpacks them.
            key = f"study-{run_id}-{next(sequence)}"
            submitted[key] = StudyIdentity.of(group.key, group.rows)
            ac.add(client.submit(_screen_on_worker, group.key, group.rows, ctx, key=key))
            metrics.in_flight.inc()
            return True

        ac = as_completed()
        for _ in range(max_in_flight):
            if not submit_next(ac):
                break
        for future in ac:
            metrics.in_flight.dec()
            outcome = _result(future, submitted.pop(future.key), run_id)
            with _stopwatch(driver_seconds, "write"):
                _record(outcome, writer, metrics)
            counts["done"] += 1
            counts["failed"] += outcome.status != "ok"
            metrics.run_done.set(counts["done"])
            if progress:
                progress(counts["done"], counts["failed"], total, ac.count())
            submit_next(ac)
        with _stopwatch(driver_seconds, "write"):
            writer.flush()
    with _stopwatch(driver_seconds, "write"):
        summary = finalize(writer, run_id, total, cfg, ctx, started, source)
    summary.skipped_resumed = len(done_before)
    summary.driver_seconds = driver_seconds
    metrics.run_end.set(time.time())
    metrics.run_success.set(1 if summary.complete else 0)
    if summary.complete:
        metrics.last_success.set(time.time())
    return summary


@contextlib.contextmanager
def _stopwatch(totals: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        totals[stage] += time.perf_counter() - start


def _index(source: str, writer: RunWriter, client: Client) -> pa.Table:
    """Index the source, reusing the rows of this run's earlier index for unchanged files."""
    path = f"{writer.root}/index.parquet"
    previous = None
    if writer.fs.exists(path):
        with writer.fs.open(path, "rb") as f:
            previous = pq.read_table(f)
    index = build_index(open_source(source), client=client, previous=previous)
    writer.write_table("index", index)
    return index


_FILE_COLUMNS = ("study_key", "StudyInstanceUID", "AccessionNumber", "url", "status", "message")


def _file_failures(index: pa.Table, run_id: str) -> list[dict[str, Any]]:
    bad = index.filter(pc.not_equal(index["status"], OK))
    return [
        {
            "run_id": run_id,
            "scope": "file",
            "study_key": row["study_key"],
            "study_instance_uid": row["StudyInstanceUID"],
            "accession_number": row["AccessionNumber"],
            "url": row["url"],
            "stage": "index",
            "reason": row["status"],
            "message": row["message"],
        }
        for row in bad.select(list(_FILE_COLUMNS)).to_pylist()
    ]


@dataclass(frozen=True)
class StudyIdentity:
    """What the driver needs to write a failure row for a study whose task was lost."""

    key: str
    uid: str | None
    accession: str | None

    @classmethod
    def of(cls, key: str, rows: pa.Table) -> StudyIdentity:
        return cls(key, _first_value(rows, "StudyInstanceUID"), _first_value(rows, "AccessionNumber"))


def _first_value(rows: pa.Table, column: str) -> str | None:
    values = pc.drop_null(rows[column])
    return values[0].as_py() if len(values) else None


def _result(future: Any, study: StudyIdentity, run_id: str) -> StudyOutcome:
    """The outcome of a study task; a task that died with its worker becomes a failure row."""
    try:
        return future.result()
    except Exception as e:  # KilledWorker, a cancelled future, a lost connection
        message = f"the worker running it died or was lost ({type(e).__name__}); re-run with the same run id"
        row = {
            "run_id": run_id,
            "scope": "study",
            "study_key": study.key,
            "study_instance_uid": study.uid,
            "accession_number": study.accession,
            "url": None,
            "stage": "worker",
            "reason": str(ReasonCode.INTERNAL_ERROR),
            "message": message,
        }
        return StudyOutcome(study.key, str(ReasonCode.INTERNAL_ERROR), failure_row=row)


def _record(outcome: StudyOutcome, writer: RunWriter, metrics: JobMetrics) -> None:
    if outcome.study_row is not None:
        writer.add("studies", [outcome.study_row])
        writer.add("findings", outcome.finding_rows)
        metrics.studies.labels(status="ok", reason="").inc()
        metrics.study_categories.labels(category=outcome.study_row["category"]).inc()
        for row in outcome.finding_rows:
            if row["reported"]:
                metrics.findings.labels(category=row["category"]).inc()
    else:
        writer.add("failures", [outcome.failure_row])
        metrics.studies.labels(status="failed", reason=outcome.status).inc()
    for stage, seconds in outcome.timings.items():
        if stage != "total":
            metrics.stage_seconds.labels(stage=stage).observe(seconds)
    for model, latencies in outcome.request_seconds.items():
        for s in latencies:
            metrics.triton_request_seconds.labels(model=model).observe(s)
    for model, n in outcome.items.items():
        metrics.patches.labels(model=model).inc(n)
    writer.study_done()


def finalize(
    writer: RunWriter, run_id: str, total: int, cfg: JobConfig, ctx: ModelContext, started: float, source: str
) -> RunSummary:
    """Write the final tables, the worklist and ``run.json`` (last) from the part files."""
    studies = writer.read_parts("studies")
    order = sorted(
        range(studies.num_rows),
        key=lambda i: priority_key(studies["category"][i].as_py(), studies["risk"][i].as_py()),
    )
    ranks = [0] * studies.num_rows
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    position = studies.schema.get_field_index("priority")
    studies = studies.set_column(position, "priority", pa.array(ranks, pa.int64()))
    studies = studies.take(pa.array(order, pa.int64())) if order else studies
    findings = writer.read_parts("findings")
    failures = writer.read_parts("failures")
    worklist = pa.table(
        {
            "priority": studies["priority"],
            "accession_number": studies["accession_number"],
            "study_instance_uid": studies["study_instance_uid"],
            "category": studies["category"],
            "risk": studies["risk"],
            "reason": studies["explanation"],
            "run_id": studies["run_id"],
            "model_data": studies["model_data"],
        },
        schema=WORKLIST_SCHEMA,
    )
    tables = {"studies": studies, "findings": findings, "failures": failures, "worklist": worklist}
    paths = {name: writer.write_table(name, table) for name, table in tables.items()}
    if cfg.sinks.worklist_jsonl:
        paths["worklist_jsonl"] = writer.write_text("worklist.jsonl", worklist_jsonl(worklist))
    study_failures = failures.filter(pc.equal(failures["scope"], "study"))
    screened_keys = set(studies["study_key"].to_pylist())
    failed_keys = set(study_failures["study_key"].to_pylist())
    complete = not (screened_keys & failed_keys) and len(screened_keys | failed_keys) == total
    by_reason = _counts(study_failures["reason"].to_pylist())
    by_category = _counts(studies["category"].to_pylist())
    seconds = time.time() - started
    stage_totals = {s: float(pc.sum(studies[f"{s}_s"]).as_py() or 0.0) for s in STAGES}
    manifest = {
        "run_id": run_id,
        "source": "<redacted>" if "://" in source and "@" in source else source,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": seconds,
        "complete": complete,
        "counts": {
            "studies": total,
            "screened": len(screened_keys),
            "failed": len(failed_keys),
            "files_skipped": failures.num_rows - study_failures.num_rows,
            "findings_reported": int(pc.sum(findings["reported"]).as_py() or 0) if findings.num_rows else 0,
            "by_reason": by_reason,
            "by_category": by_category,
        },
        "stage_seconds_total": stage_totals,
        "models": {
            spec.name: {"version": version, "spec_sha256": _sha(spec.to_parameter())}
            for spec, version in (
                (ctx.detector, ctx.detector_version),
                (ctx.classifier, ctx.classifier_version),
            )
        },
        "model_data": ctx.detector.training_data,
        "notice": ctx.detector.notice,
        "config": json.loads(cfg.model_dump_json()),
        "tables": paths,
        "schema_version": "1",
    }
    writer.write_text("run.json", json.dumps(manifest, indent=2, sort_keys=True))
    return RunSummary(
        run_id, writer.dest, total, len(screened_keys), len(failed_keys), 0,
        manifest["counts"]["findings_reported"], by_reason, by_category, seconds, None, complete,
    )  # fmt: skip


def _counts(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
