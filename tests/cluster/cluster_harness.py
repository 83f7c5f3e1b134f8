"""The cluster tier's machinery: kubectl and helm, condition waits, a namespace recorder, the
job driver that publishes results the way the benchmark Job would, and the operator, in a
KopfRunner or, as the chart runs it, in a process of its own.

`conftest.py` turns these into fixtures; tests import the helpers they call directly, and so
does `benchmarks/operator_load.py` (`make bench`), which runs the cluster tier's load scenario.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from bakeoff import api, naming
from bakeoff_bench import publish, runner
from bakeoff_bench.config import BenchConfig
from bakeoff_bench.results import CellResult

REPO = Path(__file__).resolve().parents[2]
CONTROL_PLANE = REPO / "hack" / "control-plane.sh"
BUILD_TOOLS = REPO / "hack" / "build-tools.sh"
CHART = REPO / "charts" / "bakeoff"
TINY_SUITE = REPO / "tests" / "local" / "suites" / "tiny.yaml"
SUITES = Path(__file__).parent / "suites"
CRD = REPO / "crds" / "benchmarksuite.yaml"
CRD_NAME = f"benchmarksuites.{api.API_GROUP}"
GPU_TAINT = "nvidia.com/gpu"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"  # set by the Job controller on its pods
MAX_PUBLISH_ATTEMPTS = 20
# The backend whose benchmark pods kwok fails (hack/kwok/stages.yaml, pod-bench-fail): the load
# generator crashes before publishing, so the job driver publishes nothing for it.
FAILING_BENCH_BACKEND = "bench-fails"
PLURAL = "benchmarksuites"
# A suite that reached one of these phases stays there (cells use the same two names).
FINISHED = (api.SuitePhase.SUCCEEDED.value, api.SuitePhase.FAILED.value)

T = TypeVar("T")
log = logging.getLogger("bakeoff.cluster-tests")


# ----- kubectl and waiting -------------------------------------------------------------------


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The kubectl built with the control plane (`hack/control-plane.sh kubectl`)."""
    done = subprocess.run(
        [str(CONTROL_PLANE), "kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}"
        )
    return done


def helm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The helm built by hack/build-tools.sh, on the control plane's KUBECONFIG."""
    done = subprocess.run(
        [str(BUILD_TOOLS), "helm", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    describe: Callable[[], object] | None = None,
    interval: float = 0.25,
) -> T:
    """Poll `condition` until it returns something truthy; at the deadline, fail with what
    `describe()` says about the state (a condition poll, never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = describe() if describe is not None else value
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; saw: {seen}")
        time.sleep(interval)


def install_crd() -> None:
    """Apply crds/ (server-side, so a newer generated CRD replaces an older one) and wait."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")


def create_restricted_namespace(core: k8s.CoreV1Api, name: str) -> None:
    """A namespace that enforces the restricted Pod Security Standard."""
    core.create_namespace(
        k8s.V1Namespace(
            metadata=k8s.V1ObjectMeta(
                name=name,
                labels={
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "bakeoff.dev/test": "cluster",
                },
            )
        )
    )


def delete_namespace(name: str) -> None:
    """Delete without waiting, after taking finalizers off the suites: suites the operator left
    finalized would keep the namespace Terminating for ever."""
    listed = kubectl("get", "benchmarksuites", "-n", name, "-o", "name", check=False)
    for suite in listed.stdout.split():
        kubectl(
            "patch", suite, "-n", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
            check=False,
        )  # fmt: skip
    kubectl("delete", "namespace", name, "--wait=false", check=False)


# ----- suites --------------------------------------------------------------------------------


def read_suite(custom: k8s.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    suite: dict[str, Any] = custom.get_namespaced_custom_object(
        api.API_GROUP, api.API_VERSION, namespace, PLURAL, name
    )
    return suite


def suite_status(custom: k8s.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = read_suite(custom, namespace, name).get("status") or {}
    return status


def wait_for_suite_phase(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    name: str,
    phases: tuple[str, ...],
    timeout: float,
) -> dict[str, Any]:
    """Wait until the suite's status.phase is one of `phases`; returns the status."""

    def reached() -> dict[str, Any] | None:
        status = suite_status(custom, namespace, name)
        return status if status.get("phase") in phases else None

    def describe() -> object:
        status = suite_status(custom, namespace, name)
        cells = [
            f"{c.get('backend')}/{c.get('pool')}={c.get('phase')} ({c.get('message')})"
            for c in status.get("cells", [])
        ]
        return f"phase={status.get('phase')} progress={status.get('progress')} cells={cells}"

    return wait_for(reached, timeout, f"suite {name} to reach {'/'.join(phases)}", describe)


def apply_suite(namespace: str, path: Path) -> str:
    """`kubectl apply` a suite file into the namespace; returns the suite's name."""
    kubectl("apply", "-n", namespace, "-f", str(path))
    name: str = yaml.safe_load(path.read_text())["metadata"]["name"]
    return name


def conditions_by_type(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


# ----- the namespace recorder ----------------------------------------------------------------


@dataclass
class Recorded:
    """Everything one kind of object did in the namespace, from a watch."""

    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> last version
    uids: dict[str, set[str]] = field(default_factory=dict)  # name -> every uid seen
    first_seen: dict[str, float] = field(default_factory=dict)  # name -> time.monotonic()
    nodes: dict[str, str] = field(default_factory=dict)  # pods: name -> spec.nodeName
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # last version, deleted too
    ready: set[str] = field(default_factory=set)  # pods seen with condition Ready=True


class NamespaceRecorder:
    """Watches pods, Jobs and Deployments of one namespace from background threads.

    Objects can live for a second (kwok completes Job pods at once, the operator cleans up
    after each cell), so a list now and then would miss them; a watch sees every version.
    """

    def __init__(self, api_client: k8s.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        core, batch, apps = (
            k8s.CoreV1Api(api_client),
            k8s.BatchV1Api(api_client),
            k8s.AppsV1Api(api_client),
        )
        self.kinds: dict[str, tuple[Callable[..., Any], Recorded]] = {
            "Pod": (core.list_namespaced_pod, Recorded()),
            "Job": (batch.list_namespaced_job, Recorded()),
            "Deployment": (apps.list_namespaced_deployment, Recorded()),
        }
        self.changed = threading.Condition()
        self.errors: list[str] = []
        # Watch errors while the test has the API server down on purpose: expected, kept apart.
        self.outage_errors: list[str] = []
        self.in_outage = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(kind,), name=f"watch-{kind}", daemon=True)
            for kind in self.kinds
        ]
        self._synced = {kind: threading.Event() for kind in self.kinds}

    @property
    def pods(self) -> Recorded:
        return self.kinds["Pod"][1]

    @property
    def jobs(self) -> Recorded:
        return self.kinds["Job"][1]

    @property
    def deployments(self) -> Recorded:
        return self.kinds["Deployment"][1]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        for kind, synced in self._synced.items():
            if not synced.wait(30):
                raise AssertionError(f"the {kind} watch of {self.namespace} did not start")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _record(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        recorded = self.kinds[kind][1]
        meta = obj.get("metadata", {})
        name = meta.get("name", "")
        with self.changed:
            recorded.uids.setdefault(name, set()).add(meta.get("uid", ""))
            recorded.first_seen.setdefault(name, time.monotonic())
            recorded.labels[name] = dict(meta.get("labels") or {})
            node = obj.get("spec", {}).get("nodeName")
            if node:
                recorded.nodes[name] = node
            recorded.final[name] = obj
            conditions = obj.get("status", {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                recorded.ready.add(name)
            if event_type == "DELETED":
                recorded.latest.pop(name, None)
            else:
                recorded.latest[name] = obj
            self.changed.notify_all()

    def _watch(self, kind: str) -> None:
        list_fn = self.kinds[kind][0]
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listing = json.loads(
                        list_fn(self.namespace, _preload_content=False).data or b"{}"
                    )
                    for item in listing.get("items", []):
                        self._record(kind, "ADDED", item)
                    version = listing["metadata"]["resourceVersion"]
                    self._synced[kind].set()
                stream = watch.Watch().stream(
                    list_fn,
                    self.namespace,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=2,
                )
                for event in stream:
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        if obj.get("code") == 410:
                            version = ""  # too old: list again
                            break
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._record(kind, event["type"], obj)
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    version = ""
                    continue
                self._error(f"{kind} watch: {error}")
            except Exception as error:  # the watch thread must not die silently
                self._error(f"{kind} watch: {type(error).__name__}: {error}")

    def _error(self, message: str) -> None:
        (self.outage_errors if self.in_outage.is_set() else self.errors).append(message)
        self._stop.wait(1)

    def bench_job_uids(self) -> dict[str, set[str]]:
        """Every uid each benchmark Job name ever had (more than one: a twin was created)."""
        with self.changed:
            return {
                job: set(uids)
                for job, uids in self.jobs.uids.items()
                if self.jobs.labels[job].get(naming.LABEL_COMPONENT) == naming.COMPONENT_BENCH
            }

    def describe(self) -> str:
        with self.changed:
            lines = [f"{kind}: {sorted(rec.uids)}" for kind, (_, rec) in self.kinds.items()]
            lines.append(f"pod nodes: {dict(sorted(self.pods.nodes.items()))}")
        return "\n".join(lines)


# ----- the job driver ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterAccess:
    """The API server as the kubeconfig names it (what the pod sees as kubernetes.default)."""

    server: str
    ca_file: str

    @classmethod
    def from_kubeconfig(cls, path: Path) -> ClusterAccess:
        config = yaml.safe_load(path.read_text())
        context_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        ca_file = cluster.get("certificate-authority")
        if ca_file is None:
            data = base64.b64decode(cluster["certificate-authority-data"])
            with tempfile.NamedTemporaryFile("wb", suffix="-ca.crt", delete=False) as handle:
                handle.write(data)
            ca_file = handle.name
        return cls(server=cluster["server"], ca_file=ca_file)


def token_kubeconfig(path: Path, kubeconfig: Path, namespace: str, service_account: str) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token from
    `kubectl create token`), as the operator pod's mounted token would."""
    token = kubectl(
        "create", "token", service_account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    access = ClusterAccess.from_kubeconfig(kubeconfig)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {
                    "server": access.server, "certificate-authority": access.ca_file}}],
                "users": [{"name": service_account, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": service_account,
                                                         "namespace": namespace}}],
                "current-context": "sa",
            }
        )
    )  # fmt: skip
    return path


