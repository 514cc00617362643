"""Small MONAI networks and specs for export tests (seconds on CPU, not the reference models)."""

from __future__ import annotations

import torch

from export.checkpoint import Checkpoint, build_module
from export.spec import ModelSpec, ModelTask, TensorIO

TINY_UNET = "monai.networks.nets:BasicUNet"
TINY_UNET_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "features": (4, 4, 8, 8, 16, 4)}

TINY_SPEC = ModelSpec(
    name="tiny_detector",
    task=ModelTask.NODULE_SEGMENTATION,
    target_spacing_mm=(1.5, 1.5, 1.5),
    patch_size=(32, 32, 32),
    inputs=(TensorIO(name="image", shape=(1, 32, 32, 32), meaning="HU window scaled to 0..1"),),
    outputs=(TensorIO(name="logits", shape=(1, 32, 32, 32), meaning="nodule logit per voxel"),),
)


def tiny_checkpoint(seed: int = 0) -> Checkpoint:
    """A randomly initialised (seeded) tiny BasicUNet as a checkpoint."""
    torch.manual_seed(seed)
    module = build_module(TINY_UNET, TINY_UNET_KWARGS)
    return Checkpoint(TINY_UNET, TINY_UNET_KWARGS, module.state_dict(), TINY_SPEC, {"seed": seed})
