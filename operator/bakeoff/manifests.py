"""Pure builders of the Kubernetes objects one cell needs: backend Deployment and Service,
benchmark Job. Data in, dicts out; `reconcile` decides when each is created, the cell's
backend kind (`bakeoff.backends`) says what its pod runs, `pods` has the building blocks.
"""

from __future__ import annotations

import json
from typing import Any, Final

from bakeoff import api, naming, plan, pods
from bakeoff.backends import BackendPod, plugin_for
from bakeoff.settings import OperatorSettings
from bakeoff_bench import config as bench_config
from bakeoff_bench import publish
from bakeoff_bench.results import CellResult

API_VERSION: Final = f"{api.API_GROUP}/{api.API_VERSION}"

Manifest = dict[str, Any]


def owner_reference(suite: api.BenchmarkSuite, uid: str, block: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": api.KIND,
        "name": suite.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": block,
    }


def _metadata(
    name: str, suite: api.BenchmarkSuite, uid: str, labels: dict[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": labels,
        "ownerReferences": [owner_reference(suite, uid)],
    }
    if suite.metadata.namespace:
        meta["namespace"] = suite.metadata.namespace
    return meta


def backend_pod(
    suite: api.BenchmarkSuite, cell: plan.Cell, settings: OperatorSettings
) -> BackendPod | None:
    """What the cell's backend kind deploys; None for a server that runs elsewhere."""
    return plugin_for(cell.backend).pod(suite, cell.pool, settings)


def _deployed_pod(
    suite: api.BenchmarkSuite, cell: plan.Cell, settings: OperatorSettings
) -> BackendPod:
    pod = backend_pod(suite, cell, settings)
    if pod is None:
        raise ValueError(f"backend '{cell.backend.name}' ({cell.backend.kind}) deploys nothing")
    return pod


def build_backend_deployment(
    suite: api.BenchmarkSuite, uid: str, cell: plan.Cell, settings: OperatorSettings
) -> Manifest:
    """One replica of the backend on the cell's pool (nodeSelector, tolerations, GPUs)."""
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BACKEND)
    pod = _deployed_pod(suite, cell, settings)
    pod_spec: dict[str, Any] = {
        "securityContext": dict(pods.RESTRICTED_POD),
        "automountServiceAccountToken": False,
        "nodeSelector": dict(cell.pool.node_selector),
        "tolerations": [t.model_dump(exclude_none=True) for t in cell.pool.tolerations],
        "containers": pod.containers,
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "models", "emptyDir": {}}],
    }
    if pod.init_containers:
        pod_spec["initContainers"] = pod.init_containers
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(naming.backend_name(*name_args), suite, uid, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": naming.backend_selector(*name_args)},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def build_backend_service(
    suite: api.BenchmarkSuite, uid: str, cell: plan.Cell, settings: OperatorSettings
) -> Manifest:
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BACKEND)
    ports = [
        {"name": "http", "port": pods.HTTP_PORT, "targetPort": "http"},
        {"name": "grpc", "port": pods.GRPC_PORT, "targetPort": "grpc"},
    ]
    if _deployed_pod(suite, cell, settings).metrics_on_own_port:
        ports.append({"name": "metrics", "port": pods.METRICS_PORT, "targetPort": "metrics"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(naming.backend_name(*name_args), suite, uid, labels),
        "spec": {"selector": naming.backend_selector(*name_args), "ports": ports},
    }


def build_backend_network_policy(
    suite: api.BenchmarkSuite, uid: str, cell: plan.Cell, settings: OperatorSettings
) -> Manifest | None:
    """Who may reach a cell's backend: its own bench Job's pods (every port), and the
    metrics scrapers (`settings.metrics_scrapers`, the metrics port only). None where
    nothing is deployed. A cluster whose network plugin enforces no policy ignores it."""
    pod = backend_pod(suite, cell, settings)
    if pod is None:
        return None
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    bench = naming.cell_labels(*name_args, naming.COMPONENT_BENCH)
    keys = (naming.LABEL_SUITE, naming.LABEL_BACKEND, naming.LABEL_POOL, naming.LABEL_COMPONENT)
    every_port = [
        {"protocol": "TCP", "port": port}
        for port in (pods.HTTP_PORT, pods.GRPC_PORT, pods.METRICS_PORT)
    ]
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": {k: bench[k] for k in keys}}}],
         "ports": every_port},
    ]  # fmt: skip
    if settings.metrics_scrapers:
        # The PyTorch server serves /metrics on its HTTP port: a scraper can reach that port.
        metrics_port = pods.METRICS_PORT if pod.metrics_on_own_port else pods.HTTP_PORT
        ingress.append(
            {"from": [dict(peer) for peer in settings.metrics_scrapers],
             "ports": [{"protocol": "TCP", "port": metrics_port}]}
        )  # fmt: skip
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BACKEND)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(naming.backend_name(*name_args), suite, uid, labels),
        "spec": {
            "podSelector": {"matchLabels": naming.backend_selector(*name_args)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def bench_target(
    suite: api.BenchmarkSuite, cell: plan.Cell, pod: BackendPod | None
) -> bench_config.Target:
    """Where the in-cluster benchmark Job reaches the backend: its Service's DNS name, or the
    endpoint of a server that runs elsewhere."""
    if pod is None:
        remote = plugin_for(cell.backend).remote_target(suite, pods.SECRETS_ROOT)
        if remote is None:
            raise ValueError(f"backend '{cell.backend.name}' deploys nothing and has no endpoint")
        return remote
    name = naming.backend_name(suite.metadata.name, cell.backend.name, cell.pool.name)
    namespace = suite.metadata.namespace or "default"
    host = f"http://{name}.{namespace}.svc"
    metrics_port = pods.METRICS_PORT if pod.metrics_on_own_port else pods.HTTP_PORT
    return bench_config.Target(
        http_url=f"{host}:{pods.HTTP_PORT}",
        metrics_url=f"{host}:{metrics_port}/metrics",
        model_name=suite.spec.model.name,
    )


def build_bench_job(
    suite: api.BenchmarkSuite,
    uid: str,
    cell: plan.Cell,
    settings: OperatorSettings,
    server_node: str | None = None,
    time_to_ready_s: float | None = None,
    attempt: int = 1,
) -> Manifest:
    """The benchmark Job: in-cluster, never on the node of the backend it measures.

    Several clients (`scenarios.clients`): an Indexed Job of that many pods, which meet at
    `build_barrier`'s ConfigMap and each publish a part; `attempt` 2 is a void run's rerun.
    """
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BENCH)
    pod = backend_pod(suite, cell, settings)
    bench = plan.build_bench_config(suite, cell, bench_target(suite, cell, pod))
    result_labels = naming.cell_labels(*name_args, naming.COMPONENT_RESULT)
    owner = json.dumps(owner_reference(suite, uid, block=False))
    namespace_ref = {"fieldRef": {"fieldPath": "metadata.namespace"}}
    several = bench.clients > 1
    if several:
        # Each client pod publishes its part; the operator merges them into the result.
        result_labels = naming.cell_labels(*name_args, naming.COMPONENT_CLIENT_RESULT)
    result_target = (
        naming.client_result_prefix(*name_args, attempt)
        if several
        else naming.result_name(*name_args)
    )
    env = [
        {"name": "BAKEOFF_BENCH_CONFIG", "value": bench.model_dump_json(by_alias=True)},
        {"name": "BAKEOFF_RESULT_CONFIGMAP", "value": result_target},
        {"name": "BAKEOFF_RESULT_LABELS", "value": json.dumps(result_labels, sort_keys=True)},
        # The bench ServiceAccount may not touch the suite's finalizers, so no blocking.
        {"name": "BAKEOFF_RESULT_OWNER", "value": owner},
        {"name": "BAKEOFF_NAMESPACE", "valueFrom": namespace_ref},
        {"name": "BAKEOFF_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        # Recorded in the result's environment: which images produced the numbers.
        {"name": "BAKEOFF_IMAGE_BENCH", "value": settings.bench_image},
        *[{"name": f"BAKEOFF_IMAGE_{role}", "value": image}
          for role, image in (pod.images if pod is not None else {}).items()],
    ]  # fmt: skip
    if several:
        # JOB_COMPLETION_INDEX (set by the Job controller) says which client a pod is.
        barrier = naming.barrier_name(*name_args, attempt)
        env.append({"name": "BAKEOFF_BARRIER_CONFIGMAP", "value": barrier})
    if server_node:
        env.append({"name": "BAKEOFF_SERVER_NODE", "value": server_node})
    if time_to_ready_s is not None:
        env.append({"name": "BAKEOFF_TIME_TO_READY_S", "value": f"{time_to_ready_s:.1f}"})
    container = pods.container(
        "bench", settings.bench_image, ["--config-env", "BAKEOFF_BENCH_CONFIG", "--publish"],
        env=env,
        resources={"requests": {"cpu": settings.bench_cpu_request,
                                "memory": settings.bench_memory_request}},
    )  # fmt: skip
    # An external endpoint's credentials: its Secrets' keys as files, never as env vars.
    auth = cell.backend.endpoint.auth if isinstance(cell.backend, api.ExternalBackend) else None
    secret_volumes, secret_mounts = pods.secret_mounts(auth)
    container["volumeMounts"] += secret_mounts
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(naming.job_name(*name_args, attempt), suite, uid, labels),
        "spec": {
            **_clients_spec(bench.clients),
            "activeDeadlineSeconds": suite.spec.timeouts.run_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": naming.BENCH_SERVICE_ACCOUNT,
                    "securityContext": dict(pods.RESTRICTED_POD),
                    "affinity": _bench_anti_affinity(name_args, settings, bench.clients),
                    "containers": [container],
                    "volumes": [{"name": "scratch", "emptyDir": {}}, *secret_volumes],
                },
            },
        },
    }


