"""The local server manager against the real tritonserver binary."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from pipeline.errors import ModelLoadError, PortInUseError, ServerStartError
from pipeline.serving import LocalTriton, Profile, is_ready, parse_load_failures, repository_index
from tests.support.affine_model import AFFINE, affine_reference

pytestmark = pytest.mark.triton

LOAD_FAILURE_LINES = (
    (
        "E1127 15:01:02.123 42 model_lifecycle.cc:654] \"failed to load 'broken' version 1: "
        "Invalid argument: unexpected inference input 'z'\"",
        {"broken": "Invalid argument: unexpected inference input 'z'"},
    ),
    (
        "I1127 pb_stub.cc:2105]  Failed to preinitialize Python stub: Python model file not found in "
        "'/tmp/lungscreen-triton-x/models/m1/1/model.py'",
        {"m1": "Python model file not found in '/tmp/lungscreen-triton-x/models/m1/1/model.py'"},
    ),
    (
        "E1127 model_repository_manager.cc:1460] \"Poll failed for model directory 'bad': "
        'failed to read text proto from /r/bad/configs/cpu.pbtxt"',
        {"bad": "failed to read text proto from /r/bad/configs/cpu.pbtxt"},
    ),
    ("I1127 model_lifecycle.cc:818] \"successfully loaded 'affine'\"", {}),
)


@pytest.mark.parametrize(("line", "expected"), LOAD_FAILURE_LINES)
def test_parse_load_failures(line: str, expected: dict[str, str]) -> None:
    assert parse_load_failures(line) == expected


def test_server_ready_and_lists_the_model(triton_server: LocalTriton) -> None:
    assert triton_server.running
    assert is_ready(triton_server.http_url)
    models = {row["name"]: row for row in repository_index(triton_server.http_url)}
    assert models["affine"]["state"] == "READY"


def test_model_metadata_matches_the_definition(triton_server: LocalTriton) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"))
    meta = client.get_model_metadata("affine")
    assert [i["name"] for i in meta["inputs"]] == [s.name for s in AFFINE.inputs]
    assert meta["inputs"][0]["shape"] == [-1, 4]
    config = client.get_model_config("affine")
    assert config["backend"] == "python"
    assert config["max_batch_size"] == AFFINE.max_batch_size


def test_grpc_inference_matches_reference(triton_server: LocalTriton) -> None:
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("affine", [inp], outputs=[grpcclient.InferRequestedOutput("y")])
    np.testing.assert_allclose(result.as_numpy("y"), affine_reference(x), rtol=1e-6)


def test_metrics_endpoint_serves_prometheus_text(triton_server: LocalTriton) -> None:
    import urllib.request

    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    assert "nv_inference_request_success" in text


def test_taken_port_is_reported_before_start(test_model_repository: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = LocalTriton(test_model_repository, http_port=port)
        with pytest.raises(PortInUseError, match=f"HTTP port {port}"):
            server.start()
        assert not server.running


BROKEN_MODELS = (
    # (what is wrong, how to break a copy of the affine model, a word Triton's reason must contain)
    ("version folder without model.py", lambda d: (d / "1" / "model.py").unlink(), "model.py"),
    ("unparsable config", lambda d: (d / "configs" / "cpu.pbtxt").write_text("input [ {"), "cpu.pbtxt"),
    ("ONNX file missing", lambda d: (d / "1" / "model.onnx").unlink(), "model.onnx"),
)


@pytest.mark.parametrize(("what", "breaker", "word"), BROKEN_MODELS, ids=[b[0] for b in BROKEN_MODELS])
def test_broken_model_gives_tritons_reason(
    tmp_path: Path, test_model_repository: Path, what: str, breaker: object, word: str
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(test_model_repository, repo)
    breaker(repo / "affine")  # type: ignore[operator]
    with pytest.raises(ModelLoadError) as info:
        LocalTriton(repo, startup_timeout_s=60).start()
    assert set(info.value.failures) == {"affine"}, what
    assert word in info.value.failures["affine"]
    assert "affine" in str(info.value)


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="not a directory"):
        LocalTriton(tmp_path / "nope")


def test_stop_is_idempotent_and_ends_the_process(test_model_repository: Path) -> None:
    server = LocalTriton(test_model_repository, profile=Profile.CPU).start()
    pid = server._proc.pid if server._proc else -1
    server.stop()
    server.stop()
    assert not server.running
    # The whole process group is gone: no orphaned Python-backend stubs.
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pid)], capture_output=True, text=True)
    assert out.stdout.strip() == ""
