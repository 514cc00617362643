"""Measuring helpers: peak memory and CPU time of a process tree, Triton's own statistics."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

from pipeline.serving import http_json


class TritonEndpoints(Protocol):
    """A ready Triton server: a :class:`~pipeline.serving.LocalTriton` or one running elsewhere."""

    @property
    def grpc_url(self) -> str: ...

    @property
    def http_url(self) -> str: ...


@dataclass
class TreeSampler:
    """Samples RSS of this process (the driver) and of its descendants (workers, server).

    Peak memory is the largest sum seen per group; CPU seconds are read at the start and the
    end (children that exit in between are counted through ``cpu_times().children_*``).
    """

    interval_s: float = 0.2
    driver_peak_mb: float = 0.0
    workers_peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cpu_start: float = 0.0
    cpu_seconds: float = 0.0

    def _tree_cpu(self) -> float:
        me = psutil.Process()
        total = sum(me.cpu_times()[:4])
        for child in me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                continue
        return total

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            driver = me.memory_info().rss / 2**20
            workers = 0.0
            for child in me.children(recursive=True):
                try:
                    if "tritonserver" in child.name() or "triton_python" in child.name():
                        continue  # the server is measured apart: it is not part of the job
                    workers += child.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            self.driver_peak_mb = max(self.driver_peak_mb, driver)
            self.workers_peak_mb = max(self.workers_peak_mb, workers)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeSampler:
        self._cpu_start = self._tree_cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_seconds = self._tree_cpu() - self._cpu_start
        self._stop.set()
        if self._thread:
            self._thread.join()


def triton_stats(http_url: str) -> dict[str, dict[str, float]]:
    """Per model: requests, executions, and cumulative queue and compute nanoseconds."""
    out: dict[str, dict[str, float]] = {}
    body: Any = http_json(f"{http_url}/v2/models/stats")
    for m in body.get("model_stats", []):
        inf = m["inference_stats"]
        entry = out.setdefault(m["name"], {"inferences": 0, "executions": 0, "queue_ns": 0, "compute_ns": 0})
        entry["inferences"] += float(m.get("inference_count", 0))
        entry["executions"] += float(m.get("execution_count", 0))
        entry["queue_ns"] += float(inf["queue"]["ns"])
        entry["compute_ns"] += float(inf["compute_infer"]["ns"])
        entry["requests"] = entry.get("requests", 0) + float(inf["success"]["count"])
    return out


def stats_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """What happened between two :func:`triton_stats` readings, with averages."""
    delta = {}
    for name, a in after.items():
        b = before.get(name, {})
        d = {k: a[k] - b.get(k, 0.0) for k in a}
        requests = max(d.get("requests", 0.0), 1.0)
        d["avg_queue_ms"] = d["queue_ns"] / requests / 1e6
        d["avg_compute_ms"] = d["compute_ns"] / requests / 1e6
        d["avg_batch"] = d["inferences"] / max(d["executions"], 1.0)
        delta[name] = d
    return delta


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Result and wall seconds of one call."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started
