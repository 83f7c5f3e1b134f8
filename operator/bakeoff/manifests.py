"""Pure builders of the Kubernetes objects one cell needs: backend Deployment and Service,
benchmark Job. Data in, dicts out; `reconcile` decides when each is created.

Every pod meets the "restricted" Pod Security Standard: non-root, read-only root
filesystem (scratch space is an emptyDir), no privilege escalation, no capabilities,
RuntimeDefault seccomp.
"""

from __future__ import annotations

import json
from typing import Any, Final

from bakeoff import api, naming, plan
from bakeoff.settings import OperatorSettings
from bakeoff_bench import config as bench_config

HTTP_PORT: Final = 8000
GRPC_PORT: Final = 8001
METRICS_PORT: Final = 8002
API_VERSION: Final = f"{api.API_GROUP}/{api.API_VERSION}"
GPU_RESOURCE: Final = "nvidia.com/gpu"

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


RESTRICTED_CONTAINER: Final[dict[str, Any]] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD: Final[dict[str, Any]] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def uses_gpu(pool: api.NodePool, settings: OperatorSettings) -> bool:
    return pool.gpus > 0 and not settings.cpu_mock


def cell_device(pool: api.NodePool, settings: OperatorSettings) -> str:
    return "cuda" if uses_gpu(pool, settings) else "cpu"


def _execution_provider(
    backend: api.Backend, pool: api.NodePool, settings: OperatorSettings
) -> str:
    # CPU-mock mode serves every triton-onnx backend with the CPU execution provider.
    if not uses_gpu(pool, settings) or backend.execution_provider is None:
        return api.ExecutionProvider.CPU.value
    return backend.execution_provider.value


def _resources(pool: api.NodePool, settings: OperatorSettings) -> dict[str, Any]:
    requests = {"cpu": settings.backend_cpu_request, "memory": settings.backend_memory_request}
    resources: dict[str, Any] = {"requests": dict(requests)}
    if uses_gpu(pool, settings):
        resources["limits"] = {GPU_RESOURCE: str(pool.gpus)}
        resources["requests"][GPU_RESOURCE] = str(pool.gpus)
    return resources


