"""Fixtures shared by the whole suite: a real local Triton server on a test repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.job import DEFAULT_REPOSITORY
from pipeline.serving import LocalTriton, Profile
from tests.support.affine_model import add_affine_model

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_CT = REPO_ROOT.parent / "shared" / "data" / "real-ct"


@pytest.fixture(scope="session")
def test_model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding only the test-only ``affine`` model."""
    repository = tmp_path_factory.mktemp("repo") / "models"
    repository.mkdir()
    add_affine_model(repository)
    return repository


@pytest.fixture(scope="session")
def reference_server() -> Iterator[LocalTriton]:
    """tritonserver (CPU profile) on ``model_repository/``: the reference models, for every test."""
    if not any(DEFAULT_REPOSITORY.glob("*/[0-9]*/model.onnx")):
        pytest.fail("model_repository/ has no exported models: run `make models` or restore them from git")
    with LocalTriton(DEFAULT_REPOSITORY) as server:
        yield server


@pytest.fixture(scope="session")
def triton_server(test_model_repository: Path) -> Iterator[LocalTriton]:
    """One real tritonserver (CPU profile) for every test of the session that needs it."""
    with LocalTriton(test_model_repository, profile=Profile.CPU, startup_timeout_s=120) as server:
        yield server
