"""``lungscreen export``, ``build-plans``, ``train`` and ``evaluate``.

torch, ONNX and the training code are imported inside the commands: every ``lungscreen``
command (the screening job's driver among them) imports this module to build the CLI.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console

from export.recipe import ReferenceRecipe, TrainConfig, TrainPrecision
from export.tensorrt import Precision, TensorRTUnavailable
from pipeline.analysis import CANDIDATE_THRESHOLD
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
    parity_data: Path = typer.Option(
        None,
        exists=True,
        file_okay=False,
        help="Cached studies (lungscreen train's *-cache): realistic parity inputs, INT8 calibration.",
    ),
    rtol: float = typer.Option(1e-3, min=0.0, help="ONNX Runtime vs PyTorch: relative tolerance."),
    atol: float = typer.Option(1e-4, min=0.0, help="ONNX Runtime vs PyTorch: absolute tolerance."),
) -> None:
    """Export a checkpoint to ONNX (checked against PyTorch) as a new Triton version."""
    from export.checkpoint import Checkpoint
    from export.model_export import export_checkpoint
    from export.onnx import ParityError

    ckpt = Checkpoint.load(checkpoint)
    if model and model != ckpt.spec.name:
        ckpt.spec = ckpt.spec.model_copy(update={"name": model})
    realistic = realistic_inputs(parity_data, ckpt.spec.patch_size) if parity_data else []
    try:
        result = export_checkpoint(
            ckpt,
            repository,
            realistic_inputs=realistic,
            plan=plan,
            precision=precision,
            max_batch_size=max_batch_size,
            calibration=realistic,
            rtol=rtol,
            atol=atol,
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


def realistic_inputs(cache_dir: Path, patch: tuple[int, int, int], studies: int = 2) -> list:
    """Patches of real-looking preprocessed CT: around a nodule when there is one, else the lungs."""
    import numpy as np

    from export.dataset import load_cached
    from pipeline.postprocess import crop_around

    out = []
    for path in sorted(cache_dir.glob("*.npz"))[:studies]:
        study = load_cached(path)
        centre = study.nodules[0].center_ijk if study.nodules else [(s.start + s.stop) / 2 for s in study.box]
        out.append(crop_around(study.image, centre, patch)[None, None].astype(np.float32))
    return out


def build_plans_command(
    repository: Path = typer.Option(DEFAULT_REPOSITORY, help="Triton model repository."),
    precision: Precision = typer.Option(Precision.FP16, help="TensorRT precision."),
    force: bool = typer.Option(False, help="Rebuild even plans that match this GPU."),
) -> None:
    """Build a TensorRT plan for this GPU in every version folder that lacks a matching one."""
    from export.model_export import build_plans

    try:
        done = build_plans(repository, precision=precision, force=force)
    except TensorRTUnavailable as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    for version_dir, what in done.items():
        console.print(f"{what:>5}  {version_dir}")


DEFAULT_WORKDIR = PROJECT_ROOT / ".cache" / "models"
_RECIPE = ReferenceRecipe()


def train_command(
    workdir: Path = typer.Option(DEFAULT_WORKDIR, help="Where cohorts, caches and checkpoints go."),
    train_studies: int = typer.Option(_RECIPE.train_studies, min=1, help="Synthetic training studies."),
    detector_steps: int = typer.Option(_RECIPE.detector.steps, min=1, help="Detector optimisation steps."),
    restarts: int = typer.Option(
        len(_RECIPE.detector_restarts),
        min=0,
        help="Warm restarts of the detector: further cosine cycles, each from the previous weights.",
    ),
    restart_steps: int = typer.Option(
        None, min=1, help="Steps of each warm restart (default: the recipe's)."
    ),
    classifier_steps: int = typer.Option(
        _RECIPE.classifier.steps, min=1, help="Classifier optimisation steps."
    ),
    profile: str = typer.Option(_RECIPE.train_profile, help="Synthetic training cohort profile."),
    device: str = typer.Option("cpu", help="Torch device to train on: cpu, cuda, cuda:1 ..."),
    workers: int = typer.Option(1, min=1, help="Processes rendering and caching the cohort."),
    loader_workers: int = typer.Option(0, min=0, help="Processes making detector batches (0: none)."),
    precision: TrainPrecision = typer.Option(
        None,
        help="Every stage's precision (default: the recipe's per stage); auto: bf16 where the device "
        "has it in hardware, else fp32.",
    ),
    detector_from: Path = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Reuse this detector checkpoint; train the classifier only.",
    ),
) -> None:
    """Train both reference models on a synthetic cohort (seeded; CPU-feasible, faster on a GPU)."""
    from export.reference import train_reference

    if device.startswith("cuda") and not _cuda_available():
        console.print(f"[red]--device {device}: this torch build sees no CUDA device.[/red]")
        raise typer.Exit(2)

    def stage(cfg: TrainConfig, **changes: object) -> TrainConfig:
        if precision is not None:
            changes["precision"] = precision.value
        return replace(cfg, device=device, **changes)

    # Restarts beyond the recipe's repeat its last one (or the first cycle) on further seeds, so
    # none replays another's batches.
    planned = _RECIPE.detector_restarts or (_RECIPE.detector,)
    last = planned[-1]
    cycles = [
        planned[i] if i < len(_RECIPE.detector_restarts) else replace(last, seed=last.seed + i + 1)
        for i in range(restarts)
    ]
    recipe = replace(
        _RECIPE,
        train_studies=train_studies,
        train_profile=profile,
        workers=workers,
        detector=stage(_RECIPE.detector, steps=detector_steps, loader_workers=loader_workers),
        detector_restarts=tuple(
            stage(c, steps=restart_steps or c.steps, loader_workers=loader_workers) for c in cycles
        ),
        classifier=stage(_RECIPE.classifier, steps=classifier_steps),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    det, cls = train_reference(workdir, recipe, console.print, detector_from)
    console.print(f"checkpoints: {det} {cls}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def evaluate_command(
    workdir: Path = typer.Option(DEFAULT_WORKDIR, help="Where the evaluation cohorts and caches go."),
    checkpoints: Path | None = typer.Option(
        None,
        help="Folder with both checkpoints (default: the workdir, where `lungscreen train` leaves "
        "them); export/checkpoints measures the committed weights.",
    ),
    eval_studies: int = typer.Option(24, min=1, help="Held-out synthetic studies (a seed never trained on)."),
    profile: str = typer.Option(_RECIPE.eval_profile, help="Synthetic held-out cohort profile."),
    threshold: float = typer.Option(
        CANDIDATE_THRESHOLD, min=0.0, max=1.0, help="Detector threshold for candidates (the job's default)."
    ),
    tune_studies: int = typer.Option(
        _RECIPE.tune_studies, min=1, help="Tuning cohort studies (choose the score weight on them)."
    ),
    score_weight: float = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help="Detector weight of a finding's score (default: chosen on the tuning cohort).",
    ),
    repository: Path = typer.Option(DEFAULT_REPOSITORY, help="Where the model cards are written."),
    cards: bool = typer.Option(True, help="Write the model cards and FROC curve into the repository."),
) -> None:
    """Evaluate the trained models on a held-out synthetic cohort (FROC, CPM, AUC, type accuracy)."""
    from export.networks import CLASSIFIER_SPEC, DETECTOR_SPEC
    from export.reference import evaluate_reference, write_model_cards
    from pipeline.analysis import AnalysisConfig

    recipe = replace(_RECIPE, eval_studies=eval_studies, tune_studies=tune_studies, eval_profile=profile)
    checkpoints = checkpoints or workdir
    result = evaluate_reference(
        checkpoints / f"{DETECTOR_SPEC.name}.pt",
        checkpoints / f"{CLASSIFIER_SPEC.name}.pt",
        workdir,
        recipe,
        AnalysisConfig(candidate_threshold=threshold),
        console.print,
        score_weight,
    )
    console.print(result.to_json())
    if cards:
        weight = f"--score-weight {score_weight:g}" if score_weight is not None else ""
        command = (
            f"lungscreen evaluate --checkpoints {_shown(checkpoints)} --eval-studies {eval_studies} "
            f"--tune-studies {tune_studies} --profile {profile} --threshold {threshold} {weight}"
        ).strip()
        for path in write_model_cards(repository, result, checkpoints, workdir, command):
            console.print(f"wrote {path}")


def _shown(path: Path) -> str:
    """A path as a card shows it: relative to the project where it is inside, so a clone can run it."""
    resolved = path.resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else str(path)
