"""The operator on a real control plane: a whole suite from `kubectl apply` to the verdict,
scheduling onto the right (fake) GPU pools, a restart mid-suite, and garbage collection.

kwok plays the kubelets; the job driver plays the benchmark Job's last step with real results.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import (
    FINISHED,
    GPU_TAINT,
    REPO,
    JobDriver,
    NamespaceRecorder,
    Operator,
    apply_suite,
    conditions_by_type,
    kubectl,
    suite_status,
    wait_for,
    wait_for_suite_phase,
)
from kubernetes import client as k8s

from bakeoff import cli, naming

pytestmark = pytest.mark.cluster

EXAMPLE = REPO / "examples" / "rtx4080-vs-a100.yaml"
SUITE_TIMEOUT_S = 180


def cells_of(path: Path) -> list[tuple[str, str]]:
    spec = yaml.safe_load(path.read_text())["spec"]
    return [(b["name"], p["name"]) for p in spec["nodePools"] for b in spec["backends"]]


def pool_selectors(path: Path) -> dict[str, dict[str, str]]:
    spec = yaml.safe_load(path.read_text())["spec"]
    return {p["name"]: p.get("nodeSelector", {}) for p in spec["nodePools"]}


def nodes_by_name(core: k8s.CoreV1Api) -> dict[str, Any]:
    return {n.metadata.name: n for n in core.list_node().items}


def gpu_tainted(node: Any) -> bool:
    return any(t.key == GPU_TAINT for t in node.spec.taints or [])


def printer_row(namespace: str, name: str) -> dict[str, str]:
    """`kubectl get benchmarksuites` as a user reads it: header -> value."""
    lines = kubectl("get", "benchmarksuites", "-n", namespace).stdout.splitlines()
    # Columns by where their headings start: a value may hold spaces ("no clear winner").
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    header = lines[0].split()
    row = next(line for line in lines[1:] if line.split()[0] == name)
    bounds = [*starts[1:], None]
    return {h: row[a:b].strip() for h, a, b in zip(header, starts, bounds, strict=True)}


def suite_events(namespace: str, name: str) -> list[dict[str, Any]]:
    listed = kubectl(
        "get", "events", "-n", namespace, "-o", "yaml", "--field-selector",
        f"involvedObject.kind=BenchmarkSuite,involvedObject.name={name}",
    )  # fmt: skip
    items: list[dict[str, Any]] = yaml.safe_load(listed.stdout)["items"]
    return items


def labelled_leftovers(namespace: str, suite: str) -> list[str]:
    listed = kubectl(
        "get", "deployments,replicasets,pods,services,jobs,configmaps", "-n", namespace,
        "-l", f"{naming.LABEL_SUITE}={suite}", "-o", "name",
    )  # fmt: skip
    return listed.stdout.split()


def test_suite_of_three_backends_on_two_pools_succeeds(
    core: k8s.CoreV1Api,
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator: Operator,
    tmp_path: Path,
) -> None:
    name = apply_suite(namespace, EXAMPLE)
    cells = cells_of(EXAMPLE)
    assert len(cells) == 6
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)

    assert status["phase"] == "Succeeded", status
    assert status["progress"] == "6/6"
    by_cell = {(c["backend"], c["pool"]): c for c in status["cells"]}
    assert set(by_cell) == set(cells)
    for (backend, pool), cell in by_cell.items():
        assert cell["phase"] == "Succeeded", cell
        assert cell["resultRef"] == f"configmap/{naming.result_name(name, backend, pool)}"

    # Every backend pod ran on a node of its pool; status names that node.
    nodes = nodes_by_name(core)
    selectors = pool_selectors(EXAMPLE)
    with recorder.changed:
        pod_nodes = dict(recorder.pods.nodes)
        pod_labels = dict(recorder.pods.labels)
    backend_nodes: dict[tuple[str, str], set[str]] = {}
    bench_nodes: dict[tuple[str, str], set[str]] = {}
    for pod, node in pod_nodes.items():
        labels = pod_labels[pod]
        key = (labels[naming.LABEL_BACKEND], labels[naming.LABEL_POOL])
        component = labels[naming.LABEL_COMPONENT]
        {"backend": backend_nodes, "bench": bench_nodes}[component].setdefault(key, set()).add(node)
    assert set(backend_nodes) == set(cells), recorder.describe()
    assert set(bench_nodes) == set(cells), recorder.describe()
    for (backend, pool), placed in backend_nodes.items():
        for node in placed:
            node_labels = nodes[node].metadata.labels
            assert selectors[pool].items() <= node_labels.items(), (backend, pool, node)
            assert gpu_tainted(nodes[node])
        assert by_cell[(backend, pool)]["node"] in placed
    # Every benchmark Job ran off its backend's node, on a node without the GPU taint.
    for cell, placed in bench_nodes.items():
        assert placed.isdisjoint(backend_nodes[cell]), (cell, placed, backend_nodes[cell])
        for node in placed:
            assert not gpu_tainted(nodes[node]), (cell, node)
    # ... and the result it published says so (environment.node, from the downward API).
    assert {p.node for p in job_driver.published.values()} <= set().union(*bench_nodes.values())
    assert len(job_driver.published) == 6

    summary = status["summary"]
    # Every category is decided. The job driver publishes one real result per backend kind, so
    # the two triton-onnx backends of a pool publish the same numbers: a tie is the honest
    # verdict between them, where they lead.
    decided = set(summary["winners"]) | set(summary.get("ties", {}))
    assert {"latency", "throughput", "cost", "memory"} <= decided, summary
    assert set(summary["costPer1k"]) == {f"{b}/{p}" for b, p in cells}
    conditions = conditions_by_type(status)
    for kind in ("Validated", "BackendsReady", "ResultsComplete", "ParityPassed"):
        assert conditions[kind]["status"] == "True", conditions[kind]

    row = printer_row(namespace, name)
    assert row["PHASE"] == "Succeeded"
    assert row["CELLS"] == "6/6"
    assert row["WINNER"] == status["winner"] != ""
    # The two triton-onnx backends publish the same result (see above): when they lead, the
    # printer column says so rather than naming either.
    if row["WINNER"] != "no clear winner":
        assert row["WINNER"].split("/")[0] in {b for b, _ in cells}

    def event_reasons() -> set[str]:
        return {e["reason"] for e in suite_events(namespace, name)}

    wanted = {"CellDeploying", "CellBenchmarking", "CellSucceeded", "Analyzing", "Succeeded"}
    wait_for(lambda: event_reasons() >= wanted, 30, f"Events {wanted}", event_reasons)

    # `bakeoff report --cluster` renders the same report as a local run, from the cluster.
    out = tmp_path / "report"
    assert cli.main(["report", name, "--cluster", "-n", namespace, "--out", str(out)]) == 0
    report_md = (out / name / "report.md").read_text()
    assert report_md.startswith(f"# Bake-off report: {name}")
    assert all(f"| {b} | {p} |" in report_md for b, p in cells)
    assert len(list((out / name / "cells").glob("*.json"))) == 6

    # Deleting the suite garbage-collects everything it owns (result ConfigMaps included).
    assert labelled_leftovers(namespace, name), "expected the result ConfigMaps to exist"
    kubectl("delete", "benchmarksuite", name, "-n", namespace, "--timeout=60s")
    wait_for(
        lambda: not labelled_leftovers(namespace, name),
        60,
        f"nothing labelled {naming.LABEL_SUITE}={name} to be left",
        lambda: labelled_leftovers(namespace, name),
    )


def test_operator_restart_mid_suite_creates_no_duplicate_job(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator: Operator,
) -> None:
    name = apply_suite(namespace, EXAMPLE)
    cells = cells_of(EXAMPLE)

    bench_jobs = recorder.bench_job_uids
    wait_for(bench_jobs, 60, "the first benchmark Job", recorder.describe)
    # Hold results back while the operator is down, so the restart lands mid-suite, with Jobs
    # in flight whose results arrive only after the new operator has taken over.
    job_driver.pause()
    operator.stop()
    at_stop = suite_status(custom, namespace, name)
    assert at_stop.get("phase") not in FINISHED, at_stop
    operator.start()
    job_driver.resume()

    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)
    assert status["phase"] == "Succeeded", status
    assert operator.starts == 2
    jobs = bench_jobs()
    assert {job: len(uids) for job, uids in jobs.items()} == {job: 1 for job in jobs}
    assert sorted(jobs) == sorted(naming.job_name(name, b, p) for b, p in cells)
    with recorder.changed:
        deployments = {d: len(u) for d, u in recorder.deployments.uids.items()}
    assert deployments == {naming.backend_name(name, b, p): 1 for b, p in cells}
    assert len({p.job_uid for p in job_driver.published.values()}) == len(cells)
    assert at_stop.get("progress") != status["progress"]


def test_the_external_example_measures_its_endpoint_without_deploying_it(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator: Operator,
) -> None:
    """examples/external.yaml: a pytorch backend the operator deploys beside a server that
    already runs, benchmarked as it is (its kind's plug-in deploys nothing)."""
    example = REPO / "examples" / "external.yaml"
    name = apply_suite(namespace, example)
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)
    assert status["phase"] == "Succeeded", status
    assert {(c["backend"], c["phase"]) for c in status["cells"]} == {
        ("pytorch", "Succeeded"),
        ("prod-triton", "Succeeded"),
    }
    with recorder.changed:
        deployed = {
            (d["metadata"].get("labels") or {}).get(naming.LABEL_BACKEND)
            for d in recorder.deployments.final.values()
        }
        jobs = list(recorder.jobs.final.values())
    assert deployed == {"pytorch"}, deployed
    # The external cell's Job was pointed at the endpoint the suite names.
    (external_job,) = [
        j
        for j in jobs
        if (j["metadata"].get("labels") or {}).get(naming.LABEL_BACKEND) == "prod-triton"
    ]
    env = external_job["spec"]["template"]["spec"]["containers"][0]["env"]
    config = json.loads(next(e["value"] for e in env if e["name"] == "BAKEOFF_BENCH_CONFIG"))
    assert config["target"]["httpUrl"] == "http://triton.inference.svc:8000"
    assert config["target"]["modelName"] == "openclip-vit-b32"


def test_each_cell_transition_is_announced_once(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator: Operator,
) -> None:
    """The CPU-mock example (one pool, two backends, no GPUs requested) end to end, and its
    Events: one per cell transition, as `kubectl describe` should show them."""
    example = REPO / "examples" / "cpu-mock.yaml"
    name = apply_suite(namespace, example)
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)
    assert status["phase"] == "Succeeded", status
    wait_for(
        lambda: "Succeeded" in {e["reason"] for e in suite_events(namespace, name)},
        30,
        "the final Event",
    )
    posted = Counter(
        (e["reason"], e["message"])
        for e in suite_events(namespace, name)
        if e["reason"].startswith("Cell") or e["reason"] in ("Analyzing", "Succeeded")
    )
    assert {event: count for event, count in posted.items() if count > 1} == {}
