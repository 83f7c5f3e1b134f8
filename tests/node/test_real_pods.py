"""The CPU-mock bake-off as its users run it: `helm install` of the chart with the images built
here, `kubectl apply -f examples/cpu-mock.yaml`, and every pod real: the operator, the PyTorch
server and the bundled tritonserver (probes, Services, DNS), the benchmark Jobs, on a real
kubelet beside kwok's GPU pools. Then a backend killed mid-benchmark, the operator's metrics
scraped by a real Prometheus as the chart's ServiceMonitor would have it, and an uninstall that
leaves nothing behind.

The tests share one release and run in file order (each builds on the suites before it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import (
    CHART,
    CRD_NAME,
    FINISHED,
    REPO,
    NamespaceRecorder,
    apply_suite,
    create_restricted_namespace,
    delete_namespace,
    helm,
    kubectl,
    suite_status,
    wait_for,
    wait_for_suite_phase,
)
from conftest import BUILT, REAL_NODE, add_diagnostic, dump
from kubernetes import client as k8s
from prometheus import Prometheus, discovered_targets, scrape_config

from bakeoff import naming

sys.path.insert(0, str(REPO / "tests" / "unit"))
sys.path.insert(0, str(REPO / "tests"))
from fake_oip import MODEL as GATEWAY_MODEL
from fake_oip import tls_gateway
from gateway_suite import gateway_suite
from tls_certs import make_pki

pytestmark = pytest.mark.node

RELEASE = "bakeoff"
RELEASE_NS = "bakeoff-system"
# Suites live apart from the operator, in two watched namespaces.
TEAM_A, TEAM_B = "team-a", "team-b"
NAMESPACES = (RELEASE_NS, TEAM_A, TEAM_B)
CPU_MOCK = REPO / "examples" / "cpu-mock.yaml"
KILL_SUITE = Path(__file__).parent / "suites" / "cpu-mock-kill.yaml"
SUITE_TIMEOUT_S = 600
CONTAINERD_SOCK = "/run/bakeoff-node/containerd.sock"
SCRAPE_INTERVAL = "2s"
# The chart's values for a one-worker, two-core cluster: the load generator may share the
# backend's node (flagged client-shares-node), and the requests fit beside each other.
VALUES = {
    "cpuMock": "true",
    "operator.image.repository": BUILT["operator"].split(":")[0],
    "operator.image.tag": BUILT["operator"].split(":")[1],
    "operator.image.pullPolicy": "Never",
    "operator.reconcileIntervalSeconds": "2",
    "images.pytorch": BUILT["serve"],
    "images.modelPrep": BUILT["serve"],
    "images.cpuMock": BUILT["serve"],
    "images.bench": BUILT["bench-job"],
    "benchJob.antiAffinity": "preferred",
    "benchJob.resources.requests.cpu": "200m",
    "backends.resources.requests.cpu": "500m",
    "watch.namespaces": "{" + f"{TEAM_A},{TEAM_B}" + "}",
    "metrics.serviceMonitor.interval": SCRAPE_INTERVAL,
}


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def release(kubeconfig: Path, core: k8s.CoreV1Api) -> Iterator[str]:
    """The chart installed into a restricted namespace, watching TEAM_A and TEAM_B."""
    helm("uninstall", RELEASE, "-n", RELEASE_NS, "--ignore-not-found", "--wait")
    # A previous run's CRD (crds.keep leaves it, owned by that release): the CRD goes, and its
    # suites with it.
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--timeout=120s")
    for namespace in NAMESPACES:
        if kubectl("get", "namespace", namespace, check=False).returncode == 0:
            delete_namespace(namespace)  # a previous run's leftovers
            wait_for(
                lambda ns=namespace: kubectl("get", "namespace", ns, check=False).returncode,
                120, f"namespace {namespace} to go",
            )  # fmt: skip
        create_restricted_namespace(core, namespace)
    started = time.monotonic()
    helm(
        "install", RELEASE, str(CHART), "-n", RELEASE_NS, *set_args(VALUES),
        "--wait", "--timeout", "180s", timeout=240,
    )  # fmt: skip
    print(f"\nhelm install --wait: {time.monotonic() - started:.1f} s")
    yield RELEASE_NS
    helm("uninstall", RELEASE, "-n", RELEASE_NS, "--ignore-not-found", "--wait")
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--timeout=120s", check=False)
    for namespace in NAMESPACES:
        delete_namespace(namespace)


@dataclass
class SuiteRun:
    namespace: str
    name: str
    status: dict[str, Any]
    recorder: NamespaceRecorder
    seconds: float


def run_suite(api_client: k8s.ApiClient, custom: k8s.CustomObjectsApi, namespace: str,
              path: Path) -> Iterator[SuiteRun]:  # fmt: skip
    recorder = NamespaceRecorder(api_client, namespace)
    recorder.start()
    try:
        started = time.monotonic()
        name = apply_suite(namespace, path)
        status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)
        yield SuiteRun(namespace, name, status, recorder, time.monotonic() - started)
    finally:
        recorder.stop()


@pytest.fixture(scope="module")
def cpu_mock(
    release: str, api_client: k8s.ApiClient, custom: k8s.CustomObjectsApi
) -> Iterator[SuiteRun]:
    """examples/cpu-mock.yaml, applied as the README says, run to the end."""
    yield from run_suite(api_client, custom, TEAM_A, CPU_MOCK)


def pods_of(run: SuiteRun, component: str) -> dict[str, dict[str, Any]]:
    return {
        name: pod
        for name, pod in run.recorder.pods.final.items()
        if run.recorder.pods.labels[name].get(naming.LABEL_COMPONENT) == component
    }


def ever_ready(run: SuiteRun, pod_name: str) -> bool:
    """Whether the watch saw the pod Ready (backends are deleted once measured)."""
    return pod_name in run.recorder.pods.ready


def ctr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", CONTAINERD_SOCK, "-n", "k8s.io", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def image_ids() -> dict[str, str]:
    """ref -> image ID (sha256 of the config: what containerd reports as a pod's imageID)."""
    return {
        ref: subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Id}}", ref],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for ref in BUILT.values()
    }  # fmt: skip


