"""The committed reference models: configs, cards, and a Triton round trip against PyTorch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from export.checkpoint import Checkpoint
from export.networks import CLASSIFIER_NAME, DETECTOR_NAME
from export.repository import parse_config
from export.spec import SPEC_PARAMETER, SYNTHETIC_DATA_NOTICE, ModelSpec
from pipeline.job import DEFAULT_REPOSITORY
from pipeline.serving import LocalTriton

CHECKPOINTS = Path(__file__).resolve().parents[2] / "export" / "checkpoints"
MODELS = (DETECTOR_NAME, CLASSIFIER_NAME)


@pytest.mark.parametrize("name", MODELS)
def test_both_profiles_carry_the_checkpoints_spec(name: str) -> None:
    spec = Checkpoint.load(CHECKPOINTS / f"{name}.pt").spec
    for profile in ("cpu", "gpu"):
        cfg = parse_config((DEFAULT_REPOSITORY / name / "configs" / f"{profile}.pbtxt").read_text())
        assert ModelSpec.from_parameter(cfg.parameters[SPEC_PARAMETER].string_value) == spec
    assert spec.training_data == "synthetic"


@pytest.mark.parametrize("name", MODELS)
def test_model_cards_say_synthetic_and_show_measured_figures(name: str) -> None:
    card = (DEFAULT_REPOSITORY / name / "README.md").read_text()
    assert SYNTHETIC_DATA_NOTICE in card
    assert "not for clinical use" in card
    evaluation = json.loads((DEFAULT_REPOSITORY / DETECTOR_NAME / "evaluation.json").read_text())
    figure = evaluation["cpm"] if name == DETECTOR_NAME else evaluation["malignancy_auc"]
    shown = re.findall(r"\*\*([0-9.]+)\*\*", card)
    assert f"{figure:.3f}" in shown, "the card must show the figure lungscreen evaluate measured"


@pytest.mark.triton
@pytest.mark.parametrize("name", MODELS)
def test_triton_round_trip_matches_pytorch(name: str, reference_server: LocalTriton) -> None:
    ckpt = Checkpoint.load(CHECKPOINTS / f"{name}.pt")
    spec = ckpt.spec
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.6, size=(2, *spec.inputs[0].shape)).astype(np.float32)
    with torch.no_grad():
        expected = ckpt.build()(torch.from_numpy(x)).numpy()
    with grpcclient.InferenceServerClient(reference_server.grpc_url) as client:
        inp = grpcclient.InferInput(spec.inputs[0].name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(name, [inp]).as_numpy(spec.outputs[0].name)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
