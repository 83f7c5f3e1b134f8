"""The building blocks of every pod the operator creates: ports, security contexts, resources,
probes, containers. Backend kinds assemble their pods from these (`bakeoff.backends`).

Every pod meets the "restricted" Pod Security Standard: non-root, read-only root
filesystem (scratch space is an emptyDir), no privilege escalation, no capabilities,
RuntimeDefault seccomp.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Final

from bakeoff import api
from bakeoff.settings import OperatorSettings

HTTP_PORT: Final = 8000
GRPC_PORT: Final = 8001
METRICS_PORT: Final = 8002
GPU_RESOURCE: Final = "nvidia.com/gpu"

Container = dict[str, Any]
# Where the benchmark Job mounts each Secret an endpoint's auth names: ROOT/<secret>/<key>.
SECRETS_ROOT: Final = PurePosixPath("/var/run/bakeoff/secrets")
# Owner-and-group readable: the pod's fsGroup (1000) is the group, its user is in it.
SECRET_FILE_MODE: Final = 0o440

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
SCRATCH_MOUNT: Final = {"name": "scratch", "mountPath": "/tmp"}
MODELS_MOUNT: Final = {"name": "models", "mountPath": "/models"}


def uses_gpu(pool: api.NodePool, settings: OperatorSettings) -> bool:
    return pool.gpus > 0 and not settings.cpu_mock


def cell_device(pool: api.NodePool, settings: OperatorSettings) -> str:
    return "cuda" if uses_gpu(pool, settings) else "cpu"


def resources(pool: api.NodePool, settings: OperatorSettings) -> dict[str, Any]:
    requests = {"cpu": settings.backend_cpu_request, "memory": settings.backend_memory_request}
    out: dict[str, Any] = {"requests": dict(requests)}
    if uses_gpu(pool, settings):
        out["limits"] = {GPU_RESOURCE: str(pool.gpus)}
        out["requests"][GPU_RESOURCE] = str(pool.gpus)
    return out


def ready_probe() -> dict[str, Any]:
    # Our servers and Triton (with model_warmup) answer ready only once every batch size
    # the suite sends has run once: ready means warm.
    return {
        "httpGet": {"path": "/v2/health/ready", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }


def ports(metrics: bool) -> list[dict[str, Any]]:
    """The container ports of a server; `metrics` when it serves Prometheus on its own port."""
    out = [
        {"name": "http", "containerPort": HTTP_PORT},
        {"name": "grpc", "containerPort": GRPC_PORT},
    ]
    if metrics:
        out.append({"name": "metrics", "containerPort": METRICS_PORT})
    return out


def container(name: str, image: str, args: list[str], **extra: Any) -> Container:
    return {
        "name": name,
        "image": image,
        "args": args,
        "securityContext": dict(RESTRICTED_CONTAINER),
        "volumeMounts": [dict(SCRATCH_MOUNT)],
        **extra,
    }


def server_container(
    image: str, args: list[str], pool: api.NodePool, settings: OperatorSettings, metrics: bool
) -> Container:
    """The container a backend's readiness and the bench Job's requests go to."""
    return container(
        "server", image, args, ports=ports(metrics=metrics), readinessProbe=ready_probe(),
        resources=resources(pool, settings),
    )  # fmt: skip


def secret_mounts(
    auth: api.EndpointAuth | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volume mounts) of the Secrets `auth` names: each Secret once, read-only at
    SECRETS_ROOT/<name>, only the keys used. The kubelet reads them; nothing in the API
    (neither the operator nor the Job's ServiceAccount) needs a right on Secrets."""
    if auth is None:
        return [], []
    keys: dict[str, set[str]] = {}
    for _, value in auth.secret_values():
        keys.setdefault(value.secret_ref.name, set()).add(value.secret_ref.key)
    volumes, mounts = [], []
    for index, name in enumerate(sorted(keys)):
        volume = f"secret-{index}"
        items = [{"key": key, "path": key} for key in sorted(keys[name])]
        volumes.append(
            {"name": volume,
             "secret": {"secretName": name, "items": items, "defaultMode": SECRET_FILE_MODE}}
        )  # fmt: skip
        mounts.append({"name": volume, "mountPath": str(SECRETS_ROOT / name), "readOnly": True})
    return volumes, mounts
