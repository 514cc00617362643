"""``lungscreen serve`` and the server summary the demo prints."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import TritonError
from pipeline.serving import PROJECT_ROOT, LocalTriton, Profile, http_json, repository_index

DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
console = Console()


def server_summary(http_url: str) -> Table:
    """A table of the server's identity, health and every model with its version and state."""
    meta = http_json(f"{http_url}/v2")
    live = _health(f"{http_url}/v2/health/live")
    ready = _health(f"{http_url}/v2/health/ready")
    table = Table(title=f"Triton {meta.get('version', '?')} at {http_url}: live={live} ready={ready}")
    table.add_column("model")
    table.add_column("version")
    table.add_column("state")
    table.add_column("reason")
    models = repository_index(http_url)
    for row in models:
        table.add_row(
            row.get("name", ""), row.get("version", ""), row.get("state", ""), row.get("reason", "")
        )
    if not models:
        table.add_row("(no models in the repository)", "", "", "")
    return table


def _health(url: str) -> bool:
    try:
        http_json(url)
    except OSError:
        return False
    return True


def serve_command(
    repository: Path = typer.Option(DEFAULT_REPOSITORY, help="Triton model repository."),
    profile: Profile = typer.Option(Profile.CPU, help="Deployment profile: configs/<profile>.pbtxt."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    http_port: int = typer.Option(8000, help="HTTP port."),
    grpc_port: int = typer.Option(8001, help="gRPC port."),
    metrics_port: int = typer.Option(8002, help="Prometheus metrics port."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for readiness."),
) -> None:
    """Run the local Triton server in the foreground until Ctrl-C (development use)."""
    server = LocalTriton(
        repository,
        profile=profile,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        startup_timeout_s=timeout,
    )
    try:
        server.start()
    except TritonError as e:
        console.print(f"[red]Triton did not start:[/red] {e}")
        raise typer.Exit(1) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        console.print(server_summary(server.http_url))
        console.print(f"HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")
        console.print("Serving; Ctrl-C stops.")
        while not stop.wait(1.0):
            if not server.running:
                console.print(f"[red]tritonserver exited.[/red] Log: {server.log_path}")
                raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
