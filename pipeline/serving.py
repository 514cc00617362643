"""A local Triton Inference Server for development, tests and the demo.

Production runs NVIDIA's Triton container (see ``helm/``); this module runs the
``tritonserver`` binary that ships in the ``nvidia-pytriton`` wheel, installed by the
Makefile into its own environment (``.venv-triton``), on loopback ports.

Why a staged repository: CPU-profile models run on Triton's Python backend inside an
execution environment (numpy<2 + onnxruntime) that their config names as
``$$TRITON_MODEL_DIRECTORY/python_env``. Rather than writing that machine-specific link into
the checked-in repository, the server is pointed at a temporary mirror made of symlinks,
one ``python_env`` link per model added.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pipeline.errors import ModelLoadError, PortInUseError, ServerStartError, ServerTimeoutError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STARTUP_TIMEOUT_S = 120.0
DEFAULT_STOP_GRACE_S = 10.0
PYTHON_ENV_LINK = "python_env"

# How Triton reports a model that cannot load. A Python-backend stub that fails never gets to
# "failed to load" (the server waits on it), so its own line counts as the model's failure.
_LOAD_FAILURES = (
    re.compile(r"failed to load '(?P<model>[^']+)'(?: version \d+)?: (?P<reason>.+?)\"?$"),
    re.compile(r"Poll failed for model directory '(?P<model>[^']+)': (?P<reason>.+?)\"?$"),
    re.compile(r"Failed to preinitialize Python stub: (?P<reason>.*/models/(?P<model>[^/]+)/.*?)\"?$"),
)
_POLL_INTERVAL_S = 0.25


class Profile(StrEnum):
    """Deployment profile: which ``configs/<profile>.pbtxt`` every model is served with."""

    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class TritonInstall:
    """Where the ``tritonserver`` binary, its libraries and the Python-backend environment are."""

    home: Path
    python_env: Path

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @classmethod
    def discover(cls) -> TritonInstall:
        """Find the install made by ``make setup``; ``LUNGSCREEN_TRITON_HOME`` and
        ``LUNGSCREEN_TRITON_PYENV`` override the project-relative defaults."""
        home = Path(os.environ.get("LUNGSCREEN_TRITON_HOME", PROJECT_ROOT / ".tools" / "tritonserver"))
        pyenv = Path(os.environ.get("LUNGSCREEN_TRITON_PYENV", PROJECT_ROOT / ".venv-triton"))
        install = cls(home=home, python_env=pyenv)
        if not install.binary.is_file():
            raise ServerStartError(
                f"No tritonserver binary at {install.binary}. Run `make setup` (it installs the "
                "server environment), or set LUNGSCREEN_TRITON_HOME to a prepared install."
            )
        if not (pyenv / "bin" / "python").exists():
            raise ServerStartError(
                f"No Triton Python-backend environment at {pyenv}. Run `make setup`, or set "
                "LUNGSCREEN_TRITON_PYENV."
            )
        return install


@dataclass(frozen=True)
class Ports:
    """The loopback ports one server listens on."""

    http: int
    grpc: int
    metrics: int


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_port_free(port: int, host: str = "127.0.0.1", what: str = "port") -> None:
    """Raise :class:`PortInUseError` when ``port`` cannot be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortInUseError(
                f"The {what} {port} on {host} is already in use ({e.strerror}). Stop whatever "
                "listens there, or choose another port (leave it unset to pick a free one)."
            ) from e


def parse_load_failures(log: str) -> dict[str, str]:
    """Model name -> Triton's own reason, from the server log."""
    failures: dict[str, str] = {}
    for line in log.splitlines():
        for pattern in _LOAD_FAILURES:
            m = pattern.search(line)
            if m:
                failures.setdefault(m["model"], m["reason"].strip())
                break
    return failures


def stage_repository(repository: Path, python_env: Path, dest: Path) -> Path:
    """Mirror ``repository`` into ``dest`` with symlinks, adding a ``python_env`` link per model."""
    dest.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        staged = dest / model_dir.name
        staged.mkdir()
        for child in model_dir.iterdir():
            if child.name != PYTHON_ENV_LINK:
                (staged / child.name).symlink_to(child.resolve())
        (staged / PYTHON_ENV_LINK).symlink_to(python_env.resolve())
    return dest


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout_s: float = 5.0) -> Any:
    """A small JSON request against Triton's HTTP API (no client library needed for health)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def is_ready(http_url: str, timeout_s: float = 2.0) -> bool:
    """True when ``/v2/health/ready`` answers 200; connection errors read as "not yet"."""
    try:
        http_json(f"{http_url}/v2/health/ready", timeout_s=timeout_s)
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return True


def accepts_connections(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until_ready(http_url: str, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> None:
    """Poll a (possibly remote) server until ready or raise :class:`ServerTimeoutError`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_ready(http_url):
            return
        time.sleep(_POLL_INTERVAL_S)
    raise ServerTimeoutError(f"Triton at {http_url} was not ready within {timeout_s:.0f} s.")


