"""Issue 7, load: 20 suites x 3 backends x 3 pools applied at once on 60 simulated GPU nodes,
with the operator run as the chart runs it (its own process, the chart's ServiceAccount).

Asserted: every cell of every suite reaches its end state (here: Succeeded, with a result),
each backend lands on a load node of its pool, and no Deployment or Job is created twice.
The numbers (times, memory, API requests) are printed, never asserted; `make bench` records
them (benchmarks/operator_load.py runs this same scenario through `load_harness.run_load`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_harness import JobDriver, NamespaceRecorder
from kubernetes import client as k8s
from load_harness import (
    NODE_SET,
    NODE_SET_LABEL,
    LoadShape,
    format_report,
    load_nodes,
    run_load,
)

from bakeoff import kube, manifests, naming

pytestmark = pytest.mark.cluster

LOAD_TIMEOUT_S = 420
RECONCILE_INTERVAL_S = 1.0  # the cluster tier's (conftest.OPERATOR_ENV)


def test_twenty_suites_on_sixty_gpu_nodes_all_succeed_without_twins(
    kubeconfig: Path,
    core: k8s.CoreV1Api,
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    tmp_path: Path,
) -> None:
    shape = LoadShape()
    with load_nodes(shape) as nodes:
        assert len(nodes) == 60
        report = run_load(
            shape=shape,
            namespace=namespace,
            kubeconfig=kubeconfig,
            custom=custom,
            recorder=recorder,
            job_driver=job_driver,
            workdir=tmp_path,
            reconcile_interval_s=RECONCILE_INTERVAL_S,
            timeout_s=LOAD_TIMEOUT_S,
        )
        node_labels = {n.metadata.name: n.metadata.labels for n in core.list_node().items}
    print("\n" + format_report(report))

    assert report.cells == 180
    assert report.suite_phases == {"Succeeded": 20}
    assert report.cell_phases == {"Succeeded": 180}
    assert report.unfinished_cells == []
    assert report.deployments_seen == report.jobs_seen == 180
    assert report.twin_deployments == {}
    assert report.twin_jobs == {}
    assert sorted(p.job for p in job_driver.published.values()) == sorted(
        naming.job_name(s, b, p)
        for s in shape.suite_names()
        for b in shape.backends
        for p in shape.pools
    )
    # Every backend pod ran on a load node of its own pool (the suite's nodeSelector).
    with recorder.changed:
        placed = {
            pod: (recorder.pods.labels[pod], node)
            for pod, node in recorder.pods.nodes.items()
            if recorder.pods.labels[pod].get(naming.LABEL_COMPONENT) == naming.COMPONENT_BACKEND
        }
    assert len(placed) >= 180
    misplaced = [
        (pod, node)
        for pod, (labels, node) in placed.items()
        if node_labels[node].get(NODE_SET_LABEL) != NODE_SET
        or not node.startswith(f"load-{labels[naming.LABEL_POOL]}-")
    ]
    assert misplaced == []


def test_shared_bench_identity_is_created_once_then_again_after_forget(
    api_client: k8s.ApiClient, core: k8s.CoreV1Api, namespace: str
) -> None:
    """The benchmark Jobs' ServiceAccount, Role and RoleBinding are asked for with every Job;
    the operator's client creates them once and then skips them (the load run showed the
    409s to be its most expensive requests), until a suite of the namespace is deleted."""
    client = kube.KubeClient(api_client)
    shared = manifests.build_bench_rbac(namespace)
    assert [client.create(namespace, m) for m in shared] == [True, True, True]
    core.delete_namespaced_service_account(naming.BENCH_SERVICE_ACCOUNT, namespace)
    # Remembered: not asked for, so not put back (a Job now would wait for its identity) ...
    assert [client.create(namespace, m) for m in shared] == [False, False, False]
    names = [sa.metadata.name for sa in core.list_namespaced_service_account(namespace).items]
    assert naming.BENCH_SERVICE_ACCOUNT not in names
    # ... until forgotten (what a suite's DELETED event does): then it is created again,
    # and the objects that still exist answer 409 as before.
    client.forget_shared(namespace)
    assert [client.create(namespace, m) for m in shared] == [True, False, False]
    core.read_namespaced_service_account(naming.BENCH_SERVICE_ACCOUNT, namespace)
    # Another client (a restarted operator) asks the API server, and finds all three.
    assert [kube.KubeClient(api_client).create(namespace, m) for m in shared] == [False] * 3
