"""``lungscreen demo``: the one-command tour on an embedded default.

Generates a small synthetic cohort (a few studies carry faults), starts a local Triton server
and a local Dask cluster, screens the cohort, and prints what happened and where the tables
are. Everything it uses is generated or shipped: nothing is downloaded.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

from export.spec import SYNTHETIC_DATA_NOTICE
from pipeline.cli_screen import summary_table
from pipeline.config import load_config
from pipeline.job import DEFAULT_REPOSITORY, run_screen
from pipeline.serving import PROJECT_ROOT

console = Console()
DEMO_DIR = PROJECT_ROOT / "demo-output"
DEMO_FAULTS = {3: "missing_slice", 7: "non_ct", 11: "gantry_tilt", 15: "truncated_file", 18: "non_dicom_file"}


def demo_command(
    studies: int = typer.Option(20, min=1, help="Studies in the generated cohort."),
    seed: int = typer.Option(7, help="Cohort seed."),
    profile: str = typer.Option("screening", help="Synthetic profile: screening (512x512) or small."),
    out: Path = typer.Option(DEMO_DIR, help="Where the cohort and the run's tables go."),
    workers: int = typer.Option(2, min=1, help="Local Dask workers (and cohort rendering processes)."),
) -> None:
    """Generate a cohort, screen it through local Triton and Dask, and show the worklist."""
    from synth.cohort import generate_cohort

    started = time.monotonic()
    cohort = out / f"cohort-{profile}-{studies}-{seed}"
    if not (cohort / "truth_studies.parquet").exists():
        console.print(f"Generating {studies} synthetic studies ({profile}) in {cohort} ...")
        faults = {i: f for i, f in DEMO_FAULTS.items() if i < studies}
        summary = generate_cohort(cohort, studies, seed, profile, faults=faults, workers=workers)
        console.print(f"  {summary.studies} studies, {summary.findings} nodules, faults {summary.faults}")
    else:
        console.print(f"Reusing the cohort in {cohort}")
    generated = time.monotonic()
    dest = out / "run"
    shutil.rmtree(dest, ignore_errors=True)  # the demo's own previous run: every demo screens anew
    run_id = f"demo-{profile}-{studies}-{seed}"
    cfg = load_config(None, {"dask": {"n_workers": workers}})
    console.print("Screening: local Triton (CPU profile) + local Dask cluster ...")
    summary = run_screen(
        str(cohort),
        str(dest),
        cfg,
        run_id=run_id,
        repository=DEFAULT_REPOSITORY,
        on_dashboard=lambda link: console.print(f"Dask dashboard: {link}"),
    )
    console.print(summary_table(summary))
    console.print(worklist_table(dest / "worklist.parquet"))
    console.print(f"Tables: {dest} (studies, findings, failures, worklist.parquet/.jsonl, run.json)")
    console.print(f"[yellow]{SYNTHETIC_DATA_NOTICE}[/yellow]")
    console.print(
        f"Demo took {time.monotonic() - started:.0f} s "
        f"(cohort {generated - started:.0f} s, screening {summary.seconds:.0f} s)."
    )


def worklist_table(path: Path, top: int = 10) -> Table:
    """The first rows of the worklist, as a radiologist would see them."""
    rows = pq.read_table(path).to_pylist()[:top]
    table = Table(title=f"Worklist: top {len(rows)} (read first)")
    for col in ("priority", "accession", "Lung-RADS", "risk", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["priority"]), r["accession_number"] or "", r["category"], f"{r['risk']:.2f}", r["reason"]
        )
    return table
