"""``lungscreen bench-gpu``: the same end-to-end measurement on the GPU profile.

The models run as TensorRT plans on Triton's GPU instances while many Dask workers per GPU
feed them; the figures a GPU buyer asks for are studies per minute, detector patches per second
and how busy the GPU was. Utilisation and GPU memory come from Triton's own GPU metrics
(``nv_gpu_utilization``, ``nv_gpu_memory_used_bytes``), so they describe the GPU that served the
run, also when the server is remote.

Where no GPU is (no CUDA device here and no ``--triton-url``, or a Triton install without the
TensorRT backend) the command says why and skips: the wheel-installed server used for
development ships only the Python backend, so the GPU profile runs in NVIDIA's Triton
container (``LUNGSCREEN_TRITON_HOME=/opt/tritonserver``) or behind ``--triton-url``.
"""

from __future__ import annotations

import datetime as dt
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from prometheus_client.parser import text_string_to_metric_families

from bench.measure import TritonEndpoints
from bench.run import BenchConfig, cohort, platform_once, spread, write_results
from export.networks import DETECTOR_NAME
from pipeline.job import DEFAULT_REPOSITORY
from pipeline.serving import LocalTriton, Profile, TritonInstall

GPU_UTILIZATION = "nv_gpu_utilization"
GPU_MEMORY_USED = "nv_gpu_memory_used_bytes"


class GpuBenchSkipped(Exception):
    """This machine (or server) cannot run the GPU benchmark; the message says why."""


@dataclass(frozen=True)
class RemoteTriton:
    """A GPU-profile server this command did not start (for example Triton's container)."""

    grpc_url: str
    http_url: str
    metrics_url: str


def gpu_readings(metrics_text: str) -> dict[str, tuple[float, float]]:
    """Per GPU (by UUID): utilisation (0-1) and memory used (bytes) from Triton's metrics."""
    util: dict[str, float] = {}
    mem: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            gpu = sample.labels.get("gpu_uuid", "")
            if sample.name == GPU_UTILIZATION:
                util[gpu] = sample.value
            elif sample.name == GPU_MEMORY_USED:
                mem[gpu] = sample.value
    return {gpu: (util[gpu], mem.get(gpu, 0.0)) for gpu in util}


