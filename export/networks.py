"""The two reference models: their MONAI networks and their specs.

Both are small on purpose: a 512x512x300 study must screen in well under a minute on two CPU
cores through Triton's CPU profile. They are trained on synthetic data only.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from export.spec import ModelSpec, ModelTask, TensorIO

NODULE_TYPES = ("solid", "part_solid", "ground_glass", "calcified")

DETECTOR_NAME = "lung_nodule_detector"
CLASSIFIER_NAME = "lung_nodule_classifier"

DETECTOR_FACTORY = "monai.networks.nets:BasicUNet"
DETECTOR_KWARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "features": (8, 8, 16, 32, 64, 8),
}
DETECTOR_PATCH = (64, 64, 64)

CLASSIFIER_FACTORY = "monai.networks.nets:Classifier"
CLASSIFIER_CROP = (32, 32, 32)
# Output slots of the classifier's single vector: [nodule logit, malignancy logit, 4 type logits].
CLASSIFIER_SLOTS = {"nodule": 0, "malignancy": 1, "type": slice(2, 2 + len(NODULE_TYPES))}
CLASSIFIER_KWARGS: dict[str, Any] = {
    "in_shape": (1, *CLASSIFIER_CROP),
    "classes": 2 + len(NODULE_TYPES),
    "channels": (16, 32, 64, 96),
    "strides": (2, 2, 2, 2),
    "num_res_units": 1,
    "dropout": 0.1,
    # Batch, not MONAI's default instance norm: normalizing each crop's own 2x2x2 final map
    # erased absolute density, the cue between ground-glass and solid nodules (type accuracy
    # with the same data and steps: tuning cohort 0.727 -> 0.909, held-out 0.765 -> 0.853;
    # export/README.md).
    "norm": "batch",
}

SPACING_MM = (1.5, 1.5, 1.5)
HU_WINDOW = (-1000.0, 400.0)

DETECTOR_SPEC = ModelSpec(
    name=DETECTOR_NAME,
    task=ModelTask.NODULE_SEGMENTATION,
    target_spacing_mm=SPACING_MM,
    hu_window=HU_WINDOW,
    patch_size=DETECTOR_PATCH,
    overlap=0.25,
    # The patch as it is and mirrored along each axis (training flips patches the same way).
    # Measured on the held-out cohort (export/README.md): fewer false positives per scan at
    # every candidate threshold, for four times the detector's compute.
    test_time_flips=((), (0,), (1,), (2,)),
    inputs=(
        TensorIO(name="image", shape=(1, *DETECTOR_PATCH), meaning="HU window -1000..400 scaled to 0..1"),
    ),
    outputs=(TensorIO(name="logits", shape=(1, *DETECTOR_PATCH), meaning="nodule logit per voxel"),),
)

CLASSIFIER_SPEC = ModelSpec(
    name=CLASSIFIER_NAME,
    task=ModelTask.CANDIDATE_CLASSIFICATION,
    target_spacing_mm=SPACING_MM,
    hu_window=HU_WINDOW,
    patch_size=CLASSIFIER_CROP,
    overlap=0.0,
    inputs=(TensorIO(name="crop", shape=(1, *CLASSIFIER_CROP), meaning="crop centred on a candidate, 0..1"),),
    outputs=(
        TensorIO(
            name="scores",
            shape=(2 + len(NODULE_TYPES),),
            meaning="[nodule logit, malignancy logit, type logits: " + ", ".join(NODULE_TYPES) + "]",
        ),
    ),
    classes=NODULE_TYPES,
    # Every combination of flips (8 passes per crop; a study has at most a few dozen crops).
    # Measured on the held-out cohort (export/README.md): better type accuracy and malignancy
    # AUC, the same CPM.
    test_time_flips=tuple(axes for k in range(4) for axes in combinations(range(3), k)),
)
