"""Export: checkpoint -> ONNX (parity) -> Triton version folder -> the real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from export.checkpoint import Checkpoint
from export.model_export import export_checkpoint
from export.networks import CLASSIFIER_SPEC, DETECTOR_SPEC
from export.onnx import check_parity, export_onnx, parity_inputs
from export.repository import parse_config
from export.spec import SPEC_PARAMETER, ModelSpec
from export.tensorrt import (
    BatchProfile,
    GpuIdentity,
    PlanInfo,
    PlanMismatchError,
    TensorRTUnavailable,
    check_plan_matches,
)
from pipeline.serving import LocalTriton
from tests.support.tiny_networks import TINY_SPEC, tiny_checkpoint


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(seed=3)
    loaded = Checkpoint.load(ckpt.save(tmp_path / "c.pt"))
    assert loaded.spec == ckpt.spec
    x = torch.rand(1, 1, 32, 32, 32)
    torch.testing.assert_close(loaded.build()(x), ckpt.build()(x))


def test_test_time_flips_travel_with_the_spec_and_are_checked() -> None:
    assert ModelSpec.from_parameter(DETECTOR_SPEC.to_parameter()) == DETECTOR_SPEC
    assert DETECTOR_SPEC.test_time_flips
    older = json.loads(DETECTOR_SPEC.to_parameter())
    del older["test_time_flips"]  # a spec exported before the field existed runs one pass
    assert ModelSpec.from_parameter(json.dumps(older)).test_time_flips == ()
    with pytest.raises(ValueError, match="spatial axes 0-2"):
        ModelSpec.model_validate({**DETECTOR_SPEC.model_dump(), "test_time_flips": ((3,),)})
    with pytest.raises(ValueError, match="repeat"):
        ModelSpec.model_validate({**CLASSIFIER_SPEC.model_dump(), "test_time_flips": ((), (0,), (0,))})
    assert len(CLASSIFIER_SPEC.test_time_flips) == 8  # every combination of the three axes


def test_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a lungscreen-checkpoint/1"):
        Checkpoint.load(tmp_path / "x.pt")


def test_onnx_parity_passes_for_the_same_weights_and_fails_for_others(tmp_path: Path) -> None:
    onnx_path = export_onnx(tiny_checkpoint(0).build(), TINY_SPEC, tmp_path / "m.onnx")
    cases = parity_inputs(TINY_SPEC)
    same = check_parity(tiny_checkpoint(0).build(), onnx_path, cases)
    other = check_parity(tiny_checkpoint(1).build(), onnx_path, cases)
    assert same.passed and same.max_abs_error < 1e-4
    assert not other.passed and other.max_abs_error > 1e-3


def test_export_writes_a_version_with_the_spec_in_both_configs(tmp_path: Path) -> None:
    result = export_checkpoint(tiny_checkpoint(), tmp_path)
    model_dir = tmp_path / TINY_SPEC.name
    assert result.version_dir == model_dir / "1"
    assert sorted(p.name for p in result.version_dir.iterdir()) == ["model.onnx", "model.py"]
    for profile in ("cpu", "gpu"):
        cfg = parse_config((model_dir / "configs" / f"{profile}.pbtxt").read_text())
        assert ModelSpec.from_parameter(cfg.parameters[SPEC_PARAMETER].string_value) == TINY_SPEC
        assert list(cfg.input[0].dims) == [1, 32, 32, 32]
    assert export_checkpoint(tiny_checkpoint(), tmp_path).version_dir.name == "2"


def test_export_command_checks_parity_at_the_tolerances_it_is_given(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    ckpt = tiny_checkpoint().save(tmp_path / "tiny.pt")
    repo = tmp_path / "repo"
    args = ["export", str(ckpt), "--repository", str(repo), "--rtol", "0.02", "--atol", "0.003"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "(rtol 0.02, atol 0.003)" in " ".join(result.output.split())  # rich wraps long lines
    assert (repo / TINY_SPEC.name / "1" / "model.onnx").is_file()


@pytest.mark.triton
def test_exported_model_round_trip_through_triton_matches_pytorch(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(seed=5)
    export_checkpoint(ckpt, tmp_path)
    x = np.random.default_rng(1).uniform(0, 1, size=(3, 1, 32, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = ckpt.build()(torch.from_numpy(x)).numpy()
    with LocalTriton(tmp_path) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        config = client.get_model_config(TINY_SPEC.name, as_json=True)["config"]
        assert ModelSpec.from_triton_config(config) == TINY_SPEC
        inp = grpcclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(TINY_SPEC.name, [inp]).as_numpy("logits")
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


HERE = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
PLAN_MISMATCHES = (
    ("another GPU", GpuIdentity("NVIDIA A100-SXM4-80GB", "8.0", "10.13.0"), "A100"),
    ("another TensorRT", GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.9.0"), "TensorRT 10.9.0"),
)


@pytest.mark.parametrize(("what", "built_on", "word"), PLAN_MISMATCHES, ids=[m[0] for m in PLAN_MISMATCHES])
def test_a_plan_built_elsewhere_is_refused(
    tmp_path: Path, what: str, built_on: GpuIdentity, word: str
) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    PlanInfo(built_on, "fp16", BatchProfile(), "0" * 64, 1.0).write(plan)
    with pytest.raises(PlanMismatchError, match=word):
        check_plan_matches(plan, HERE)
    PlanInfo(HERE, "fp16", BatchProfile(), "0" * 64, 1.0).write(plan)
    assert check_plan_matches(plan, HERE).gpu == HERE


def test_a_plan_without_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.plan").write_bytes(b"engine")
    with pytest.raises(PlanMismatchError, match="GPU is unknown"):
        check_plan_matches(tmp_path / "model.plan", HERE)


def test_missing_tensorrt_says_what_to_install() -> None:
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from export.tensorrt import import_tensorrt

        with pytest.raises(TensorRTUnavailable, match=r"lungscreen\[gpu\]"):
            import_tensorrt()
    else:
        pytest.skip("TensorRT is installed here; the missing-TensorRT message cannot be shown")