def _ready_probe() -> dict[str, Any]:
    # Our servers and Triton (with model_warmup) answer ready only once every batch size
    # the suite sends has run once: ready means warm.
    return {
        "httpGet": {"path": "/v2/health/ready", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }


def _ports(metrics: bool) -> list[dict[str, Any]]:
    ports = [
        {"name": "http", "containerPort": HTTP_PORT},
        {"name": "grpc", "containerPort": GRPC_PORT},
    ]
    if metrics:
        ports.append({"name": "metrics", "containerPort": METRICS_PORT})
    return ports


def _container(name: str, image: str, args: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "args": args,
        "securityContext": dict(RESTRICTED_CONTAINER),
        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
        **extra,
    }


def _pytorch_containers(
    suite: api.BenchmarkSuite, backend: api.Backend, pool: api.NodePool, s: OperatorSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = suite.spec
    warm = ",".join(str(b) for b in plan.warmup_batch_sizes(spec, backend))
    args = [
        "pytorch", "--model-name", spec.model.name,
        "--builtin", spec.model.source.builtin.value, "--seed", str(spec.model.seed),
        "--device", cell_device(pool, s), "--precision", backend.precision.value,
        "--host", "0.0.0.0", "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
        "--max-batch-size", str(backend.max_batch_size), "--warmup-batch-sizes", warm,
    ]  # fmt: skip
    args += plan.pytorch_server_options(backend, pool.gpus if uses_gpu(pool, s) else 0)
    if spec.model.source.weights:
        args += ["--weights", spec.model.source.weights]
    image = s.pytorch_image if uses_gpu(pool, s) else s.cpu_mock_image
    server = _container(
        "server", image, args, ports=_ports(metrics=False),
        readinessProbe=_ready_probe(), resources=_resources(pool, s),
    )  # fmt: skip
    return [], [server]


def _triton_containers(
    suite: api.BenchmarkSuite, backend: api.Backend, pool: api.NodePool, s: OperatorSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = suite.spec
    batching = backend.dynamic_batching or api.DynamicBatching()
    prep_args = [
        "triton-prep", "--model-name", spec.model.name,
        "--builtin", spec.model.source.builtin.value, "--seed", str(spec.model.seed),
        "--execution-provider", _execution_provider(backend, pool, s),
        "--precision", backend.precision.value,
        "--max-batch-size", str(backend.max_batch_size),
        "--max-queue-delay-us", str(batching.max_queue_delay_microseconds),
        "--preferred-batch-sizes", ",".join(str(b) for b in batching.preferred_batch_sizes),
        "--warmup-batch-sizes", ",".join(str(b) for b in plan.warmup_batch_sizes(spec, backend)),
        "--out", "/models",
    ]  # fmt: skip
    if spec.model.source.weights:
        prep_args += ["--weights", spec.model.source.weights]
    if uses_gpu(pool, s):
        # NVIDIA's Triton image serves the ONNX model with its native ONNX Runtime backend,
        # one instance per GPU of the pod.
        prep_args += ["--format", "native", "--gpus", ",".join(str(g) for g in range(pool.gpus))]
    models = {"name": "models", "mountPath": "/models"}
    prep = _container(
        "model-prep", s.cpu_mock_image if not uses_gpu(pool, s) else s.model_prep_image, prep_args
    )
    prep["volumeMounts"].append(models)
    if uses_gpu(pool, s):
        # NVIDIA's image: tritonserver is its entrypoint's binary.
        server = _container(
            "server", s.triton_image,
            ["tritonserver", "--model-repository=/models", f"--http-port={HTTP_PORT}",
             f"--grpc-port={GRPC_PORT}", f"--metrics-port={METRICS_PORT}",
             "--disable-auto-complete-config", "--strict-readiness=true"],
        )  # fmt: skip
    else:
        server = _container(
            "server", s.cpu_mock_image,
            ["triton", "--repo", "/models", "--host", "0.0.0.0", "--http-port", str(HTTP_PORT),
             "--grpc-port", str(GRPC_PORT), "--metrics-port", str(METRICS_PORT)],
        )  # fmt: skip
    server.update(
        ports=_ports(metrics=True), readinessProbe=_ready_probe(), resources=_resources(pool, s)
    )
    server["volumeMounts"].append(models)
    return [prep], [server]


def build_backend_deployment(
    suite: api.BenchmarkSuite, uid: str, cell: plan.Cell, settings: OperatorSettings
) -> Manifest:
    """One replica of the backend on the cell's pool (nodeSelector, tolerations, GPUs)."""
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BACKEND)
    if cell.backend.kind is api.BackendKind.PYTORCH:
        init, containers = _pytorch_containers(suite, cell.backend, cell.pool, settings)
    else:
        init, containers = _triton_containers(suite, cell.backend, cell.pool, settings)
    pod_spec: dict[str, Any] = {
        "securityContext": dict(RESTRICTED_POD),
        "automountServiceAccountToken": False,
        "nodeSelector": dict(cell.pool.node_selector),
        "tolerations": [t.model_dump(exclude_none=True) for t in cell.pool.tolerations],
        "containers": containers,
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "models", "emptyDir": {}}],
    }
    if init:
        pod_spec["initContainers"] = init
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


