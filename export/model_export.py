"""From a checkpoint to a new Triton version folder: ONNX, parity, configs, optional plan."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.checkpoint import Checkpoint
from export.onnx import ParityError, ParityReport, check_parity, export_onnx, parity_inputs
from export.repository import (
    ONNX_FILENAME,
    PLAN_FILENAME,
    DataType,
    ModelDefinition,
    TensorSpec,
    write_configs,
    write_version,
)
from export.spec import SPEC_PARAMETER, ModelSpec
from export.tensorrt import (
    BatchProfile,
    PlanInfo,
    PlanMismatchError,
    Precision,
    build_plan,
    check_plan_matches,
    run_plan,
    sha256_file,
)


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote and measured."""

    version_dir: Path
    onnx_parity: ParityReport
    plan: PlanInfo | None
    plan_max_abs_error: float | None


def definition_from_spec(
    spec: ModelSpec,
    *,
    max_batch_size: int = 8,
    preferred: tuple[int, ...] = (4, 8),
    queue_delay_us: int = 2000,
) -> ModelDefinition:
    """The Triton model definition of a spec, with the spec itself as a config parameter."""
    return ModelDefinition(
        name=spec.name,
        inputs=tuple(TensorSpec(t.name, DataType(t.dtype), t.shape) for t in spec.inputs),
        outputs=tuple(TensorSpec(t.name, DataType(t.dtype), t.shape) for t in spec.outputs),
        max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(b for b in preferred if b <= max_batch_size),
        max_queue_delay_us=queue_delay_us,
        parameters={SPEC_PARAMETER: spec.to_parameter()},
    )


def export_checkpoint(
    checkpoint: Checkpoint,
    repository: Path,
    *,
    realistic_inputs: Sequence[np.ndarray] = (),
    plan: bool = False,
    precision: Precision | str = Precision.FP16,
    max_batch_size: int = 8,
    calibration: Sequence[np.ndarray] = (),
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``checkpoint`` as a new version of its model in ``repository``.

    ONNX Runtime must match PyTorch within tolerance, or nothing is written. With ``plan``,
    a TensorRT engine is built for this GPU and checked against ONNX Runtime too; INT8 plans
    are calibrated on ``calibration`` batches (preprocessed inputs from a cohort sample).
    """
    module = checkpoint.build()
    spec = checkpoint.spec
    model_dir = repository / spec.name
    with tempfile.TemporaryDirectory(prefix="lungscreen-export-") as tmp:
        onnx_path = export_onnx(module, spec, Path(tmp) / ONNX_FILENAME)
        cases = parity_inputs(spec, realistic_inputs)
        report = check_parity(module, onnx_path, cases, rtol=rtol, atol=atol)
        if not report.passed:
            raise ParityError(f"{spec.name}: ONNX Runtime disagrees with PyTorch: {report.summary()}")
        plan_info: PlanInfo | None = None
        plan_error: float | None = None
        plan_path: Path | None = None
        if plan:
            plan_path = Path(tmp) / PLAN_FILENAME
            batch = BatchProfile(1, min(4, max_batch_size), max_batch_size)
            plan_info = build_plan(
                onnx_path, plan_path, precision=precision, batch=batch, calibration=calibration or None
            )
            plan_error = plan_parity(plan_path, onnx_path, cases)
        write_configs(definition_from_spec(spec, max_batch_size=max_batch_size), model_dir)
        extra = {PLAN_FILENAME + ".json": plan_path.with_name(PLAN_FILENAME + ".json")} if plan_path else None
        version_dir = write_version(model_dir, onnx_path, plan_path=plan_path, extra_files=extra)
    return ExportResult(version_dir, report, plan_info, plan_error)


def plan_parity(plan_path: Path, onnx_path: Path, cases: Sequence[Sequence[np.ndarray]]) -> float:
    """Largest absolute difference between the engine and ONNX Runtime over ``cases``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    worst = 0.0
    for arrays in cases:
        feed = dict(zip(names, arrays, strict=True))
        ref = dict(zip(out_names, session.run(None, feed), strict=True))
        got = run_plan(plan_path, feed)
        for name, value in ref.items():
            worst = max(worst, float(np.abs(got[name].astype(np.float64) - value).max(initial=0.0)))
    return worst


def build_plans(
    repository: Path, *, precision: Precision | str = Precision.FP16, force: bool = False
) -> dict[Path, str]:
    """Make sure every version folder with an ONNX file has a plan for this GPU.

    A plan whose record matches this GPU and TensorRT is kept; any other is rebuilt. Returns
    version folder -> "kept" or "built". The Helm chart's init container runs this.
    """
    done: dict[Path, str] = {}
    for onnx_path in sorted(repository.glob(f"*/[0-9]*/{ONNX_FILENAME}")):
        plan_path = onnx_path.with_name(PLAN_FILENAME)
        if plan_path.exists() and not force and _plan_usable(plan_path, onnx_path):
            done[onnx_path.parent] = "kept"
            continue
        build_plan(onnx_path, plan_path, precision=precision)
        done[onnx_path.parent] = "built"
    return done


def _plan_usable(plan_path: Path, onnx_path: Path) -> bool:
    """True when the plan was built here, from this very ONNX file."""
    try:
        info = check_plan_matches(plan_path)
    except PlanMismatchError:
        return False
    return info.onnx_sha256 == sha256_file(onnx_path)
