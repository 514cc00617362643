"""The ``lungscreen`` command line: one typer app, one subcommand per job."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lungscreen",
    help="Batch lung cancer screening of chest CT cohorts through Triton. "
    "Research software trained on synthetic data: not a medical device.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """lungscreen: cohort -> index -> select -> load -> preprocess -> Triton -> triage -> tables."""


# Subcommands are registered below, one line each, from the package that owns them.
from pipeline.cli_serve import serve_command  # noqa: E402
from pipeline.demo import demo_command  # noqa: E402

app.command("serve")(serve_command)
app.command("demo")(demo_command)