def local_results(out: Path) -> dict[str, CellResult]:
    """One real `bakeoff run --local` of the tiny suite (PyTorch server and tritonserver on
    this machine): its two CellResults, by backend kind, for the job driver to publish."""
    done = subprocess.run(
        [sys.executable, "-m", "bakeoff.cli", "run", str(TINY_SUITE), "--local", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=out,
    )
    if done.returncode != 0:
        tail = done.stderr[-4000:]
        raise AssertionError(f"bakeoff run --local exited {done.returncode}:\n{tail}")
    cells = out / "tiny" / "cells"
    results = {
        api.BackendKind.PYTORCH.value: CellResult.model_validate_json(
            (cells / "pytorch-local.json").read_text()
        ),
        api.BackendKind.TRITON_ONNX.value: CellResult.model_validate_json(
            (cells / "triton-onnx-cpu-local.json").read_text()
        ),
    }
    assert results["pytorch"].server.name == "bakeoff-pytorch"
    assert results["triton-onnx"].server.name == "triton"
    return results


@dataclass(frozen=True)
class Published:
    job: str
    job_uid: str
    configmap: str
    node: str
    backend_kind: str
    outcome: str  # "created" or "replaced", from publish.publish
    seconds_after_job: float  # from the Job's first sighting to the ConfigMap written
    data: str  # the ConfigMap's result document, as written
    cell: tuple[str, str] = ("", "")  # (backend, pool)


def resolve_env(container: Mapping[str, Any], pod: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would build it (values and fieldRefs)."""
    fields = {
        "metadata.namespace": pod["metadata"]["namespace"],
        "metadata.name": pod["metadata"]["name"],
        "spec.nodeName": pod["spec"].get("nodeName") or "",
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName") or "",
    }
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        path = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if path not in fields:
            raise AssertionError(f"env {var['name']}: the job driver cannot resolve {var}")
        env[var["name"]] = fields[path]
    return env


class JobDriver:
    """Does what the benchmark Job's last step does, for each benchmark Job kwok "runs".

    kwok runs no containers, so for every new benchmark Job this takes a real result of a
    local run (PyTorch server or tritonserver, by the backend's kind), rewrites it to the
    Job's cell and to the node the scheduler picked for the Job's pod (the downward API's
    spec.nodeName), and publishes it with `bakeoff_bench.publish` from the Job container's own
    environment, with a token of the Job's ServiceAccount. It reacts to the recorder's watch
    events: kwok completes the pod at once, and the operator waits only the result grace.
    """

    def __init__(
        self,
        recorder: NamespaceRecorder,
        custom: k8s.CustomObjectsApi,
        access: ClusterAccess,
        results: Mapping[str, CellResult],
    ) -> None:
        self.recorder = recorder
        self.custom = custom
        self.access = access
        self.results = results  # backend kind -> a real CellResult of that kind
        # (backend, pool) -> a rewrite of the result document before it is written: what a
        # broken or mismatched load generator would publish.
        self.tamper: dict[tuple[str, str], Callable[[str], str]] = {}
        # Backends whose Jobs run the real load generator here, with the Job's own config and
        # its Secret volumes laid out as the kubelet would mount them (`_run_for_real`).
        self.run_for_real: set[str] = set()
        self.published: dict[str, Published] = {}  # Job uid -> what was written
        self.errors: list[str] = []  # Jobs given up on
        self.retried: list[str] = []  # attempts that failed but were retried
        self._attempts: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._first_seen: dict[str, float] = {}
        self._tokens: dict[str, str] = {}
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-driver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.recorder.changed:
            self.recorder.changed.notify_all()
        self._thread.join(timeout=30)

    def pause(self) -> None:
        """Publish nothing until `resume` (Jobs seen meanwhile are published then)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        with self.recorder.changed:
            self.recorder.changed.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.recorder.changed:
                self.recorder.changed.wait(timeout=0.25)
                work = self._ready_jobs()
            for job, pod in work:
                uid = job["metadata"]["uid"]
                try:
                    self.published[uid] = self._publish(job, pod)
                except Exception as error:
                    # A Role(Binding) created a moment ago may not be in the API server's
                    # authorizer cache yet: retry for a few seconds before giving up.
                    attempts = self._attempts[uid] = self._attempts.get(uid, 0) + 1
                    message = f"job {job['metadata']['name']}: {type(error).__name__}: {error}"
                    if attempts >= MAX_PUBLISH_ATTEMPTS:
                        self.errors.append(f"{message} (gave up after {attempts} attempts)")
                        log.error("job driver: %s", message)
                    else:
                        self.retried.append(message)
                        self._retry_at[uid] = time.monotonic() + 0.5

    def _ready_jobs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Benchmark Jobs not yet published whose pod has a node (caller holds the lock)."""
        now = time.monotonic()
        ready = []
        for job in self.recorder.jobs.latest.values():
            uid = job["metadata"]["uid"]
            labels = job["metadata"].get("labels") or {}
            if labels.get(naming.LABEL_COMPONENT) != naming.COMPONENT_BENCH:
                continue
            if labels.get(naming.LABEL_BACKEND) == FAILING_BENCH_BACKEND:
                continue  # kwok fails its pods: the load generator never gets to publish
            self._first_seen.setdefault(uid, now)
            if uid in self.published or self._paused.is_set():
                continue
            if self._attempts.get(uid, 0) >= MAX_PUBLISH_ATTEMPTS:
                continue
            if self._retry_at.get(uid, 0) > now:
                continue
            pod = next(
                (
                    p
                    for p in self.recorder.pods.latest.values()
                    if (p["metadata"].get("labels") or {}).get(JOB_UID_LABEL) == uid
                    and p["spec"].get("nodeName")
                ),
                None,
            )
            if pod is not None:
                ready.append((job, pod))
        return ready

    def _token(self, namespace: str, service_account: str) -> str:
        key = f"{namespace}/{service_account}"
        if key not in self._tokens:
            done = kubectl("create", "token", service_account, "-n", namespace)
            self._tokens[key] = done.stdout.strip()
        return self._tokens[key]

    def _publish(self, job: Mapping[str, Any], pod: Mapping[str, Any]) -> Published:
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        env = resolve_env(container, pod)
        cell = json.loads(env["BAKEOFF_BENCH_CONFIG"])
        suite = read_suite(self.custom, pod["metadata"]["namespace"], cell["suite"])
        kind = next(b["kind"] for b in suite["spec"]["backends"] if b["name"] == cell["backend"])
        node = pod["spec"]["nodeName"]
        if cell["backend"] in self.run_for_real:
            real = self._run_for_real(pod_spec, env, pod["metadata"]["namespace"])
        else:
            real = self.results[kind]
        result = real.model_copy(
            update={
                "suite": cell["suite"],
                "backend": cell["backend"],
                "pool": cell["pool"],
                "environment": real.environment.model_copy(update={"node": node}),
            }
        )
        destination = publish.destination_from_env(env)
        token = self._token(pod["metadata"]["namespace"], pod_spec["serviceAccountName"])
        access = publish.ApiAccess(self.access.server, token, self.access.ca_file)
        configmap = publish.result_configmap(result, destination)
        tamper = self.tamper.get((cell["backend"], cell["pool"]))
        if tamper is not None:
            configmap["data"][publish.RESULT_KEY] = tamper(configmap["data"][publish.RESULT_KEY])
        outcome = asyncio.run(publish.publish(access, configmap))
        uid = job["metadata"]["uid"]
        return Published(
            job=job["metadata"]["name"],
            job_uid=uid,
            configmap=destination.name,
            node=node,
            backend_kind=kind,
            outcome=outcome,
            seconds_after_job=time.monotonic() - self._first_seen.get(uid, time.monotonic()),
            data=configmap["data"][publish.RESULT_KEY],
            cell=(cell["backend"], cell["pool"]),
        )

    def _run_for_real(
        self, pod_spec: Mapping[str, Any], env: Mapping[str, str], namespace: str
    ) -> CellResult:
        """What the Job's container does: `run_bench` on the Job's config, reading its Secret
        volumes' files. The Secrets are read as the kubelet reads them (this test process has
        the cluster admin's rights), written under a temporary folder, and the config's file
        paths moved there from the volumes' mount paths."""
        config = env["BAKEOFF_BENCH_CONFIG"]
        mounts = {m["name"]: m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]}
        with tempfile.TemporaryDirectory(prefix="bakeoff-secret-volumes-") as folder:
            for volume in pod_spec.get("volumes", []):
                if "secret" not in volume:
                    continue
                secret = json.loads(kubectl("get", "secret", volume["secret"]["secretName"],
                                            "-n", namespace, "-o", "json").stdout)  # fmt: skip
                here = Path(folder) / volume["name"]
                here.mkdir()
                for item in volume["secret"].get("items", []):
                    (here / item["path"]).write_bytes(base64.b64decode(secret["data"][item["key"]]))
                config = config.replace(f'"{mounts[volume["name"]]}/', f'"{here}/')
            bench = BenchConfig.model_validate_json(config)
            return asyncio.run(runner.run_bench(bench, progress=lambda message: None))

    def describe(self) -> str:
        lines = [
            f"{p.job} -> {p.configmap} ({p.backend_kind} result, node {p.node}, {p.outcome}, "
            f"{p.seconds_after_job:.1f} s after the Job appeared)"
            for p in self.published.values()
        ]
        lines += [f"retried: {e}" for e in self.retried]
        lines += [f"ERROR {e}" for e in self.errors]
        return "\n".join(lines) or "(nothing published)"


# ----- the operator --------------------------------------------------------------------------


class LogBuffer(logging.Handler):
    """Keeps the operator's log records (kopf writes its own to the runner's captured stderr,
    which is readable only after the runner stops)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(threadName)s] %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def tail(self, lines: int = 300) -> str:
        return "\n".join(self.lines[-lines:])


class Operator:
    """The operator (`kopf run --standalone -n NS -m bakeoff.handlers`) in a KopfRunner.

    Can be stopped and started again, as a pod restart would; every stop asserts that kopf
    exited cleanly.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.log = LogBuffer()
        self.starts = 0
        self._runner: KopfRunner | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None

    def start(self) -> None:
        assert self._runner is None, "the operator is already running"
        args = ["run", "--standalone", "-n", self.namespace, "-m", "bakeoff.handlers", "--verbose"]
        self.log.lines.append(f"----- operator start #{self.starts + 1}: kopf {' '.join(args)}")
        logging.getLogger("kopf").addHandler(self.log)
        self._runner = KopfRunner(args, timeout=60)
        self._runner.__enter__()
        self.starts += 1

    def stop(self) -> None:
        runner, self._runner = self._runner, None
        assert runner is not None, "the operator is not running"
        try:
            runner.__exit__(None, None, None)
        finally:
            logging.getLogger("kopf").removeHandler(self.log)
        self.log.lines.append(f"----- operator stop #{self.starts}")
        assert runner.exception is None, f"kopf raised: {runner.exception!r}\n{runner.output}"
        assert runner.exit_code == 0, f"kopf exited {runner.exit_code}\n{runner.output}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class OperatorProcess:
    """The operator in a child process of its own, as the chart's Deployment runs it (`kopf
    run --standalone -m bakeoff.handlers --liveness=...`); its memory and CPU are its own.

    `kill` is SIGKILL: no handler finishes, nothing is flushed or released, as when a node
    dies or the OOM killer strikes; `start` again is the Deployment's replacement pod; `stop`
    is SIGTERM, as a pod gets. Liveness and metrics move to free ports (other operators may
    run on this machine). Output goes to `log_path`, so a failed test shows every instance's.
    """

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        # `kopf` is the console script of this interpreter's environment, as in the image.
        self.argv = [str(Path(sys.executable).with_name(argv[0])), *argv[1:]]
        self.env = dict(env)
        self.log_path = log_path
        self.starts = 0
        self.kills = 0
        self.health_port = self.metrics_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def watching(cls, namespace: str, log_path: Path, env: Mapping[str, str]) -> OperatorProcess:
        """The chart's command, watching one namespace, with kopf's verbose log."""
        argv = [
            "kopf", "run", "--standalone", "-m", "bakeoff.handlers", "--verbose",
            f"--namespace={namespace}", "--liveness=http://0.0.0.0:8080/healthz",
        ]  # fmt: skip
        return cls(argv, env, log_path)

    @property
    def pid(self) -> int:
        assert self._process is not None, "the operator never started"
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60) -> None:
        assert not self.alive(), "the operator is already running"
        self.health_port, self.metrics_port = free_port(), free_port()
        argv = [
            f"--liveness=http://127.0.0.1:{self.health_port}/healthz"
            if a.startswith("--liveness=") else a
            for a in self.argv
        ]  # fmt: skip
        env = {**os.environ, **self.env, "BAKEOFF_METRICS_PORT": str(self.metrics_port),
               "PYTHONUNBUFFERED": "1"}  # fmt: skip
        with self.log_path.open("ab") as out:
            out.write(f"----- operator start #{self.starts + 1}: {' '.join(argv)}\n".encode())
            self._process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        # kopf answers its liveness endpoint once its startup handlers have run.
        wait_for(self._live, timeout, "the operator's liveness endpoint", self.tail)

    def _live(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"the operator exited {self._process.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(self._url(self.health_port, "/healthz"), timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        assert self._process is not None and self.alive(), "the operator is not running"
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=30)
        self.kills += 1
        with self.log_path.open("ab") as out:
            out.write(f"----- operator #{self.starts} killed (SIGKILL)\n".encode())

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        assert self._process is not None, "the operator never started"
        if self.alive():
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        return self._process.returncode

    def metrics(self) -> str:
        """The operator's own /metrics (bakeoff_reconcile_* and the suite gauges)."""
        with urllib.request.urlopen(self._url(self.metrics_port, "/metrics"), timeout=5) as r:
            text: str = r.read().decode()
            return text

    @staticmethod
    def _url(port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"

    def proc_status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS, kept by the kernel: no sampling misses a spike), bytes."""
        wanted = {"VmRSS", "VmHWM"}
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in wanted:
                values[key] = int(rest.split()[0]) * 1024  # reported in kB
        return values

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (/proc/PID/stat fields 14 and 15)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 300) -> str:
        if not self.log_path.exists():
            return "(no output)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# ----- admission gates -------------------------------------------------------------------------


@contextmanager
def admission_gate(
    namespace: str,
    name: str,
    resource_rule: Mapping[str, Any],
    expression: str,
    message: str,
    probe: Callable[[], subprocess.CompletedProcess[str]],
) -> Iterator[None]:
    """Hold the cluster at a chosen step: a ValidatingAdmissionPolicy (CEL) bound to one
    namespace denies the requests `resource_rule` matches where `expression` is false.

    The operator's request is refused by the API server like any other denial, so the
    operator stays at the step before, and the test can act there (kill it) deterministically.
    `probe` is a server-side dry run of such a request: the gate is up once the API server
    refuses it (the policy takes effect when the API server's informer has it).
    """
    full = f"{namespace}-{name}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": full},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [dict(resource_rule)]},
            "validations": [{"expression": expression, "message": message}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": full},
        "spec": {
            "policyName": full,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": [policy, binding]}))  # fmt: skip
    try:
        wait_for(lambda: message in probe().stderr, 30, f"admission gate {full} to refuse", probe)
        yield
    finally:
        kubectl(
            "delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", full,
            "--ignore-not-found", check=False,
        )  # fmt: skip
        wait_for(lambda: message not in probe().stderr, 30, f"admission gate {full} to lift", probe)