def repository_index(http_url: str) -> list[dict[str, str]]:
    """Every model the server knows, with its version, state and reason (Triton's repository API)."""
    rows = http_json(f"{http_url}/v2/repository/index", method="POST", body={}) or []
    return [{k: str(v) for k, v in row.items()} for row in rows]


class LocalTriton:
    """Run ``tritonserver`` on loopback ports for the lifetime of a ``with`` block.

    Startup waits for readiness with a deadline; a model that fails to load raises
    :class:`ModelLoadError` carrying Triton's own reason. ``stop()`` sends SIGTERM, then
    SIGKILL after ``stop_grace_s``; it is idempotent and registered with ``atexit``.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        profile: Profile | str = Profile.CPU,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        install: TritonInstall | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository)
        if not self.model_repository.is_dir():
            raise ServerStartError(f"Model repository {self.model_repository} is not a directory.")
        self.profile = Profile(profile)
        self.host = host
        self._asked_ports = (http_port, grpc_port, metrics_port)
        self._install = install
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.ports: Ports | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self._ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self._ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self._ports.metrics}/metrics"

    @property
    def log_path(self) -> Path:
        if self._workdir is None:
            raise ServerStartError("The server has not been started.")
        return self._workdir / "tritonserver.log"

    def log_text(self) -> str:
        """The server's own log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Self:
        """Start the server and block until it is ready (or raise with the reason)."""
        if self._proc is not None:
            return self
        install = self._install or TritonInstall.discover()
        self.ports = self._choose_ports()
        self._workdir = Path(tempfile.mkdtemp(prefix="lungscreen-triton-"))
        staged = stage_repository(self.model_repository, install.python_env, self._workdir / "models")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        cmd = [
            str(install.binary),
            f"--model-repository={staged}",
            f"--model-config-name={self.profile.value}",
            f"--backend-directory={install.home / 'backends'}",
            f"--cache-directory={install.home / 'caches'}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]
        with open(self.log_path, "wb") as log:
            # A new session, so that stop() can end the Python-backend stubs with the server.
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after the grace period. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            atexit.unregister(self.stop)
        if self._workdir is not None and proc is not None:
            # Keep the log readable after stop; drop only the staged links.
            shutil.rmtree(self._workdir / "models", ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def _ports(self) -> Ports:
        if self.ports is None:
            raise ServerStartError("The server has not been started.")
        return self.ports

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def _choose_ports(self) -> Ports:
        chosen: list[int] = []
        for asked, what in zip(self._asked_ports, ("HTTP port", "gRPC port", "metrics port"), strict=True):
            if asked is None:
                port = free_port(self.host)
                while port in chosen:
                    port = free_port(self.host)
            else:
                ensure_port_free(asked, self.host, what)
                port = asked
            chosen.append(port)
        return Ports(*chosen)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._raise_exited()
            # Triton opens its metrics port after HTTP answers "ready"; on a busy machine a caller
            # scraping right after start() found nothing listening there yet.
            if is_ready(self.http_url) and accepts_connections(self._client_host, self.ports.metrics):
                return
            failures = parse_load_failures(self.log_text())
            if failures:
                raise ModelLoadError(failures, self._log_tail())
            time.sleep(_POLL_INTERVAL_S)
        raise ServerTimeoutError(
            f"Triton was not ready within {self.startup_timeout_s:.0f} s. Its log ends:\n{self._log_tail()}"
        )

    def _raise_exited(self) -> None:
        log = self.log_text()
        failures = parse_load_failures(log)
        if failures:
            raise ModelLoadError(failures, self._log_tail())
        if "Address already in use" in log or "address already in use" in log:
            raise PortInUseError(f"Triton could not bind its ports:\n{self._log_tail()}")
        raise ServerStartError(
            f"tritonserver exited with code {self._proc.returncode if self._proc else '?'} before "
            f"it was ready. Its log ends:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
