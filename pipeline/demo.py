"""``lungscreen demo``: the one-command tour of the product on an embedded default."""

from __future__ import annotations

import time

from rich.console import Console

from pipeline.cli_serve import DEFAULT_REPOSITORY, server_summary
from pipeline.serving import LocalTriton, Profile

console = Console()


def demo_command() -> None:
    """Start the local Triton server on the model repository, show its health and models, stop it."""
    started = time.monotonic()
    console.print(f"Starting the local Triton server (CPU profile) on {DEFAULT_REPOSITORY} ...")
    with LocalTriton(DEFAULT_REPOSITORY, profile=Profile.CPU) as server:
        console.print(server_summary(server.http_url))
    console.print(f"Server stopped cleanly. Demo took {time.monotonic() - started:.1f} s.")
