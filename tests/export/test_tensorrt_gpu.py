"""TensorRT build and parity: runs where CUDA and TensorRT are present, skips elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.model_export import build_plans, export_checkpoint
from export.onnx import export_onnx, parity_inputs
from export.tensorrt import BatchProfile, Precision, build_plan, check_plan_matches, run_plan
from tests.support.tiny_networks import TINY_SPEC, tiny_checkpoint

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU on this machine: TensorRT tests need one", allow_module_level=True)
try:
    import tensorrt  # noqa: F401
except ImportError:
    pytest.skip("TensorRT is not installed (pip install 'lungscreen[gpu]')", allow_module_level=True)


@pytest.mark.parametrize(("precision", "atol"), [(Precision.FP32, 1e-3), (Precision.FP16, 3e-2)])
def test_plan_matches_onnx_runtime(tmp_path: Path, precision: Precision, atol: float) -> None:
    import onnxruntime as ort

    onnx_path = export_onnx(tiny_checkpoint().build(), TINY_SPEC, tmp_path / "model.onnx")
    plan = tmp_path / "model.plan"
    cache = tmp_path / "timing.cache"
    info = build_plan(onnx_path, plan, precision=precision, batch=BatchProfile(1, 2, 4), timing_cache=cache)
    assert cache.stat().st_size > 0
    assert check_plan_matches(plan) == info
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for (x,) in parity_inputs(TINY_SPEC):
        expected = session.run(None, {"image": x})[0]
        got = run_plan(plan, {"image": x})["logits"]
        np.testing.assert_allclose(got, expected, atol=atol, rtol=0)


def test_int8_with_calibration_builds(tmp_path: Path) -> None:
    onnx_path = export_onnx(tiny_checkpoint().build(), TINY_SPEC, tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    batches = (rng.uniform(0, 1, size=(2, 1, 32, 32, 32)).astype(np.float32) for _ in range(4))
    info = build_plan(onnx_path, tmp_path / "model.plan", precision=Precision.INT8, calibration=batches)
    assert info.precision == "int8"


def test_export_with_plan_and_build_plans_keeps_a_matching_plan(tmp_path: Path) -> None:
    result = export_checkpoint(tiny_checkpoint(), tmp_path, plan=True)
    assert result.plan is not None and result.plan_max_abs_error is not None
    assert result.plan_max_abs_error < 3e-2
    assert set(build_plans(tmp_path).values()) == {"kept"}
    assert set(build_plans(tmp_path, force=True).values()) == {"built"}