def test_the_cpu_mock_suite_runs_as_real_pods_from_the_images_built_here(
    request: pytest.FixtureRequest, cpu_mock: SuiteRun, core: k8s.CoreV1Api
) -> None:
    add_diagnostic(request, lambda: dump(*NAMESPACES))
    status = cpu_mock.status
    assert status["phase"] == "Succeeded", status
    cells = {(c["backend"], c["pool"]): c for c in status["cells"]}
    assert set(cells) == {("pytorch", "cpu-mock"), ("triton-onnx-cpu", "cpu-mock")}
    for cell in cells.values():
        assert cell["phase"] == "Succeeded" and cell["node"] == REAL_NODE, cell
        assert cell["resultRef"].startswith("configmap/")

    # Backends: real containers of the serve image, probed Ready on the real node.
    ids = image_ids()
    backends = pods_of(cpu_mock, naming.COMPONENT_BACKEND)
    assert len(backends) == 2, sorted(backends)
    for name, pod in backends.items():
        assert pod["spec"]["nodeName"] == REAL_NODE
        assert ever_ready(cpu_mock, name), f"{name} was never Ready"
        statuses = pod["status"].get("containerStatuses") or []
        assert statuses and all(s["containerID"].startswith("containerd://") for s in statuses)
        assert {s["imageID"].rpartition("@")[2] or s["imageID"] for s in statuses} <= {
            ids[BUILT["serve"]]
        }, statuses
    # Benchmark Jobs: real pods of the bench-job image that ran to completion.
    benches = pods_of(cpu_mock, naming.COMPONENT_BENCH)
    assert len(benches) == 2, sorted(benches)
    for pod in benches.values():
        assert pod["spec"]["nodeName"] == REAL_NODE
        assert pod["status"]["phase"] == "Succeeded", pod["status"]
        (container,) = pod["status"]["containerStatuses"]
        assert container["state"]["terminated"]["exitCode"] == 0
        assert container["imageID"].endswith(ids[BUILT["bench-job"]])
    # The operator itself, from the operator image.
    (operator,) = core.list_namespaced_pod(RELEASE_NS).items
    assert operator.spec.node_name == REAL_NODE
    assert operator.status.container_statuses[0].image_id.endswith(ids[BUILT["operator"]])
    assert operator.status.container_statuses[0].restart_count == 0

    # Results: one ConfigMap per cell, each a full result measured through the Service's DNS
    # name from the other pod, with the images that produced it.
    for (backend, pool), cell in cells.items():
        configmap = core.read_namespaced_config_map(cell["resultRef"].split("/")[1], TEAM_A)
        result = json.loads(next(iter(configmap.data.values())))
        assert result["backend"] == backend and result["pool"] == pool
        assert result["single"]["latency"]["count"] == 100
        assert result["single"]["failed"] == 0
        env = result["environment"]
        assert env["node"] == REAL_NODE and env["serverNode"] == REAL_NODE
        assert env["images"]["bench"] == BUILT["bench-job"]
        assert env["images"]["server"] == BUILT["serve"]
        assert "client-shares-node" in {f["code"] for f in result["flags"]}
    assert status["summary"]["winners"], status["summary"]
    print(f"\ncpu-mock on real pods: Succeeded in {cpu_mock.seconds:.0f} s")
    print_image_table(cpu_mock, core)


