"""PyTorch to ONNX with a dynamic batch axis, checked by onnx and by ONNX Runtime parity."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.spec import ModelSpec

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime's outputs are from PyTorch's over a set of inputs."""

    n_inputs: int
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    passed: bool

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"parity {verdict} on {self.n_inputs} inputs: max abs {self.max_abs_error:.3g}, "
            f"max rel {self.max_rel_error:.3g} (rtol {self.rtol:g}, atol {self.atol:g})"
        )


class ParityError(ValueError):
    """An exported model disagrees with its source beyond tolerance."""


def export_onnx(module: nn.Module, spec: ModelSpec, path: Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``module`` to ``path`` with the spec's tensor names and a dynamic batch axis."""
    module = module.eval()
    example = tuple(torch.zeros((2, *t.shape), dtype=torch.float32) for t in spec.inputs)
    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    dynamic = {n: {0: "batch"} for n in (*names_in, *names_out)}
    with warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and shape inference notes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return path


def check_parity(
    module: nn.Module,
    onnx_path: Path,
    inputs: Sequence[Sequence[np.ndarray]],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> ParityReport:
    """Run every input tuple through PyTorch and ONNX Runtime; compare every output."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    module = module.eval()
    max_abs = max_rel = 0.0
    passed = True
    for arrays in inputs:
        with torch.no_grad():
            ref = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        refs = [r.numpy() for r in (ref if isinstance(ref, tuple | list) else (ref,))]
        outs = session.run(None, dict(zip(names, arrays, strict=True)))
        for r, o in zip(refs, outs, strict=True):
            diff = np.abs(r.astype(np.float64) - o.astype(np.float64))
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            max_rel = max(max_rel, float((diff / (np.abs(r) + atol)).max(initial=0.0)))
            passed &= bool(np.allclose(o, r, rtol=rtol, atol=atol))
    return ParityReport(len(inputs), max_abs, max_rel, rtol, atol, passed)


def parity_inputs(
    spec: ModelSpec, realistic: Sequence[np.ndarray] = (), *, seed: int = 0, batch: int = 2
) -> list[list[np.ndarray]]:
    """Random inputs in the model's value range plus any realistic ones (e.g. cohort patches)."""
    rng = np.random.default_rng(seed)
    cases = [
        [rng.uniform(0.0, 1.0, size=(batch, *t.shape)).astype(np.float32) for t in spec.inputs],
        [rng.normal(0.5, 0.3, size=(1, *t.shape)).astype(np.float32) for t in spec.inputs],
    ]
    cases.extend([np.asarray(r, dtype=np.float32)] for r in realistic)
    return cases
