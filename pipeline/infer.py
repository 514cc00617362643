"""Talking to Triton from a worker: gRPC, several requests in flight, timeouts, retries.

One :class:`TritonRunner` per Dask worker process (made by :class:`TritonWorkerPlugin`), so
connections are reused across studies. Transport errors become our own exceptions with what
really happened: unavailable after retries, timed out, or refused by the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from distributed import WorkerPlugin
from tritonclient.utils import InferenceServerException

from export.spec import ModelSpec
from pipeline.config import TritonSettings
from pipeline.errors import TritonError

RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")


class TritonUnavailableError(TritonError):
    """The server could not be reached (after retries)."""


class InferenceTimeoutError(TritonError):
    """A request did not complete within its timeout."""


class InferenceFailedError(TritonError):
    """The server answered with an error for the request (bad input, model failure)."""


@dataclass
class RequestStats:
    """Latencies and patch counts per model, reported back to the driver's metrics."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)

    def record(self, model: str, seconds: float, items: int) -> None:
        self.seconds.setdefault(model, []).append(seconds)
        self.items[model] = self.items.get(model, 0) + items


def _classify_error(model: str, error: InferenceServerException) -> TritonError:
    status = str(error.status() or "")
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return InferenceTimeoutError(f"{model}: request timed out ({error.message()})")
    if status in RETRYABLE:
        return TritonUnavailableError(f"{model}: server unavailable ({error.message()})")
    return InferenceFailedError(f"{model}: {error.message()}")


class TritonRunner:
    """Runs batches through Triton models; implements :class:`pipeline.analysis.ModelRunner`."""

    def __init__(self, url: str, settings: TritonSettings) -> None:
        self.url = url
        self.settings = settings
        size = settings.max_message_mb * 1024 * 1024
        self.client = grpcclient.InferenceServerClient(
            url,
            channel_args=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
            ],
        )
        self._io: dict[str, tuple[str, str, str]] = {}
        self._max_batch: dict[str, int] = {}
        self.stats = RequestStats()

    def close(self) -> None:
        self.client.close()

    def spec(self, model: str) -> ModelSpec:
        """The model's preprocessing contract, read from the server's config of it."""
        try:
            config = self.client.get_model_config(model, self._version(model), as_json=True)["config"]
        except InferenceServerException as e:
            raise _classify_error(model, e) from None
        spec = ModelSpec.from_triton_config(config)
        self._io[model] = (spec.inputs[0].name, spec.outputs[0].name, spec.inputs[0].dtype)
        self._max_batch[model] = int(config.get("max_batch_size") or 0)
        return spec

    def served_version(self, model: str) -> str:
        """The version the server answers with (the configured one, else its latest ready one)."""
        if self._version(model):
            return self._version(model)
        try:
            meta = self.client.get_model_metadata(model, as_json=True)
        except InferenceServerException as e:
            raise _classify_error(model, e) from None
        return str(max(int(v) for v in meta["versions"]))

    def take_stats(self) -> RequestStats:
        """Stats since the last call (one study's worth), reset."""
        stats, self.stats = self.stats, RequestStats()
        return stats

    def run_many(self, model: str, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Send every batch concurrently (up to ``in_flight``), retrying what is retryable.

        Batches larger than the model's ``max_batch_size`` are split and their outputs joined.
        """
        if model not in self._io:
            self.spec(model)
        limit = self._max_batch[model]
        if limit and any(len(b) > limit for b in batches):
            parts = [[b[i : i + limit] for i in range(0, len(b), limit)] for b in batches]
            flat = self.run_many(model, [p for group in parts for p in group])
            joined, at = [], 0
            for group in parts:
                joined.append(np.concatenate(flat[at : at + len(group)]))
                at += len(group)
            return joined
        results: list[np.ndarray | None] = [None] * len(batches)
        for start in range(0, len(batches), self.settings.in_flight):
            chunk = range(start, min(start + self.settings.in_flight, len(batches)))
            for i, out in zip(
                chunk, self._send_concurrently(model, [batches[i] for i in chunk]), strict=True
            ):
                results[i] = out
        return [r for r in results if r is not None]

    def _send_concurrently(self, model: str, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        pending = list(range(len(batches)))
        outputs: list[np.ndarray | None] = [None] * len(batches)
        attempt = 0
        while pending:
            errors = self._round(model, batches, pending, outputs)
            retry = [i for i, e in errors.items() if isinstance(e, TritonUnavailableError)]
            fatal = [e for e in errors.values() if not isinstance(e, TritonUnavailableError)]
            if fatal:
                raise fatal[0]
            if retry and attempt >= self.settings.retries:
                raise errors[retry[0]]
            if retry:
                time.sleep(self.settings.backoff_s * 2**attempt)
                attempt += 1
            pending = retry
        return [o for o in outputs if o is not None]

    def _round(
        self, model: str, batches: Sequence[np.ndarray], indices: list[int], outputs: list[np.ndarray | None]
    ) -> dict[int, TritonError]:
        input_name, output_name, dtype = self._io[model]
        done = threading.Semaphore(0)
        errors: dict[int, TritonError] = {}
        started = time.perf_counter()

        def callback(i: int, result: Any, error: InferenceServerException | None) -> None:
            if error is not None:
                errors[i] = _classify_error(model, error)
            else:
                outputs[i] = result.as_numpy(output_name)
                self.stats.record(model, time.perf_counter() - started, len(batches[i]))
            done.release()

        for i in indices:
            batch = np.ascontiguousarray(batches[i], dtype=np.float32)
            inp = grpcclient.InferInput(input_name, list(batch.shape), dtype)
            inp.set_data_from_numpy(batch)
            try:
                self.client.async_infer(
                    model,
                    [inp],
                    callback=lambda result, error, i=i: callback(i, result, error),
                    model_version=self._version(model),
                    outputs=[grpcclient.InferRequestedOutput(output_name)],
                    client_timeout=self.settings.request_timeout_s,
                )
            except InferenceServerException as e:
                errors[i] = _classify_error(model, e)
                done.release()
        deadline = time.monotonic() + self.settings.request_timeout_s + 5.0
        for _ in indices:
            if not done.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                raise InferenceTimeoutError(
                    f"{model}: no answer within {self.settings.request_timeout_s:.0f} s"
                )
        return errors

    def _version(self, model: str) -> str:
        if model == self.settings.detector:
            return self.settings.detector_version
        if model == self.settings.classifier:
            return self.settings.classifier_version
        return ""


class TritonWorkerPlugin(WorkerPlugin):
    """Gives each Dask worker one :class:`TritonRunner`, closed when the worker stops."""

    name = "lungscreen-triton"

    def __init__(self, url: str, settings: TritonSettings) -> None:
        self.url = url
        self.settings = settings

    def setup(self, worker: Any) -> None:
        worker.lungscreen_runner = TritonRunner(self.url, self.settings)

    def teardown(self, worker: Any) -> None:
        runner = getattr(worker, "lungscreen_runner", None)
        if runner is not None:
            runner.close()
