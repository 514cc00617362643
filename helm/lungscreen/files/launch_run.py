"""Start one scheduled screening run as a DaskJob and follow it to the end (stdlib only).

Runs in the CronJob's pod. The run id comes from the schedule time: a CronJob names each Job
``<cronjob>-<minutes since the epoch of the scheduled time>``, so every retry of one scheduled
run (a new pod of the same Job) derives the same run id and the screening job resumes it. A
manual run (``kubectl create job --from=cronjob/...``) uses its Job's name instead.

Each attempt is a DaskJob named ``<prefix>-<run id>-<attempt>``: an attempt that is still
running is followed, not duplicated; a failed one makes this pod exit 1, and the Job's next pod
(``backoffLimit``) starts the next attempt with the same run id. RBAC: create and get on
daskjobs, nothing else. The DaskJob is owned by this pod, so it is garbage-collected with the
Job when the CronJob's history limit removes it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
POLL_S = 30
DONE = {"Successful", "Failed"}
MAX_RUN_ID = 25  # the DaskJob name (prefix <= 24 + run id + attempt) stays under dask's 53


def run_id_for(job_name: str, cronjob_name: str) -> str:
    """``20250101t0200z`` for a scheduled Job, a cleaned-up Job name for a manual one."""
    m = re.fullmatch(re.escape(cronjob_name) + r"-(\d+)", job_name)
    if m:
        scheduled = dt.datetime.fromtimestamp(int(m[1]) * 60, tz=dt.UTC)
        return scheduled.strftime("%Y%m%dt%H%Mz")
    manual = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")
    return manual[-MAX_RUN_ID:].strip("-") or "manual"


def render(template: str, name: str, run_id: str, namespace: str) -> dict:
    scheduler = f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786"
    text = template.replace("__NAME__", name).replace("__RUN_ID__", run_id)
    return json.loads(text.replace("__SCHEDULER__", scheduler))


class Api:
    def __init__(self, namespace: str) -> None:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.base = f"https://{host}:{port}/apis/kubernetes.dask.org/v1/namespaces/{namespace}/daskjobs"
        with open(f"{SA_DIR}/token") as f:
            self.token = f.read().strip()
        self.ctx = ssl.create_default_context(cafile=f"{SA_DIR}/ca.crt")

    def _call(self, method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            url, method=method, data=None if body is None else json.dumps(body).encode()
        )
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as e:
            return e.code, {}

    def create(self, obj: dict) -> int:
        return self._call("POST", self.base, obj)[0]

    def status(self, name: str) -> str:
        code, obj = self._call("GET", f"{self.base}/{name}")
        if code != 200:
            raise RuntimeError(f"GET daskjob {name}: HTTP {code}")
        return obj.get("status", {}).get("jobStatus", "")


def main() -> int:
    env = os.environ
    namespace = env["POD_NAMESPACE"]
    run_id = run_id_for(env["JOB_NAME"], env["CRONJOB_NAME"])
    with open(env["TEMPLATE_PATH"]) as f:
        template = f.read()
    api = Api(namespace)
    for attempt in range(int(env.get("RUN_ATTEMPTS", "3"))):
        name = f"{env['RUN_NAME_PREFIX']}-{run_id}-{attempt}"
        obj = render(template, name, run_id, namespace)
        obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": env["POD_NAME"], "uid": env["POD_UID"]}
        ]
        code = api.create(obj)
        if code == 409:  # this attempt exists: follow it unless it already failed
            status = api.status(name)
            if status == "Failed":
                print(f"run {run_id}: attempt {name} failed earlier, starting the next", flush=True)
                continue
        elif code not in (200, 201):
            print(f"run {run_id}: creating DaskJob {name} failed: HTTP {code}", file=sys.stderr)
            return 1
        print(f"run {run_id}: following DaskJob {name}", flush=True)
        while (status := api.status(name)) not in DONE:
            time.sleep(POLL_S)
        print(f"run {run_id}: DaskJob {name} {status}", flush=True)
        return 0 if status == "Successful" else 1
    print(f"run {run_id}: no attempt left", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
