"""The GPU benchmark: its metric parsing, its skip where no GPU is, and a real run where one is."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import gpu as bench_gpu
from pipeline.cli import app
from pipeline.serving import TritonInstall

# The shape of Triton's GPU metrics (docs/user_guide/metrics.md, "GPU Metrics").
METRICS = """\
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-a"} 0.25
nv_gpu_utilization{gpu_uuid="GPU-b"} 0.75
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 1048576
nv_gpu_memory_used_bytes{gpu_uuid="GPU-b"} 2097152
# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="m",version="1"} 7
"""


def test_gpu_readings_are_per_gpu() -> None:
    assert bench_gpu.gpu_readings(METRICS) == {"GPU-a": (0.25, 1048576.0), "GPU-b": (0.75, 2097152.0)}


def test_a_cpu_only_server_has_no_gpu_readings() -> None:
    assert bench_gpu.gpu_readings(METRICS.split("# HELP nv_inference_count")[0].replace("nv_gpu", "x")) == {}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: the skip path is not taken")
def test_without_a_gpu_the_command_skips_and_says_why() -> None:
    result = CliRunner().invoke(app, ["bench-gpu", "--studies", "1", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "GPU benchmark skipped: no CUDA GPU is visible" in result.output


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU")
@pytest.mark.skipif(
    not (TritonInstall.discover().home / "backends" / "tensorrt").is_dir(),
    reason="needs a Triton install with the TensorRT backend (NVIDIA's container), not the wheel's",
)
def test_gpu_bench_runs_on_a_tiny_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import run as bench_run

    monkeypatch.setattr(bench_run, "WORK", tmp_path / "work")
    cfg = bench_run.BenchConfig(studies=2, seed=1, profile="small", repeats=1, workers=2, scale_studies=0)
    with bench_gpu.local_gpu_server() as server:
        result = bench_gpu.run_gpu_bench(cfg, server, server.metrics_url)
    run = result["runs"][0]
    assert run["studies"] == 2 and run["detector_patches_per_s"] > 0
    assert run["gpu_utilization"] is not None
    assert "detector patches per second" in bench_gpu.gpu_markdown(result)


def test_results_are_written_as_json_and_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import run as bench_run

    monkeypatch.setattr(bench_run, "RESULTS", tmp_path)
    stem = bench_run.write_results({"studies_per_min": 1.5}, "| a |\n", prefix="gpu-")
    assert stem.name.startswith("gpu-")
    assert stem.with_suffix(".json").read_text().strip().endswith("}")
    assert stem.with_suffix(".md").read_text() == "| a |\n"
