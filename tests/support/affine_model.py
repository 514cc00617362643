"""A test-only model: ``y = 2 x + 1`` on a batch of 4-vectors, built as ONNX in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.repository import DataType, ModelDefinition, TensorSpec, write_configs, write_version

AFFINE = ModelDefinition(
    name="affine",
    inputs=(TensorSpec("x", DataType.FP32, (4,)),),
    outputs=(TensorSpec("y", DataType.FP32, (4,)),),
    max_batch_size=8,
    preferred_batch_sizes=(4, 8),
    max_queue_delay_us=500,
)


def affine_reference(x: np.ndarray) -> np.ndarray:
    """What the model computes, for assertions."""
    return 2.0 * x + 1.0


def build_affine_onnx(path: Path) -> Path:
    """Write the ONNX graph of the test model (dynamic batch axis) and return its path."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["x2"]), helper.make_node("Add", ["x2", "one"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def add_affine_model(repository: Path) -> Path:
    """Add the test model (configs and version 1) to a model repository."""
    model_dir = repository / AFFINE.name
    write_configs(AFFINE, model_dir)
    onnx_path = build_affine_onnx(repository.parent / "affine.onnx")
    write_version(model_dir, onnx_path, version=1)
    return model_dir