def _fetch(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


@dataclass
class GpuSampler:
    """Polls Triton's GPU metrics during a run: mean and peak utilisation, peak memory."""

    metrics_url: str
    interval_s: float = 0.5
    utilization: list[float] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                readings = gpu_readings(_fetch(self.metrics_url))
            except OSError:
                readings = {}  # a missed scrape is a missing sample, not a failed benchmark
            if readings:
                self.utilization.append(statistics.mean(u for u, _ in readings.values()))
                self.peak_memory_mb = max(self.peak_memory_mb, sum(m for _, m in readings.values()) / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def check_gpu_server(metrics_url: str) -> int:
    """How many GPUs the server reports; :class:`GpuBenchSkipped` when it reports none."""
    readings = gpu_readings(_fetch(metrics_url))
    if not readings:
        raise GpuBenchSkipped(
            f"the server at {metrics_url} reports no GPU metrics ({GPU_UTILIZATION}): it has no GPU "
            "or runs without --allow-gpu-metrics"
        )
    return len(readings)


def local_gpu_server() -> LocalTriton:
    """A local server on the GPU profile, or :class:`GpuBenchSkipped` with the reason."""
    import torch

    if not torch.cuda.is_available():
        raise GpuBenchSkipped("no CUDA GPU is visible on this machine (and no --triton-url was given)")
    install = TritonInstall.discover()
    if not (install.home / "backends" / "tensorrt").is_dir():
        raise GpuBenchSkipped(
            f"the Triton install at {install.home} has no TensorRT backend (the nvidia-pytriton wheel "
            "ships only the Python backend); run inside NVIDIA's Triton container with "
            "LUNGSCREEN_TRITON_HOME=/opt/tritonserver, or pass --triton-url"
        )
    return LocalTriton(DEFAULT_REPOSITORY, profile=Profile.GPU, install=install)


def gpu_run(path: Path, server: TritonEndpoints, metrics_url: str, workers: int, tag: str) -> dict[str, Any]:
    """One platform run with the GPU sampled; adds patches per second and utilisation."""
    with GpuSampler(metrics_url) as gpu:
        run = platform_once(path, server, workers, tag)
    detector = run["triton"].get(DETECTOR_NAME, {})
    run["detector_patches_per_s"] = detector.get("inferences", 0.0) / run["seconds"]
    run["gpu_utilization"] = (
        {"mean": statistics.mean(gpu.utilization), "max": max(gpu.utilization)} if gpu.utilization else None
    )
    run["gpu_peak_memory_mb"] = gpu.peak_memory_mb
    return run


def run_gpu_bench(cfg: BenchConfig, server: TritonEndpoints, metrics_url: str) -> dict[str, Any]:
    """Every measurement of one GPU benchmark run against a ready GPU-profile server."""
    gpus = check_gpu_server(metrics_url)
    path = cohort(cfg)
    runs = [gpu_run(path, server, metrics_url, cfg.workers, f"gpu{i}") for i in range(cfg.repeats)]
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(),
        "config": cfg.__dict__,
        "gpus": gpus,
        "runs": runs,
        "summary": {
            "studies_per_min": spread([r["studies_per_min"] for r in runs]),
            "detector_patches_per_s": spread([r["detector_patches_per_s"] for r in runs]),
        },
    }


def gpu_markdown(result: dict[str, Any]) -> str:
    """The GPU table for the README."""
    s = result["summary"]
    first = result["runs"][0]
    util = first["gpu_utilization"]
    rows = [
        "| measure (GPU profile) | value |",
        "| --- | --- |",
        f"| GPUs / Dask workers | {result['gpus']} / {result['config']['workers']} |",
        f"| studies per minute (median, min-max of {len(result['runs'])}) | "
        f"{s['studies_per_min']['median']:.1f} ({s['studies_per_min']['min']:.1f}-"
        f"{s['studies_per_min']['max']:.1f}) |",
        f"| detector patches per second (median) | {s['detector_patches_per_s']['median']:.0f} |",
        "| GPU utilisation, mean / max (first run) | "
        + (f"{100 * util['mean']:.0f} % / {100 * util['max']:.0f} % |" if util else "not reported |"),
        f"| GPU memory peak (MB) | {first['gpu_peak_memory_mb']:.0f} |",
        f"| CPU seconds per study | {first['cpu_s_per_study']:.1f} |",
    ]
    for model, t in first["triton"].items():
        rows.append(
            f"| Triton `{model}` batch / queue / compute | {t['avg_batch']:.1f} / "
            f"{t['avg_queue_ms']:.1f} ms / {t['avg_compute_ms']:.1f} ms |"
        )
    return "\n".join(rows) + "\n"


def bench_gpu_command(
    studies: int = typer.Option(20, min=1, help="Studies in the benchmark cohort."),
    repeats: int = typer.Option(3, min=1, help="Repeats of the end-to-end measurement."),
    profile: str = typer.Option("screening", help="Synthetic profile (screening = 512x512, ~300 slices)."),
    workers: int = typer.Option(8, min=1, help="Dask workers feeding the GPU."),
    triton_url: str = typer.Option(None, help="gRPC host:port of a running GPU-profile Triton."),
    triton_http_url: str = typer.Option(None, help="Its HTTP URL (default: the gRPC host, port 8000)."),
    metrics_url: str = typer.Option(None, help="Its metrics URL (default: the gRPC host, port 8002)."),
) -> None:
    """Benchmark the GPU profile (TensorRT plans); skips with the reason where no GPU is."""
    from bench.run import console

    cfg = BenchConfig(studies=studies, repeats=repeats, profile=profile, workers=workers, scale_studies=0)
    try:
        if triton_url:
            host = triton_url.rsplit(":", 1)[0]
            server = RemoteTriton(
                triton_url,
                triton_http_url or f"http://{host}:8000",
                metrics_url or f"http://{host}:8002/metrics",
            )
            result = run_gpu_bench(cfg, server, server.metrics_url)
        else:
            with local_gpu_server() as local:
                result = run_gpu_bench(cfg, local, local.metrics_url)
    except GpuBenchSkipped as e:
        console.print(f"GPU benchmark skipped: {e}.")
        return
    write_results(result, gpu_markdown(result), prefix="gpu-")