def _clients_spec(clients: int) -> dict[str, Any]:
    """One pod; or an Indexed Job of `clients` pods, all running at once.

    Several clients get no pod retries: a replacement would start the scenarios from the top
    while the others wait at a later barrier. The operator voids the run and runs it once
    more instead (`reconcile`).
    """
    if clients == 1:
        return {"backoffLimit": 2}
    return {
        "backoffLimit": 0,
        "completionMode": "Indexed",
        "completions": clients,
        "parallelism": clients,
    }


def _bench_anti_affinity(
    name_args: tuple[str, str, str], settings: OperatorSettings, clients: int = 1
) -> dict[str, Any]:
    """Never on the node of the backend it measures; or, where the cluster has a single
    worker, preferably not (the result then carries the client-shares-node flag). Several
    client pods spread over nodes where the pool allows (preferred: never unschedulable)."""
    term = {
        "labelSelector": {"matchLabels": naming.backend_selector(*name_args)},
        "topologyKey": "kubernetes.io/hostname",
    }
    preferred: list[dict[str, Any]] = []
    if settings.bench_anti_affinity == "preferred":
        preferred.append({"weight": 100, "podAffinityTerm": term})
        rule: dict[str, Any] = {}
    else:
        rule = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    if clients > 1:
        bench = naming.cell_labels(*name_args, naming.COMPONENT_BENCH)
        spread = {
            "labelSelector": {"matchLabels": bench},
            "topologyKey": "kubernetes.io/hostname",
        }
        preferred.append({"weight": 50, "podAffinityTerm": spread})
    if preferred:
        rule["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return {"podAntiAffinity": rule}


def build_barrier(
    suite: api.BenchmarkSuite, uid: str, cell: plan.Cell, attempt: int = 1
) -> Manifest:
    """The ConfigMap a several-client Job's pods meet at, empty until they arrive."""
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BARRIER)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(naming.barrier_name(*name_args, attempt), suite, uid, labels),
        "data": {},
    }


