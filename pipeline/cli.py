"""The ``lungscreen`` command line: one typer app, one subcommand per job."""

from __future__ import annotations

import typer

from bench.gpu import bench_gpu_command
from bench.run import bench_command
from export.cli import build_plans_command, evaluate_command, export_command, train_command
from pipeline.cli_index import index_command
from pipeline.cli_screen import screen_command
from pipeline.cli_serve import serve_command
from pipeline.demo import demo_command
from synth.cli import synth_command

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


# In the order of the data flow; each command lives in the module that owns its job.
app.command("synth")(synth_command)
app.command("index")(index_command)
app.command("screen")(screen_command)
app.command("serve")(serve_command)
app.command("demo")(demo_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("export")(export_command)
app.command("build-plans")(build_plans_command)
app.command("bench")(bench_command)
app.command("bench-gpu")(bench_gpu_command)


if __name__ == "__main__":
    app()
