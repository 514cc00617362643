"""``lungscreen screen``: the screening job from the command line."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from prometheus_client import push_to_gateway, start_http_server
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from export.spec import SYNTHETIC_DATA_NOTICE
from pipeline.config import ConfigError, load_config
from pipeline.errors import LungscreenError
from pipeline.job import DEFAULT_REPOSITORY, RunSummary, new_run_id, run_screen
from pipeline.metrics import JobMetrics

console = Console()
PUSH_JOB = "lungscreen"


def summary_table(summary: RunSummary) -> Table:
    """Counts by status and category of a finished run."""
    table = Table(title=f"run {summary.run_id}: {summary.studies} studies in {summary.seconds:.0f} s")
    table.add_column("outcome")
    table.add_column("studies", justify="right")
    table.add_row("screened", str(summary.screened))
    for category, n in summary.by_category.items():
        table.add_row(f"  Lung-RADS {category}", str(n))
    table.add_row("failed", str(summary.failed))
    for reason, n in summary.by_reason.items():
        table.add_row(f"  {reason}", str(n))
    if summary.skipped_resumed:
        table.add_row("(already done by an earlier attempt)", str(summary.skipped_resumed))
    return table


def screen_command(
    source: str = typer.Argument(
        ..., help="Cohort: a directory, an fsspec URL (s3://...) or a manifest file."
    ),
    out: str = typer.Option(..., "--out", help="Destination directory or fsspec URL for the tables."),
    config: Path = typer.Option(None, "--config", exists=True, dir_okay=False, help="Job YAML."),
    scheduler: str = typer.Option(None, help="Dask scheduler address; default: a local cluster."),
    triton: str = typer.Option(None, help="Triton gRPC host:port; default: start a local server (CPU)."),
    run_id: str = typer.Option(None, help="Run id; the same id resumes an interrupted run."),
    repository: Path = typer.Option(DEFAULT_REPOSITORY, help="Model repository for the local server."),
    workers: int = typer.Option(None, min=1, help="Local Dask workers (default: one per core)."),
    metrics_port: int = typer.Option(None, help="Expose Prometheus metrics on this port during the run."),
    pushgateway: str = typer.Option(None, help="Push the run's metrics to this Pushgateway at the end."),
) -> None:
    """Screen a CT cohort: Dask streams studies through Triton into Parquet tables and a worklist."""
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = load_config(config, {"triton": {"url": triton}, "dask": {"n_workers": workers}})
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    run_id = run_id or new_run_id()
    metrics = JobMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr="0.0.0.0", registry=metrics.registry)
        console.print(f"metrics on :{metrics_port}/metrics")
    console.print(f"run id {run_id} (re-run with --run-id {run_id} to resume)")
    console.print(f"[yellow]{SYNTHETIC_DATA_NOTICE}[/yellow]")
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed, {task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("screening", total=None, failed=0, rate="")

            def progress(done: int, failed: int, total: int, in_flight: int) -> None:
                elapsed = bar.tasks[task].elapsed or 0.0
                rate = f"{60 * done / elapsed:.1f} studies/min, {in_flight} in flight" if elapsed else ""
                bar.update(task, completed=done, total=total, failed=failed, rate=rate)

            summary = run_screen(
                source,
                out,
                cfg,
                run_id=run_id,
                scheduler=scheduler,
                repository=repository,
                metrics=metrics,
                progress=progress,
                on_dashboard=lambda link: console.print(f"Dask dashboard: {link}"),
            )
    except LungscreenError as e:
        console.print(f"[red]The run stopped:[/red] {e}")
        push_metrics(pushgateway, metrics, run_id)
        raise typer.Exit(1) from None
    push_metrics(pushgateway, metrics, run_id)
    console.print(summary_table(summary))
    console.print(f"tables in {out} (studies, findings, failures, worklist, run.json)")
    if not summary.complete:
        console.print("[red]Not every study was accounted for; see run.json.[/red]")
        raise typer.Exit(1)


def push_metrics(gateway: str | None, metrics: JobMetrics, run_id: str) -> None:
    """Push a run's metrics to a Pushgateway, grouped by run id (the batch-job pattern)."""
    if gateway:
        push_to_gateway(gateway, job=PUSH_JOB, registry=metrics.registry, grouping_key={"run_id": run_id})
