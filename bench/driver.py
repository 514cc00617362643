"""The platform's driver in a process of its own, as ``lungscreen screen`` runs it.

The benchmark measures the driver's memory in a fresh process: inside the benchmark's own
process it would carry whatever earlier measurements (the baseline's models, a previous run's
heap) left behind, and a second run would look bigger than the first for no reason of its own.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import psutil

from bench.measure import MemorySampler, tree_cpu_seconds


@dataclass
class DriverRun:
    """What one driver process reported, and what was measured around it."""

    summary: Any  # pipeline.job.RunSummary
    seconds: float  # run_screen's wall time, without the process start
    cpu_seconds: float  # driver, workers and server, without the process start
    memory: MemorySampler


def _screen(
    conn: Connection, source: str, dest: str, overrides: dict[str, Any], run_id: str, url: str
) -> None:
    try:
        from pipeline.config import load_config
        from pipeline.job import run_screen

        cfg = load_config(None, overrides)
        startup_cpu = sum(psutil.Process().cpu_times()[:2])
        started = time.perf_counter()
        summary = run_screen(source, dest, cfg, run_id=run_id, triton_url=url)
        conn.send(("ok", summary, time.perf_counter() - started, startup_cpu))
    except BaseException:  # the parent re-raises it with the child's traceback
        conn.send(("error", traceback.format_exc(), 0.0, 0.0))
    finally:
        conn.close()


def screen_in_process(source: str, dest: str, overrides: dict[str, Any], run_id: str, url: str) -> DriverRun:
    """Run ``run_screen`` in a fresh process against the server at ``url``, sampling its tree."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    cpu_before = tree_cpu_seconds()
    process = ctx.Process(
        target=_screen, args=(send, source, dest, overrides, run_id, url), name="lungscreen-driver"
    )
    process.start()
    send.close()
    with MemorySampler(root=process.pid or 0) as memory:
        try:
            status, payload, seconds, startup_cpu = receive.recv()
        except EOFError:
            status, payload, seconds, startup_cpu = (
                "error",
                "the driver process died without a result",
                0.0,
                0.0,
            )
        process.join()
    if status != "ok":
        raise RuntimeError(f"the benchmark's driver process failed:\n{payload}")
    return DriverRun(payload, seconds, tree_cpu_seconds() - cpu_before - startup_cpu, memory)