def build_merged_result(
    suite: api.BenchmarkSuite, uid: str, cell: plan.Cell, result: CellResult
) -> Manifest:
    """The cell's result ConfigMap, written by the operator from its client pods' parts."""
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    destination = publish.Destination(
        name=naming.result_name(*name_args),
        namespace=suite.metadata.namespace or "default",
        labels=naming.cell_labels(*name_args, naming.COMPONENT_RESULT),
        owner=owner_reference(suite, uid, block=False),
    )
    return publish.result_configmap(result, destination)


def build_bench_rbac(namespace: str) -> list[Manifest]:
    """The benchmark Jobs' identity in a namespace: it may read and write ConfigMaps (its
    result, its barrier), nothing else.

    Shared by every suite of the namespace, so not owned by any one suite.
    """
    labels = {naming.LABEL_MANAGED_BY: naming.MANAGER}
    meta = {"name": naming.BENCH_SERVICE_ACCOUNT, "namespace": namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": dict(meta),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    # patch: a client pod writes its own key of its Job's barrier.
                    "verbs": ["create", "get", "update", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": dict(meta),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": naming.BENCH_SERVICE_ACCOUNT,
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": naming.BENCH_SERVICE_ACCOUNT,
                    "namespace": namespace,
                }
            ],
        },
    ]
