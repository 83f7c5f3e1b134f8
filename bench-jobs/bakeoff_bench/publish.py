"""Write a CellResult into its ConfigMap: the benchmark Job's last step, as its own
ServiceAccount (which may create and update ConfigMaps in its namespace, nothing else).

Plain HTTPS to the API server with the pod's token: the bench image needs no Kubernetes
client library. Building the ConfigMap is pure; `publish` is the one network call.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from bakeoff_bench.results import CellResult

RESULT_KEY: Final = "result.json"
SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class PublishError(RuntimeError):
    """The API server refused or could not be reached; the message quotes its answer."""


@dataclass(frozen=True)
class ApiAccess:
    server: str  # https://host:port
    token: str
    ca_file: str | None


@dataclass(frozen=True)
class Destination:
    name: str
    namespace: str
    labels: Mapping[str, str]
    owner: Mapping[str, Any] | None


def in_cluster_access(env: Mapping[str, str] = os.environ) -> ApiAccess:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    token_file = SERVICE_ACCOUNT_DIR / "token"
    if not host or not token_file.exists():
        raise PublishError(
            "not running in a pod with a ServiceAccount token (KUBERNETES_SERVICE_HOST unset "
            f"or {token_file} missing); --publish works inside the benchmark Job only"
        )
    return ApiAccess(
        f"https://{host}:{port}",
        token_file.read_text().strip(),
        str(SERVICE_ACCOUNT_DIR / "ca.crt"),
    )


def destination_from_env(env: Mapping[str, str] = os.environ) -> Destination:
    """Where the operator told the Job to publish (env vars set on the Job's container)."""
    missing = [v for v in ("BAKEOFF_RESULT_CONFIGMAP", "BAKEOFF_NAMESPACE") if not env.get(v)]
    if missing:
        raise PublishError(f"--publish needs the environment variables {', '.join(missing)}")
    owner = env.get("BAKEOFF_RESULT_OWNER")
    return Destination(
        name=env["BAKEOFF_RESULT_CONFIGMAP"],
        namespace=env["BAKEOFF_NAMESPACE"],
        labels=json.loads(env.get("BAKEOFF_RESULT_LABELS", "{}")),
        owner=json.loads(owner) if owner else None,
    )


def result_configmap(result: CellResult, destination: Destination) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": destination.name,
        "namespace": destination.namespace,
        "labels": dict(destination.labels),
    }
    if destination.owner is not None:
        metadata["ownerReferences"] = [dict(destination.owner)]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {RESULT_KEY: result.model_dump_json(by_alias=True)},
    }


async def publish(access: ApiAccess, configmap: Mapping[str, Any]) -> str:
    """Create the ConfigMap, or replace it if a previous attempt of this Job made it.

    Returns "created" or "replaced".
    """
    namespace = configmap["metadata"]["namespace"]
    name = configmap["metadata"]["name"]
    base = f"{access.server}/api/v1/namespaces/{namespace}/configmaps"
    # Without a CA file, verify against the system store (never skip verification).
    context = ssl.create_default_context(cafile=access.ca_file)
    headers = {"Authorization": f"Bearer {access.token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        try:
            async with session.post(base, json=configmap, ssl=context) as response:
                if response.status == 201:
                    return "created"
                if response.status != 409:
                    raise PublishError(
                        f"create {name}: HTTP {response.status}: {await response.text()}"
                    )
            async with session.get(f"{base}/{name}", ssl=context) as response:
                if response.status != 200:
                    raise PublishError(
                        f"read {name}: HTTP {response.status}: {await response.text()}"
                    )
                current = await response.json()
            replacement = json.loads(json.dumps(configmap))
            replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            async with session.put(f"{base}/{name}", json=replacement, ssl=context) as response:
                if response.status != 200:
                    raise PublishError(
                        f"replace {name}: HTTP {response.status}: {await response.text()}"
                    )
                return "replaced"
        except aiohttp.ClientError as error:
            raise PublishError(
                f"cannot reach the API server at {access.server}: {error}"
            ) from error
