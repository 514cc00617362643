"""``lungscreen synth``: write a synthetic chest CT cohort with ground truth."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from synth.acquisition import PROFILES
from synth.faults import FAULT_NAMES


def parse_faults(spec: str | None) -> list[str | None] | str | None:
    """``None`` | ``"all"`` | comma list (empty or ``none`` = clean) assigned to studies 0, 1, ..."""
    if spec is None or spec == "":
        return None
    if spec.strip() == "all":
        return "all"
    return [s.strip() or None for s in spec.split(",")]


def synth_command(
    studies: int = typer.Option(4, "--studies", min=1, help="Number of studies."),
    seed: int = typer.Option(0, "--seed", help="Cohort seed: same seed, same pixels."),
    out: Path = typer.Option(Path("synth-cohort"), "--out", help="Output folder."),
    profile: str = typer.Option("screening", "--profile", help=f"One of: {', '.join(PROFILES)}."),
    faults: str | None = typer.Option(
        None,
        "--faults",
        help=f"Comma list of faults for studies 0,1,... ('none' = clean), or 'all' to give the first "
        f"{len(FAULT_NAMES)} studies one fault each. Known: {', '.join(FAULT_NAMES)}.",
    ),
    preview: bool = typer.Option(False, "--preview", help="Also write OUT/preview.png through a nodule."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes rendering studies (same cohort)."),
) -> None:
    """Generate a synthetic chest CT cohort (DICOM + truth.parquet). SYNTHETIC DATA, not patients."""
    from synth.cohort import generate_cohort
    from synth.preview import write_preview

    if profile not in PROFILES:
        raise typer.BadParameter(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    try:
        summary = generate_cohort(out, studies, seed, profile, parse_faults(faults), workers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console()
    table = Table(title=f"synthetic cohort: {out}")
    table.add_column("item")
    table.add_column("value")
    table.add_row("studies", str(summary.studies))
    table.add_row("nodules", str(summary.findings))
    table.add_row("faults", ", ".join(f"{k}×{v}" for k, v in summary.faults.items()) or "none")
    table.add_row("truth", str(summary.truth_path))
    table.add_row("studies table", str(summary.studies_path))
    table.add_row("seconds", f"{summary.seconds:.1f} ({summary.seconds / summary.studies:.1f}/study)")
    if preview:
        import pyarrow.parquet as pq

        rows = pq.read_table(summary.truth_path).to_pylist()
        study = max(rows, key=lambda r: r["diameter_mm"])["study_dir"] if rows else "study-0000"
        png = write_preview(Path(out) / study, Path(out) / "preview.png")
        table.add_row("preview", str(png))
    console.print(table)
