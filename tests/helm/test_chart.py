"""The Helm chart (helm/lungscreen): lint, render, offline schema validation, chart rules.

Every value set of ``VALUE_SETS`` is linted, rendered and validated against the Kubernetes
OpenAPI schemas in strict mode (kubernetes-validate, offline); the DaskJob a scheduled run
creates is validated against the CRD schema shipped in dask-kubernetes.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.helm.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    helm,
    need_crd,
    render,
    template_args,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest bundled.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# Custom resources with no schema in kubernetes-validate: the DaskJob is checked against its
# CRD below; the Prometheus operator's kinds by the monitoring tests (promtool for the rules).
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
TRITON = f"{RELEASE}-triton"


def _load_launcher() -> Any:
    spec = importlib.util.spec_from_file_location("launch_run", CHART / "files" / "launch_run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()


def kinds(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def daskjob(docs: tuple[dict[str, Any], ...], run_id: str = "20250101t0200z") -> dict[str, Any]:
    """The DaskJob the launcher would create for one run, from the rendered template."""
    template = one(docs, "ConfigMap", f"{RELEASE}-run-template")["data"]["daskjob.json"]
    return launcher.render(template, f"{RELEASE}-{run_id}-0", run_id, NAMESPACE)


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec the release runs: workloads, the CronJob's pod and the DaskJob's pods."""
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Deployment":
            yield name, d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield name, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if any(d["kind"] == "CronJob" for d in docs):
        job = daskjob(docs)
        yield "DaskJob/runner", job["spec"]["job"]["spec"]
        yield "DaskJob/scheduler", job["spec"]["cluster"]["spec"]["scheduler"]["spec"]
        yield "DaskJob/worker", job["spec"]["cluster"]["spec"]["worker"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


# --- lint and schema ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(name: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for f in VALUE_SETS[name]:
        args += ["-f", str(CHART / f)]
    out = helm(*args)
    assert out.returncode == 0, out.stdout + out.stderr


def test_manifests_validate_against_kubernetes_schemas_strict(value_set: str) -> None:
    docs = render(value_set)
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = f"{doc['kind']}/{doc['metadata']['name']}"
                pytest.fail(f"{where} invalid for Kubernetes {version}: {e.message} at {list(e.path)}")


def _strict(schema: Any) -> Any:
    """The CRD's structural schema with unknown fields rejected (the API server would silently
    prune them: a typo in the chart would vanish instead of failing)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        # int-or-string fields are typed "string" in this CRD; accept both as the API server does.
        if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema.pop("format", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _daskjob_schema() -> dict[str, Any]:
    crd = need_crd()
    assert crd["spec"]["group"] == "kubernetes.dask.org"
    assert crd["spec"]["names"]["kind"] == "DaskJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_daskjob_validates_against_the_operator_crd(name: str) -> None:
    schema = _daskjob_schema()
    docs = render(name)
    job = daskjob(docs)
    assert (job["apiVersion"], job["kind"]) == ("kubernetes.dask.org/v1", "DaskJob")
    body = {k: v for k, v in job.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.validate(body, schema)
    # The pods inside are real pod specs too: strict Kubernetes validation of each.
    for where, spec in list(pod_specs(docs)):
        if where.startswith("DaskJob/"):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec}
            kubernetes_validate.validate(pod, K8S_VERSIONS[-1], strict=True)
    text = json.dumps(job)  # Dask's own env names (DASK_A__B) contain "__" too
    assert not re.search(r"__(NAME|RUN_ID|SCHEDULER)__", text), "a placeholder was left unfilled"


# --- the chart's rules ----------------------------------------------------------------------


def test_every_container_is_hardened_with_requests_and_limits(value_set: str) -> None:
    specs = list(pod_specs(render(value_set)))
    assert len(specs) >= 4
    for where, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in containers(spec):
            sc = c.get("securityContext", {})
            at = f"{where} container {c['name']}"
            assert sc.get("runAsNonRoot") is True, at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert sc.get("privileged") is False, at
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], at
            assert not sc.get("capabilities", {}).get("add"), at
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{at}: {kind}"


def test_only_the_launcher_gets_an_api_token(value_set: str) -> None:
    for where, spec in pod_specs(render(value_set)):
        expected = where == f"CronJob/{RELEASE}-screen"
        assert spec.get("automountServiceAccountToken") is expected, where


def test_cronjob_forbids_overlap_and_launches_with_narrow_rbac(value_set: str) -> None:
    docs = render(value_set)
    cron = one(docs, "CronJob", f"{RELEASE}-screen")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "0 2 * * *"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{RELEASE}-launcher"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert (
        env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['batch.kubernetes.io/job-name']"
    )
    assert env["CRONJOB_NAME"]["value"] == cron["metadata"]["name"]
    role = one(docs, "Role", f"{RELEASE}-launcher")
    assert role["rules"] == [
        {"apiGroups": ["kubernetes.dask.org"], "resources": ["daskjobs"], "verbs": ["create", "get"]}
    ]
    binding = one(docs, "RoleBinding", f"{RELEASE}-launcher")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-launcher", "namespace": NAMESPACE}
    ]
    assert not kinds(docs, "ClusterRole") and not kinds(docs, "ClusterRoleBinding")


def test_runner_runs_lungscreen_screen_against_the_triton_service() -> None:
    job = daskjob(render("default"), run_id="20250101t0200z")
    runner = job["spec"]["job"]["spec"]["containers"][0]
    argv = runner["command"] + runner["args"]
    assert argv[:3] == ["lungscreen", "screen", "/cohort"]
    opts = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert opts["--out"] == "/outputs/20250101t0200z"
    assert opts["--triton"] == f"{TRITON}.{NAMESPACE}.svc:8001"
    assert opts["--run-id"] == "20250101t0200z"
    assert (
        opts["--scheduler"]
        == f"tcp://{RELEASE}-20250101t0200z-0-scheduler.{NAMESPACE}.svc.cluster.local:8786"
    )
    assert opts["--pushgateway"] == f"http://{RELEASE}-pushgateway.{NAMESPACE}.svc:9091"
    assert opts["--metrics-port"] == "9091"
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] == 4
    svc = job["spec"]["cluster"]["spec"]["scheduler"]["service"]
    assert svc["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]


def test_scheduler_keeps_the_jobs_short_message_log() -> None:
    from pipeline.job import MESSAGE_LOG_LENGTH

    cluster = daskjob(render("default"))["spec"]["cluster"]["spec"]
    for spec in (cluster["scheduler"]["spec"], cluster["worker"]["spec"]):
        env = {e["name"]: e["value"] for e in containers(spec)[0]["env"]}
        assert env["DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH"] == str(MESSAGE_LOG_LENGTH)


def test_worker_count_comes_from_values() -> None:
    out = helm(*template_args((), ("screening.workers.replicas=11",)))
    assert out.returncode == 0, out.stderr
    assert '\\"replicas\\":11' in out.stdout


@pytest.mark.parametrize(("name", "profile"), [("default", "gpu"), ("cpu", "cpu"), ("s3", "gpu")])
def test_triton_profile_probes_and_ports(name: str, profile: str) -> None:
    deploy = one(render(name), "Deployment", TRITON)
    spec = deploy["spec"]["template"]["spec"]
    (triton,) = spec["containers"]
    assert f"--model-config-name={profile}" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    init = {c["name"]: c for c in spec.get("initContainers", [])}
    if profile == "gpu":
        for c in (triton, init["build-plans"]):
            assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert init["build-plans"]["command"] == ["lungscreen", "build-plans"]
        assert init["build-plans"]["args"][0] == "--repository"
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    else:
        assert list(init) == ["stage-repository"]
        assert init["stage-repository"]["args"] == ["/models-src", "/models", "/opt/lungscreen/python_env"]


def test_cpu_values_request_no_gpu_anywhere() -> None:
    docs = render("cpu")
    text = json.dumps(docs) + json.dumps(daskjob(docs))
    assert "nvidia.com/gpu" not in text
    deploy = one(docs, "Deployment", TRITON)
    assert "--allow-gpu-metrics=false" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]


def test_default_values_serve_the_repository_claim_read_only() -> None:
    docs = render("default")
    spec = one(docs, "Deployment", TRITON)["spec"]["template"]["spec"]
    (triton,) = spec["containers"]
    assert "--model-repository=/models" in triton["args"]
    mounts = {m["name"]: m for m in triton["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": f"{RELEASE}-models"}
    assert {p["metadata"]["name"] for p in kinds(docs, "PersistentVolumeClaim")} == {
        f"{RELEASE}-models",
        f"{RELEASE}-outputs",
    }


def _env_secret_refs(container: dict[str, Any]) -> dict[str, str]:
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_s3_values_render_s3_urls_and_secret_refs_only() -> None:
    docs = render("s3")
    spec = one(docs, "Deployment", TRITON)["spec"]["template"]["spec"]
    (triton,) = spec["containers"]
    assert (
        "--model-repository=s3://https://minio.storage.svc:9000/lungscreen-models/repository"
        in triton["args"]
    )
    assert _env_secret_refs(triton) == dict.fromkeys(
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), "lungscreen-models-s3"
    )
    (build,) = spec["initContainers"]
    assert build["args"] == ["--repository", "s3://lungscreen-models/repository"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "https://minio.storage.svc:9000"} in build["env"]
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    assert not kinds(docs, "PersistentVolumeClaim")
    job = daskjob(docs, run_id="20250101t0200z")
    runner = job["spec"]["job"]["spec"]["containers"][0]
    assert runner["args"][0] == "s3://imaging-cohorts/lung-2025"
    assert runner["args"][runner["args"].index("--out") + 1] == "s3://lungscreen-results/runs/20250101t0200z"
    worker = job["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]
    for c in (runner, worker):
        assert set(_env_secret_refs(c).values()) == {"lungscreen-cohorts-s3"}
    # No credential value anywhere in the manifests: only references to existing Secrets.
    assert not kinds(docs, "Secret")
    for where, s in pod_specs(docs):
        for c in containers(s):
            for e in c.get("env", []):
                if e["name"].startswith("AWS_") and e["name"] not in (
                    "AWS_DEFAULT_REGION",
                    "AWS_ENDPOINT_URL",
                ):
                    assert "value" not in e, f"{where}: {e['name']} has a literal value"


def test_monitoring_off_renders_no_operator_objects_and_no_dashboard() -> None:
    docs = render("monitoring-off")
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert not [d for d in docs if "grafana_dashboard" in d["metadata"].get("labels", {})]
    assert not [d for d in docs if "pushgateway" in d["metadata"]["name"]]
    assert not kinds(docs, "NetworkPolicy")
    runner = daskjob(docs)["spec"]["job"]["spec"]["containers"][0]
    assert "--pushgateway" not in runner["args"]


def test_default_monitoring_objects() -> None:
    docs = render("default")
    monitors = {m["metadata"]["name"]: m for m in kinds(docs, "ServiceMonitor")}
    assert set(monitors) == {TRITON, f"{RELEASE}-pushgateway"}
    triton_svc = one(docs, "Service", TRITON)
    assert (
        monitors[TRITON]["spec"]["selector"]["matchLabels"].items()
        <= triton_svc["metadata"]["labels"].items()
    )
    assert monitors[TRITON]["spec"]["endpoints"][0]["port"] == "metrics"
    assert "metrics" in {p["name"] for p in triton_svc["spec"]["ports"]}
    assert monitors[f"{RELEASE}-pushgateway"]["spec"]["endpoints"][0]["honorLabels"] is True
    assert len(kinds(docs, "PrometheusRule")) == 1
    (dash,) = [d for d in docs if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert json.loads(dash["data"]["lungscreen.json"])["uid"] == "lungscreen-overview"


def test_network_policy_admits_only_the_job_pods_to_triton() -> None:
    docs = render("default")
    policy = one(docs, "NetworkPolicy", TRITON)
    triton_pod_labels = one(docs, "Deployment", TRITON)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= triton_pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    inference, metrics = policy["spec"]["ingress"]
    assert {p["port"] for p in inference["ports"]} == {"http", "grpc"}
    assert {p["port"] for p in metrics["ports"]} == {"metrics"}
    (peer,) = inference["from"]
    client = peer["podSelector"]["matchLabels"]
    assert set(peer) == {"podSelector"}  # same namespace only
    job = daskjob(docs)["spec"]
    for labels in (
        job["job"]["metadata"]["labels"],
        job["cluster"]["spec"]["scheduler"]["metadata"]["labels"],
        job["cluster"]["spec"]["worker"]["metadata"]["labels"],
    ):
        assert client.items() <= labels.items()
    launcher_labels = one(docs, "CronJob", f"{RELEASE}-screen")["spec"]["jobTemplate"]["spec"]["template"][
        "metadata"
    ]["labels"]
    assert not client.items() <= launcher_labels.items()


# --- values.schema.json -------------------------------------------------------------------

BAD_VALUES = {
    "negative worker count": ("screening.workers.replicas=-1", "screening.workers.replicas"),
    "unknown profile": ("triton.profile=tpu", "triton.profile"),
    "zero GPUs": ("triton.gpu.count=0", "triton.gpu.count"),
    "s3 repository without url": ("triton.modelRepository.type=s3", "url"),
    "s3 outputs with a bad url": ("screening.outputs.type=s3,screening.outputs.s3.url=bucket/x", "url"),
    "cpu profile on s3": (
        "triton.profile=cpu,triton.modelRepository.type=s3,triton.modelRepository.s3.url=s3://models/x",
        "triton.modelRepository.type",
    ),
    "failure ratio above 1": ("monitoring.prometheusRule.failureRatio=2", "failureRatio"),
    "misspelled key": ("screening.worker.replicas=3", "worker"),
    "memory quantity typo": ("triton.resources.limits.memory=32GB", "memory"),
    "root pods": ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_rejects_broken_values(case: str) -> None:
    assignment, mentioned = BAD_VALUES[case]
    out = helm(*template_args((), (assignment,)))
    assert out.returncode != 0, f"{case}: helm template accepted {assignment}"
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert mentioned in out.stderr, out.stderr


def test_lint_fails_on_a_negative_worker_count() -> None:
    out = helm("lint", str(CHART), "--set", "screening.workers.replicas=-3")
    assert out.returncode != 0
    assert "screening.workers.replicas" in out.stdout + out.stderr


# --- the launcher (files/launch_run.py) -------------------------------------------------------


def test_run_id_is_the_schedule_time_so_retries_resume() -> None:
    # CronJob names each Job <cronjob>-<scheduled time in minutes since the epoch>.
    minutes = 1735696800 // 60  # 2025-01-01 02:00 UTC
    assert launcher.run_id_for(f"{RELEASE}-screen-{minutes}", f"{RELEASE}-screen") == "20250101t0200z"
    assert launcher.run_id_for("manual-Rerun_7", f"{RELEASE}-screen") == "manual-rerun-7"
    long = launcher.run_id_for("x" * 80, f"{RELEASE}-screen")
    assert len(long) <= launcher.MAX_RUN_ID


def test_daskjob_names_fit_the_operator_limit() -> None:
    valid = re.compile(r"^(?=.{,53}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # dask_kubernetes.constants
    out = helm(*template_args((), ("fullnameOverride=" + "a" * 60,)))
    assert out.returncode == 0, out.stderr
    prefix = "a" * 24  # the helpers truncate names to 24 characters
    assert f"name: {prefix}-screen" in out.stdout and "a" * 25 not in out.stdout
    for run_id in ("20250101t0200z", launcher.run_id_for("m" * 80, "x")):
        assert valid.match(f"{prefix}-{run_id}-9"), run_id


class FakeApi:
    """DaskJob API double: attempt 0 failed earlier, the next attempt succeeds."""

    def __init__(self, existing: dict[str, str]) -> None:
        self.jobs = dict(existing)
        self.created: list[dict[str, Any]] = []

    def create(self, obj: dict[str, Any]) -> int:
        name = obj["metadata"]["name"]
        if name in self.jobs:
            return 409
        self.created.append(copy.deepcopy(obj))
        self.jobs[name] = "Successful"
        return 201

    def status(self, name: str) -> str:
        return self.jobs[name]


@pytest.mark.parametrize(
    ("existing", "created", "rc"),
    [
        ({}, ["lungscreen-20250101t0200z-0"], 0),
        ({"lungscreen-20250101t0200z-0": "Failed"}, ["lungscreen-20250101t0200z-1"], 0),
        ({"lungscreen-20250101t0200z-0": "Successful"}, [], 0),
        ({"lungscreen-20250101t0200z-0": "Failed", "lungscreen-20250101t0200z-1": "Failed"}, [], 1),
    ],
)
def test_launcher_follows_or_retries_the_same_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, existing: dict[str, str], created: list[str], rc: int
) -> None:
    template = one(render("default"), "ConfigMap", f"{RELEASE}-run-template")["data"]["daskjob.json"]
    (tmp_path / "daskjob.json").write_text(template)
    api = FakeApi(existing)
    monkeypatch.setattr(launcher, "Api", lambda namespace: api)
    env = {
        "POD_NAMESPACE": NAMESPACE, "POD_NAME": "launcher-abc", "POD_UID": "1234",
        "JOB_NAME": f"{RELEASE}-screen-{1735696800 // 60}", "CRONJOB_NAME": f"{RELEASE}-screen",
        "RUN_NAME_PREFIX": RELEASE, "RUN_ATTEMPTS": "2", "TEMPLATE_PATH": str(tmp_path / "daskjob.json"),
    }  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launcher.main() == rc
    assert [o["metadata"]["name"] for o in api.created] == created
    for obj in api.created:
        assert obj["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Pod", "name": "launcher-abc", "uid": "1234"}
        ]
        args = obj["spec"]["job"]["spec"]["containers"][0]["args"]
        assert args[args.index("--run-id") + 1] == "20250101t0200z"


def test_stage_repository_script_links_python_env_per_model(tmp_path: Any) -> None:
    """docker/stage-repository.sh (the CPU profile's init container) on a small repository."""
    import subprocess

    script = CHART.parents[1] / "docker" / "stage-repository.sh"
    src, dest, env = tmp_path / "src", tmp_path / "staged", tmp_path / "env"
    for model in ("detector", "classifier"):
        (src / model / "configs").mkdir(parents=True)
        (src / model / "1").mkdir()
        (src / model / "1" / "model.onnx").write_bytes(b"onnx")
        (src / model / "python_env").mkdir()  # a stale link in the source is replaced
    (src / ".hidden").mkdir()
    env.mkdir()
    out = subprocess.run(["sh", str(script), str(src), str(dest), str(env)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["classifier", "detector"]
    for model in ("detector", "classifier"):
        staged = dest / model
        assert (staged / "python_env").resolve() == env.resolve()
        assert (staged / "1").is_symlink() and (staged / "1" / "model.onnx").read_bytes() == b"onnx"
        assert (staged / "configs").resolve() == (src / model / "configs").resolve()
    missing = subprocess.run(
        ["sh", str(script), str(src), str(dest), str(tmp_path / "none")], capture_output=True
    )
    assert missing.returncode != 0
