"""Measuring helpers: peak memory and CPU time of a process tree, Triton's own statistics."""

from __future__ import annotations

import contextlib
import os
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


def tree_cpu_seconds() -> float:
    """CPU seconds of this process, its finished children and its live descendants.

    Read before and after a measurement: children that exit in between (a driver process, the
    Dask workers it reaped) are counted through ``cpu_times().children_*``.
    """
    me = psutil.Process()
    total = sum(me.cpu_times()[:4])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


@dataclass
class MemorySampler:
    """Samples the RSS of a driver process and of its descendants (the Dask workers).

    ``driver_peak_mb`` is the driver's peak, ``workers_peak_mb`` the largest sum over workers
    seen at once and ``worker_peak_mb`` the largest single worker. ``timeline`` keeps one
    ``(seconds, driver MB, [worker MB, ...])`` reading every ``timeline_every_s``, to tell a
    plateau from growth. A Triton server below the driver is not counted: it is not the job.
    """

    root: int = field(default_factory=os.getpid)
    interval_s: float = 0.2
    timeline_every_s: float = 5.0
    driver_peak_mb: float = 0.0
    workers_peak_mb: float = 0.0
    worker_peak_mb: float = 0.0
    timeline: list[tuple[float, float, list[float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        started = time.monotonic()
        next_mark = 0.0
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.root)
            while not self._stop.is_set():
                driver = root.memory_info().rss / 2**20
                workers = []
                for child in root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "tritonserver" not in child.name() and "triton_python" not in child.name():
                            workers.append(child.memory_info().rss / 2**20)
                self.driver_peak_mb = max(self.driver_peak_mb, driver)
                self.workers_peak_mb = max(self.workers_peak_mb, sum(workers))
                self.worker_peak_mb = max(self.worker_peak_mb, max(workers, default=0.0))
                elapsed = time.monotonic() - started
                if elapsed >= next_mark:
                    self.timeline.append((round(elapsed, 1), round(driver), [round(w) for w in workers]))
                    next_mark += self.timeline_every_s
                self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
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