def print_image_table(run: SuiteRun, core: k8s.CoreV1Api) -> None:
    sizes = {
        ref: int(
            subprocess.run(
                ["docker", "image", "inspect", "-f", "{{.Size}}", ref],
                capture_output=True, text=True, check=True,
            ).stdout
        )
        for ref in BUILT.values()
    }  # fmt: skip
    roles = {
        BUILT["operator"]: "operator Deployment: reconciled both suites",
        BUILT["serve"]: "triton-prep init container, PyTorch server, tritonserver: Ready, measured",
        BUILT["bench-job"]: "benchmark Jobs: exit 0, results published",
    }
    print("image | size | ran as | did")
    for ref, size in sizes.items():
        print(f"{ref} | {size / 1e6:,.0f} MB | pod on {REAL_NODE} | {roles[ref]}")


def test_the_cluster_verdict_has_the_local_runs_structure_and_numbers_of_its_order(
    cpu_mock: SuiteRun, tmp_path: Path
) -> None:
    cluster_out, local_out = tmp_path / "cluster", tmp_path / "local"
    bakeoff = [sys.executable, "-m", "bakeoff.cli"]
    report = subprocess.run(
        [*bakeoff, "report", cpu_mock.name, "--cluster", "-n", TEAM_A, "--out", str(cluster_out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Winners (95% intervals" in report.stdout
    local = subprocess.run(
        [*bakeoff, "run", str(CPU_MOCK), "--local", "--out", str(local_out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    for out in (cluster_out, local_out):
        html = (out / "cpu-mock" / "report.html").read_text()
        assert "<img" in html and "cpu-mock" in html
        assert (out / "cpu-mock" / "report.md").stat().st_size > 0
    cluster_cells = read_cells(cluster_out / "cpu-mock")
    local_cells = read_cells(local_out / "cpu-mock")
    expected = {"pytorch-cpu-mock", "triton-onnx-cpu-cpu-mock"}
    assert set(cluster_cells) == set(local_cells) == expected
    print("\ncell | p50 ms cluster | p50 ms local | best img/s cluster | best img/s local")
    for key, cluster in cluster_cells.items():
        local_cell = local_cells[key]
        assert shape(cluster) == shape(local_cell), key
        cluster_p50 = cluster["single"]["latency"]["p50Ms"]
        local_p50 = local_cell["single"]["latency"]["p50Ms"]
        cluster_best, local_best = best_throughput(cluster), best_throughput(local_cell)
        print(f"{key} | {cluster_p50:.1f} | {local_p50:.1f} | {cluster_best:.1f} | "
              f"{local_best:.1f}")  # fmt: skip
        # Same machine, same servers: the same order of magnitude (the pod shares the node
        # with its load generator, as the local run shares the machine).
        assert 0.25 < cluster_p50 / local_p50 < 4, (cluster_p50, local_p50)
        assert 0.25 < cluster_best / local_best < 4, (cluster_best, local_best)
    cluster_summary = json.loads((cluster_out / "cpu-mock" / "summary.json").read_text())
    local_summary = json.loads((local_out / "cpu-mock" / "summary.json").read_text())
    assert set(cluster_summary) == set(local_summary)
    # One difference, by design: on CPU a local run measures its server processes' RSS; in a
    # cluster memory comes from the server's GPU metrics only, which a CPU mock has not.
    decided = {
        name: set(summary["winners"]) | set(summary["ties"])
        for name, summary in (("cluster", cluster_summary), ("local", local_summary))
    }
    assert decided["local"] - decided["cluster"] == {"memory"}, decided
    assert all(c["memoryKind"] == "host-rss" for c in local_cells.values())
    assert all(c["memoryBytes"] is None for c in cluster_cells.values())
    assert [r["backend"] for r in cluster_summary["rows"]] == [
        r["backend"] for r in local_summary["rows"]
    ]


def read_cells(suite_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (suite_dir / "cells").glob("*.json")}


def shape(value: Any, depth: int = 0) -> Any:
    """The keys of a result, two levels deep (what the report and the verdict read)."""
    if isinstance(value, dict) and depth < 2:
        return {k: shape(v, depth + 1) for k, v in value.items() if k not in VARYING}
    return type(value).__name__ if value is not None else None


# Fields whose presence depends on where the load ran, not on what was measured.
VARYING = frozenset({"environment", "flags", "notes", "memoryBytes", "memoryKind"})


def best_throughput(result: dict[str, Any]) -> float:
    return max(p["inferencesPerS"] for p in result["batchSweep"])


@pytest.fixture(scope="module")
def killed(
    release: str, api_client: k8s.ApiClient, custom: k8s.CustomObjectsApi, core: k8s.CoreV1Api
) -> Iterator[tuple[SuiteRun, str]]:
    """The kill suite, its PyTorch server's container SIGKILLed mid-benchmark by containerd
    (the kubelet restarts it in place)."""
    recorder = NamespaceRecorder(api_client, TEAM_B)
    recorder.start()
    try:
        started = time.monotonic()
        name = apply_suite(TEAM_B, KILL_SUITE)

        def benchmarking() -> dict[str, Any] | None:
            cells = suite_status(custom, TEAM_B, name).get("cells", [])
            pytorch = next((c for c in cells if c["backend"] == "pytorch"), {})
            if pytorch.get("phase") != "Benchmarking":
                return None
            bench = core.list_namespaced_pod(
                TEAM_B, label_selector=f"{naming.LABEL_COMPONENT}={naming.COMPONENT_BENCH}"
            ).items
            return pytorch if bench and bench[0].status.phase == "Running" else None

        cell = wait_for(benchmarking, 300, "the pytorch cell's benchmark to run")
        time.sleep(5)  # well inside the 600-request single-image scenario
        pod = core.read_namespaced_pod(cell["backendPod"], TEAM_B)
        container_id = pod.status.container_statuses[0].container_id.removeprefix("containerd://")
        killed_ctr = ctr("tasks", "kill", "-s", "SIGKILL", container_id)
        assert killed_ctr.returncode == 0, killed_ctr.stderr
        status = wait_for_suite_phase(custom, TEAM_B, name, FINISHED, SUITE_TIMEOUT_S)
        run = SuiteRun(TEAM_B, name, status, recorder, time.monotonic() - started)
        yield run, pod.metadata.name
    finally:
        recorder.stop()


def test_a_backend_killed_mid_benchmark_voids_its_cell_and_the_others_finish(
    request: pytest.FixtureRequest, killed: tuple[SuiteRun, str], core: k8s.CoreV1Api
) -> None:
    add_diagnostic(request, lambda: dump(TEAM_B))
    run, pod_name = killed
    cells = {c["backend"]: c for c in run.status["cells"]}
    assert run.status["phase"] == "Failed", run.status["cells"]
    pytorch = cells["pytorch"]
    assert pytorch["phase"] == "Failed"
    assert f"backend pod {pod_name} restarted during the benchmark" in pytorch["message"]
    assert pytorch["message"].endswith("the measurement is void")
    assert "resultRef" not in pytorch or not pytorch["resultRef"]
    assert cells["triton-onnx-cpu"]["phase"] == "Succeeded", cells["triton-onnx-cpu"]
    # The kubelet restarted the container in place (same pod), and the operator stopped the
    # load on it: the voided cell's Job is gone, its backend kept for a look (OnSuccess).
    backend = core.read_namespaced_pod(pod_name, TEAM_B)
    assert backend.status.container_statuses[0].restart_count >= 1
    last = backend.status.container_statuses[0].last_state.terminated
    assert last is not None and last.exit_code == 137
    job = naming.job_name(run.name, "pytorch", "cpu-mock")
    assert kubectl("get", "job", job, "-n", TEAM_B, check=False).returncode != 0
    assert run.status["summary"]["winners"], run.status["summary"]
    excluded = " ".join(run.status["summary"].get("excluded", []))
    assert "pytorch" in excluded, run.status["summary"]


CPU_MOCK_HAS_NO_MEMORY = "Server memory"


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((REPO / "dashboards" / "bakeoff.json").read_text())
    found = [(v["name"], v["query"]["query"]) for v in dashboard["templating"]["list"]
             if v.get("type") == "query"]  # fmt: skip
    for panel in dashboard["panels"]:
        found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return found


def grafana(expr: str, variables: dict[str, str]) -> str:
    """A query as Grafana sends it: variables substituted, label_values() as a series query."""
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    if expr.startswith("label_values("):
        inner = expr.removeprefix("label_values(").removesuffix(")")
        selector, _, label = inner.rpartition(",")
        return f"count by ({label.strip()}) ({selector.strip()})"
    return expr


def test_prometheus_scrapes_the_operator_as_the_service_monitor_says_and_the_dashboard_works(
    cpu_mock: SuiteRun, killed: tuple[SuiteRun, str], core: k8s.CoreV1Api, tmp_path: Path
) -> None:
    rendered = helm(
        "template", RELEASE, str(CHART), "-n", RELEASE_NS, *set_args(VALUES),
        "--set", "metrics.serviceMonitor.enabled=true",
    ).stdout  # fmt: skip
    (monitor,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ServiceMonitor"]
    targets_file = tmp_path / "targets.json"
    targets_file.write_text(json.dumps(discovered_targets(core, [RELEASE_NS])))
    prometheus = Prometheus(tmp_path, scrape_config(monitor, targets_file))
    prometheus.check_config()
    prometheus.start()
    try:
        (target,) = wait_for(
            lambda: [t for t in prometheus.targets() if t["health"] == "up"] or None,
            60, "the operator's target to be up", prometheus.targets,
        )  # fmt: skip
        labels = target["labels"]
        assert labels["namespace"] == RELEASE_NS
        assert labels["job"] == labels["service"] == f"{RELEASE}-metrics"
        assert labels["endpoint"] == "metrics" and labels["container"] == "operator"
        assert labels["pod"].startswith(RELEASE)
        # rate() needs a few scrapes.
        wait_for(lambda: prometheus.query("count_over_time(up[1m]) >= 4"), 60, "four scrapes")
        # The suites' series keep their own namespace (honorLabels), not the operator's.
        namespaces = {s["metric"]["namespace"] for s in prometheus.query("bakeoff_suite_phase")}
        assert namespaces == {TEAM_A, TEAM_B}
        assert not prometheus.query('{exported_namespace!=""}')
        empty = []
        for suite in (cpu_mock, killed[0]):
            variables = {"namespace": suite.namespace, "suite": suite.name, "pool": "cpu-mock",
                         "__rate_interval": "30s"}  # fmt: skip
            for title, expr in dashboard_queries():
                series = prometheus.query(grafana(expr, variables))
                if not series:
                    empty.append(title)
        # Server memory comes from the servers' GPU metrics; the CPU mock has none in a
        # cluster (a local run measures its processes' RSS instead). Every other panel and
        # variable has series for both suites.
        assert empty == [CPU_MOCK_HAS_NO_MEMORY] * 2, empty
    finally:
        prometheus.stop()


THREE_CLIENTS = Path(__file__).parent / "suites" / "three-clients.yaml"


def client_pods(core: k8s.CoreV1Api, job: str) -> dict[int, Any]:
    """Completion index -> pod, of one Indexed benchmark Job."""
    pods = core.list_namespaced_pod(TEAM_B, label_selector=f"job-name={job}").items
    return {
        int(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]): p for p in pods
    }


def configmap_data(core: k8s.CoreV1Api, name: str) -> dict[str, str]:
    return dict(core.read_namespaced_config_map(name, TEAM_B).data or {})


def test_three_client_pods_start_together_merge_exactly_and_a_killed_one_voids_the_run(
    request: pytest.FixtureRequest,
    release: str,
    api_client: k8s.ApiClient,
    custom: k8s.CustomObjectsApi,
    core: k8s.CoreV1Api,
) -> None:
    add_diagnostic(request, lambda: dump(TEAM_B))
    recorder = NamespaceRecorder(api_client, TEAM_B)
    recorder.start()
    try:
        name = apply_suite(TEAM_B, THREE_CLIENTS)
        cell = (name, "pytorch", "cpu-mock")
        first_job, barrier = naming.job_name(*cell), naming.barrier_name(*cell)

        def inside_the_scenarios() -> dict[str, str] | None:
            # Every client past set-up and the cold start: at a window edge of the scenarios.
            try:
                data = configmap_data(core, barrier)
            except k8s.ApiException:
                return None
            steps = [int(data.get(str(i), "0 ").split()[0]) for i in range(3)]
            return data if min(steps) >= 3 else None

        wait_for(inside_the_scenarios, 300, "three client pods inside the scenarios")
        pods = client_pods(core, first_job)
        assert sorted(pods) == [0, 1, 2] and all(p.status.phase == "Running" for p in pods.values())
        time.sleep(2)  # in the 4000-request concurrency scenario
        core.delete_namespaced_pod(pods[1].metadata.name, TEAM_B, grace_period_seconds=0)
        status = wait_for_suite_phase(custom, TEAM_B, name, FINISHED, SUITE_TIMEOUT_S)
    finally:
        recorder.stop()
    [result_cell] = status["cells"]
    assert status["phase"] == "Succeeded", status
    # The first run was void (a client pod gone): its parts never merged; the rerun did.
    assert result_cell["attempts"] == 2, result_cell
    assert kubectl("get", "job", first_job, "-n", TEAM_B, check=False).returncode != 0
    for index in range(3):
        first_part = naming.client_result_name(*cell, index)
        assert kubectl("get", "configmap", first_part, "-n", TEAM_B, check=False).returncode != 0
    # The second run's pods all passed every barrier (cleanup Never keeps it).
    second_barrier = configmap_data(core, naming.barrier_name(*cell, 2))
    assert len({value.split()[0] for value in second_barrier.values()}) == 1, second_barrier
    parts = [
        json.loads(configmap_data(core, naming.client_result_name(*cell, i, 2))["result.json"])
        for i in range(3)
    ]
    merged = json.loads(configmap_data(core, naming.result_name(*cell))["result.json"])
    [scenario] = merged["concurrencySweep"]
    shares = [p["concurrencySweep"][0] for p in parts]
    # Exact: the merged histogram is the pooled parts', bucket by bucket.
    pooled: dict[str, int] = {}
    for share in shares:
        for bucket, count in share["latency"]["histogram"]["counts"].items():
            pooled[bucket] = pooled.get(bucket, 0) + count
    assert scenario["latency"]["histogram"]["counts"] == pooled
    assert scenario["requests"] == sum(s["requests"] for s in shares) == 4000
    assert [c["concurrency"] for c in scenario["clients"]] == [2, 2, 2]
    # Started together: client 0's scrapes, around its own window, counted every client's
    # requests and no one else's.
    assert scenario["server"]["requests"] == 4000
    nodes = {c["node"] for c in scenario["clients"]}
    print(f"\nthree clients on {nodes}: merged p50 {scenario['latency']['p50Ms']:.2f} ms, "
          f"{scenario['requestsPerS']:.0f} req/s; per client "
          + ", ".join(f"{c['p50Ms']:.2f} ms / {c['requestsPerS']:.0f} req/s"
                      for c in scenario["clients"]))  # fmt: skip


GATEWAY_TOKEN = "CANARY-node-b3arer-6d0a"
GATEWAY_KEY = "CANARY-node-k3y-e41f"
# The node's bridge (hack/node.sh, isGateway): the host, as its pods reach it.
HOST_FROM_PODS = "10.244.0.1"


def gateway_in_cluster(url: str) -> dict[str, Any]:
    pool = {"name": "cpu-mock", "gpus": 0, "costPerHour": 0.1,
            "nodeSelector": {"bakeoff.dev/pool": "cpu-mock"}}  # fmt: skip
    # Explicit sizes: a `null` sweep would be dropped and default to batches up to 32.
    scenarios = {"single": {"requests": 40, "warmup": 4},
                 "batchSweep": {"batchSizes": [1, 4], "requests": 8, "warmup": 1}}  # fmt: skip
    suite = gateway_suite(url, GATEWAY_MODEL, pool, scenarios)
    suite["spec"]["cleanup"] = {"policy": "Never"}
    return suite


def test_a_gateway_behind_tls_and_a_token_is_measured_by_a_bench_pod_reading_its_secrets(
    request: pytest.FixtureRequest,
    release: str,
    api_client: k8s.ApiClient,
    custom: k8s.CustomObjectsApi,
    tmp_path: Path,
) -> None:
    add_diagnostic(request, lambda: dump(TEAM_B))
    pki = make_pki(tmp_path / "pki", addresses=(HOST_FROM_PODS,))
    headers = {"Authorization": f"Bearer {GATEWAY_TOKEN}", "X-Api-Key": GATEWAY_KEY}
    with tls_gateway(headers, pki.server_context(), host=HOST_FROM_PODS) as gateway:
        kubectl(
            "create",
            "secret",
            "generic",
            "gateway",
            "-n",
            TEAM_B,
            f"--from-literal=token={GATEWAY_TOKEN}",
            f"--from-literal=api-key={GATEWAY_KEY}",
        )
        kubectl("create", "secret", "generic", "gateway-ca", "-n", TEAM_B,
                f"--from-file=ca.crt={pki.ca_cert}")  # fmt: skip
        suite = tmp_path / "gateway.yaml"
        suite.write_text(yaml.safe_dump(gateway_in_cluster(gateway.url)))
        recorder = NamespaceRecorder(api_client, TEAM_B)
        recorder.start()
        try:
            name = apply_suite(TEAM_B, suite)
            status = wait_for_suite_phase(custom, TEAM_B, name, FINISHED, SUITE_TIMEOUT_S)
        finally:
            recorder.stop()
    assert status["phase"] == "Succeeded", status
    # The real kubelet mounted the Secrets (0440, group fsGroup) and the bench pod, a non-root
    # user, read them: every request it sent carried the credentials, over the CA's TLS.
    assert gateway.unauthorized == 0 and gateway.success >= 44, gateway
    job = naming.job_name(name, "gateway", "cpu-mock")
    logs = kubectl("logs", f"job/{job}", "-n", TEAM_B).stdout
    result = configmap_data_in(TEAM_B, naming.result_name(name, "gateway", "cpu-mock"))
    assert "headers Authorization, X-Api-Key; a custom CA" in result
    for value in (GATEWAY_TOKEN, GATEWAY_KEY):
        assert value not in logs and value not in result
        for kind in ("benchmarksuites", "jobs", "pods", "configmaps", "events"):
            assert value not in kubectl("get", kind, "-n", TEAM_B, "-o", "json").stdout, kind
    print(
        f"\ngateway over TLS with a bearer token: {gateway.success} answers, "
        f"{gateway.unauthorized} refused"
    )


def configmap_data_in(namespace: str, name: str) -> str:
    return kubectl("get", "configmap", name, "-n", namespace, "-o", "json").stdout


def test_uninstall_and_suite_deletion_leave_nothing_behind(
    cpu_mock: SuiteRun, killed: tuple[SuiteRun, str], release: str
) -> None:
    # The order a user would take: the chart first, then the suites (the CRD stays: crds.keep).
    helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait")
    for namespace in (TEAM_A, TEAM_B):
        kubectl("delete", "benchmarksuites", "--all", "-n", namespace, "--timeout=60s")
    kinds = "pods,jobs,deployments,services,configmaps,serviceaccounts,roles,rolebindings"

    def leftovers() -> list[str]:
        found = []
        for namespace in NAMESPACES:
            listed = kubectl("get", kinds, "-n", namespace, "-o", "name", check=False).stdout
            found += [
                f"{namespace}/{name}"
                for name in listed.split()
                if name not in ("configmap/kube-root-ca.crt", "serviceaccount/default")
            ]
        return found

    wait_for(lambda: not leftovers(), 120, "every object to go", leftovers)
    # And on the node: no container of any pod left running in containerd.
    wait_for(
        lambda: ctr("tasks", "ls", "-q").stdout.split() == [],
        120, "the node's containers to stop", lambda: ctr("tasks", "ls").stdout,
    )  # fmt: skip
