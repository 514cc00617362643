"""ONNX to a TensorRT plan, with the GPU it was built for recorded beside it.

TensorRT is an optional extra (``pip install 'lungscreen[gpu]'``): every import is lazy, and
a machine without it gets :class:`TensorRTUnavailable` with what to install. Plans only run
on the GPU model and TensorRT version they were built with, so each ``model.plan`` has a
``model.plan.json`` beside it, and :func:`check_plan_matches` refuses a plan built elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.errors import LungscreenError

PLAN_META_SUFFIX = ".json"


class TensorRTUnavailable(LungscreenError):
    """TensorRT or a CUDA GPU is missing on this machine."""


class PlanMismatchError(LungscreenError):
    """A plan was built for another GPU or TensorRT version than the one here."""


class Precision(StrEnum):
    """Builder precision: FP16 by default; INT8 needs calibration data."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch sizes (the rest of the shape is fixed by the model)."""

    min: int = 1
    opt: int = 4
    max: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


@dataclass(frozen=True)
class GpuIdentity:
    """What a plan is tied to."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str


@dataclass(frozen=True)
class PlanInfo:
    """The record written beside every plan (``model.plan.json``)."""

    gpu: GpuIdentity
    precision: str
    batch_profile: BatchProfile
    onnx_sha256: str
    build_seconds: float

    def write(self, plan_path: Path) -> Path:
        path = plan_path.with_name(plan_path.name + PLAN_META_SUFFIX)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, plan_path: Path) -> PlanInfo:
        path = plan_path.with_name(plan_path.name + PLAN_META_SUFFIX)
        if not path.is_file():
            raise PlanMismatchError(f"{plan_path} has no {path.name}: its GPU is unknown; rebuild it here.")
        raw = json.loads(path.read_text())
        return cls(
            gpu=GpuIdentity(**raw["gpu"]),
            precision=raw["precision"],
            batch_profile=BatchProfile(**raw["batch_profile"]),
            onnx_sha256=raw["onnx_sha256"],
            build_seconds=raw["build_seconds"],
        )


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` with a message that says what to do when it is missing."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed. On a machine with an NVIDIA GPU run "
            "`pip install 'lungscreen[gpu]'`; CPU machines serve the ONNX file (CPU profile) instead."
        ) from e
    return trt


def current_gpu() -> GpuIdentity:
    """The GPU and TensorRT of this machine (device 0)."""
    import torch

    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("No CUDA GPU is visible: TensorRT plans can only be built on one.")
    major, minor = torch.cuda.get_device_capability(0)
    return GpuIdentity(torch.cuda.get_device_name(0), f"{major}.{minor}", trt.__version__)


def check_plan_matches(plan_path: Path, here: GpuIdentity | None = None) -> PlanInfo:
    """Refuse a plan built for another GPU model, compute capability or TensorRT version."""
    info = PlanInfo.read(plan_path)
    here = here or current_gpu()
    if info.gpu != here:
        raise PlanMismatchError(
            f"{plan_path} was built for {info.gpu.gpu_name} (sm {info.gpu.compute_capability}, TensorRT "
            f"{info.gpu.tensorrt_version}) but this machine has {here.gpu_name} (sm "
            f"{here.compute_capability}, TensorRT {here.tensorrt_version}). Rebuild it here with "
            "`lungscreen build-plans`."
        )
    return info


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    *,
    precision: Precision | str = Precision.FP16,
    batch: BatchProfile | None = None,
    calibration: Iterable[np.ndarray] | None = None,
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
) -> PlanInfo:
    """Build a TensorRT engine for this GPU from ``onnx_path`` and write it with its record.

    ``calibration`` yields float32 input batches (for example preprocessed patches of a cohort
    sample) and is required for INT8. The timing cache, when given, is read first and saved
    after, so rebuilds on the same GPU take seconds.
    """
    trt = import_tensorrt()
    precision = Precision(precision)
    batch = batch or BatchProfile()
    here = current_gpu()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise LungscreenError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
    config.add_optimization_profile(profile)
    if precision in (Precision.FP16, Precision.INT8):
        _set_flag(trt, config, "FP16")
    calibrator = None
    if precision is Precision.INT8:
        if calibration is None:
            raise ValueError("INT8 needs calibration batches (a sample of preprocessed inputs).")
        _set_flag(trt, config, "INT8")
        calibrator = make_calibrator(trt, calibration, plan_path.with_suffix(".calib"))
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    cached = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() else b""
    cache = config.create_timing_cache(cached)
    config.set_timing_cache(cache, ignore_mismatch=False)
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LungscreenError(f"TensorRT failed to build an engine from {onnx_path} (see its log above).")
    plan_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    info = PlanInfo(here, precision.value, batch, sha256_file(onnx_path), time.monotonic() - started)
    info.write(plan_path)
    return info


def _set_flag(trt: ModuleType, config: Any, name: str) -> None:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} has no {name} builder flag (weakly typed precision was removed); "
            "build with --precision fp32."
        )
    config.set_flag(flag)


def make_calibrator(trt: ModuleType, batches: Iterable[np.ndarray], cache_path: Path) -> Any:
    """An entropy calibrator fed from host batches through torch CUDA buffers."""
    import torch

    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} has no implicit INT8 calibration.")

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self._batches: Iterator[np.ndarray] = iter(batches)
            self._device: torch.Tensor | None = None
            self._batch_size = 1

        def get_batch_size(self) -> int:
            return self._batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            try:
                host = np.ascontiguousarray(next(self._batches), dtype=np.float32)
            except StopIteration:
                return None
            self._batch_size = host.shape[0]
            self._device = torch.from_numpy(host).cuda()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.exists() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_path.write_bytes(bytes(cache))

    return _Calibrator()


def run_plan(plan_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a plan once on this GPU (for parity checks), buffers held by torch."""
    import torch

    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise PlanMismatchError(f"TensorRT could not deserialize {plan_path}; rebuild it on this GPU.")
    context = engine.create_execution_context()
    buffers: dict[str, torch.Tensor] = {}
    for name, array in inputs.items():
        buffers[name] = torch.from_numpy(np.ascontiguousarray(array)).cuda()
        context.set_input_shape(name, tuple(array.shape))
    outputs: list[str] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            outputs.append(name)
        context.set_tensor_address(name, int(buffers[name].data_ptr()))
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise LungscreenError(f"TensorRT execution of {plan_path} failed.")
    stream.synchronize()
    return {name: buffers[name].cpu().numpy() for name in outputs}