def build_backend_service(suite: api.BenchmarkSuite, uid: str, cell: plan.Cell) -> Manifest:
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BACKEND)
    ports = [
        {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
    ]
    if cell.backend.kind is api.BackendKind.TRITON_ONNX:
        ports.append({"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(naming.backend_name(*name_args), suite, uid, labels),
        "spec": {"selector": naming.backend_selector(*name_args), "ports": ports},
    }


def backend_target(suite: api.BenchmarkSuite, cell: plan.Cell) -> bench_config.Target:
    """Where the in-cluster benchmark Job reaches the backend: its Service's DNS name."""
    name = naming.backend_name(suite.metadata.name, cell.backend.name, cell.pool.name)
    namespace = suite.metadata.namespace or "default"
    host = f"http://{name}.{namespace}.svc"
    metrics = (
        f"{host}:{METRICS_PORT}/metrics"
        if cell.backend.kind is api.BackendKind.TRITON_ONNX
        else f"{host}:{HTTP_PORT}/metrics"
    )
    return bench_config.Target(
        http_url=f"{host}:{HTTP_PORT}", metrics_url=metrics, model_name=suite.spec.model.name
    )


def backend_images(cell: plan.Cell, settings: OperatorSettings) -> dict[str, str]:
    """The images a cell's backend runs, by role (none for an external backend)."""
    gpu = uses_gpu(cell.pool, settings)
    if cell.backend.kind is api.BackendKind.PYTORCH:
        return {"SERVER": settings.pytorch_image if gpu else settings.cpu_mock_image}
    if cell.backend.kind is api.BackendKind.TRITON_ONNX:
        return {
            "SERVER": settings.triton_image if gpu else settings.cpu_mock_image,
            "MODEL_PREP": settings.model_prep_image if gpu else settings.cpu_mock_image,
        }
    return {}


def build_bench_job(
    suite: api.BenchmarkSuite,
    uid: str,
    cell: plan.Cell,
    settings: OperatorSettings,
    server_node: str | None = None,
    time_to_ready_s: float | None = None,
) -> Manifest:
    """The benchmark Job: in-cluster, never on the node of the backend it measures."""
    name_args = (suite.metadata.name, cell.backend.name, cell.pool.name)
    labels = naming.cell_labels(*name_args, naming.COMPONENT_BENCH)
    external = cell.backend.kind is api.BackendKind.EXTERNAL
    target = plan.external_target(suite, cell.backend) if external else backend_target(suite, cell)
    bench = plan.build_bench_config(suite, cell, target)
    result_labels = naming.cell_labels(*name_args, naming.COMPONENT_RESULT)
    owner = json.dumps(owner_reference(suite, uid, block=False))
    namespace_ref = {"fieldRef": {"fieldPath": "metadata.namespace"}}
    env = [
        {"name": "BAKEOFF_BENCH_CONFIG", "value": bench.model_dump_json(by_alias=True)},
        {"name": "BAKEOFF_RESULT_CONFIGMAP", "value": naming.result_name(*name_args)},
        {"name": "BAKEOFF_RESULT_LABELS", "value": json.dumps(result_labels, sort_keys=True)},
        # The bench ServiceAccount may not touch the suite's finalizers, so no blocking.
        {"name": "BAKEOFF_RESULT_OWNER", "value": owner},
        {"name": "BAKEOFF_NAMESPACE", "valueFrom": namespace_ref},
        {"name": "BAKEOFF_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        # Recorded in the result's environment: which images produced the numbers.
        {"name": "BAKEOFF_IMAGE_BENCH", "value": settings.bench_image},
        *[{"name": f"BAKEOFF_IMAGE_{role}", "value": image}
          for role, image in backend_images(cell, settings).items()],
    ]  # fmt: skip
    if server_node:
        env.append({"name": "BAKEOFF_SERVER_NODE", "value": server_node})
    if time_to_ready_s is not None:
        env.append({"name": "BAKEOFF_TIME_TO_READY_S", "value": f"{time_to_ready_s:.1f}"})
    container = _container(
        "bench", settings.bench_image, ["--config-env", "BAKEOFF_BENCH_CONFIG", "--publish"],
        env=env,
        resources={"requests": {"cpu": settings.bench_cpu_request,
                                "memory": settings.bench_memory_request}},
    )  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(naming.job_name(*name_args), suite, uid, labels),
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": suite.spec.timeouts.run_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": naming.BENCH_SERVICE_ACCOUNT,
                    "securityContext": dict(RESTRICTED_POD),
                    "affinity": _bench_anti_affinity(name_args, settings),
                    "containers": [container],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
    }


def _bench_anti_affinity(
    name_args: tuple[str, str, str], settings: OperatorSettings
) -> dict[str, Any]:
    """Never on the node of the backend it measures; or, where the cluster has a single
    worker, preferably not (the result then carries the client-shares-node flag)."""
    term = {
        "labelSelector": {"matchLabels": naming.backend_selector(*name_args)},
        "topologyKey": "kubernetes.io/hostname",
    }
    if settings.bench_anti_affinity == "preferred":
        rule: dict[str, Any] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    else:
        rule = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    return {"podAntiAffinity": rule}


def build_bench_rbac(namespace: str) -> list[Manifest]:
    """The benchmark Jobs' identity in a namespace: it may write ConfigMaps, nothing else.

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
                    "verbs": ["create", "get", "update"],
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
