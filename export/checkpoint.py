"""The checkpoint format every exportable network uses, reference models or a user's own.

A checkpoint names how to build the network (an importable factory and its keyword
arguments), carries its weights and its :class:`~export.spec.ModelSpec`, and records how it
was trained. Any PyTorch ``nn.Module`` whose constructor is importable fits.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.spec import ModelSpec

FORMAT = "lungscreen-checkpoint/1"


@dataclass
class Checkpoint:
    """A network recipe, its weights, its contract and its provenance."""

    factory: str  # "package.module:callable"
    kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec
    training: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """Instantiate the network and load its weights, in eval mode."""
        module = build_module(self.factory, self.kwargs)
        module.load_state_dict(self.state_dict)
        return module.eval()

    def save(self, path: Path) -> Path:
        torch.save(
            {
                "format": FORMAT,
                "factory": self.factory,
                "kwargs": self.kwargs,
                "state_dict": self.state_dict,
                "spec": self.spec.to_parameter(),
                "training": self.training,
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a {FORMAT} checkpoint. Wrap your network with "
                "export.checkpoint.Checkpoint(factory=..., kwargs=..., state_dict=..., spec=...).save(path)."
            )
        return cls(
            factory=raw["factory"],
            kwargs=raw["kwargs"],
            state_dict=raw["state_dict"],
            spec=ModelSpec.from_parameter(raw["spec"]),
            training=raw.get("training", {}),
        )


def build_module(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    """Import ``package.module:callable`` and call it with ``kwargs``."""
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise ValueError(f"factory must look like 'package.module:callable', got {factory!r}")
    obj = getattr(importlib.import_module(module_name), attr)
    module = obj(**kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{factory} returned {type(module).__name__}, not a torch.nn.Module")
    return module
