"""``lungscreen export`` and ``lungscreen build-plans``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from export.checkpoint import Checkpoint
from export.model_export import build_plans, export_checkpoint
from export.onnx import ParityError
from export.tensorrt import Precision, TensorRTUnavailable
from pipeline.serving import PROJECT_ROOT

console = Console()
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"


def export_command(
    checkpoint: Path = typer.Argument(..., exists=True, dir_okay=False, help="A lungscreen checkpoint."),
    model: str = typer.Option(None, help="Model name in the repository (default: the checkpoint's spec)."),
    repository: Path = typer.Option(DEFAULT_REPOSITORY, help="Triton model repository to add a version to."),
    plan: bool = typer.Option(False, help="Also build a TensorRT plan for this machine's GPU."),
    precision: Precision = typer.Option(Precision.FP16, help="TensorRT precision."),
    max_batch_size: int = typer.Option(8, min=1, help="Triton max_batch_size and the plan's max batch."),
) -> None:
    """Export a checkpoint to ONNX (checked against PyTorch) as a new Triton version."""
    ckpt = Checkpoint.load(checkpoint)
    if model and model != ckpt.spec.name:
        ckpt.spec = ckpt.spec.model_copy(update={"name": model})
    try:
        result = export_checkpoint(
            ckpt, repository, plan=plan, precision=precision, max_batch_size=max_batch_size
        )
    except (ParityError, TensorRTUnavailable) as e:
        console.print(f"[red]Export failed:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"Wrote {result.version_dir}  ONNX {result.onnx_parity.summary()}")
    if result.plan is not None:
        console.print(
            f"TensorRT plan for {result.plan.gpu.gpu_name} ({result.plan.precision}), "
            f"max abs error vs ONNX Runtime {result.plan_max_abs_error:.3g}"
        )


def build_plans_command(
    repository: Path = typer.Option(DEFAULT_REPOSITORY, help="Triton model repository."),
    precision: Precision = typer.Option(Precision.FP16, help="TensorRT precision."),
    force: bool = typer.Option(False, help="Rebuild even plans that match this GPU."),
) -> None:
    """Build a TensorRT plan for this GPU in every version folder that lacks a matching one."""
    try:
        done = build_plans(repository, precision=precision, force=force)
    except TensorRTUnavailable as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    for version_dir, what in done.items():
        console.print(f"{what:>5}  {version_dir}")
