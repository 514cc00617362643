"""The job's driver stays light: importing it loads neither torch nor MONAI (workers do)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_job_loads_no_torch_or_monai() -> None:
    probe = "import sys, pipeline.job, pipeline.cli; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
