"""The one Kubernetes API adapter: observe a suite's children, create and delete them.

`observe_*` functions are pure conversions from API objects (plain dicts, camelCase as the
API returns them) to `reconcile` observations; `KubeClient` is the thin I/O around them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from bakeoff import naming, reconcile
from bakeoff_bench.results import CellResult

Obj = Mapping[str, Any]

# The benchmark Jobs' ServiceAccount, Role and RoleBinding are shared by every suite of a
# namespace, and the planner asks for them with every Job (it sees only a suite's children).
# Creating them again is a 409 that the API server still pays for, the RoleBinding's RBAC
# escalation check included: under load (benchmarks/operator_load.py) these were the most
# expensive requests the operator made. So once one exists, it is not asked for again for a
# while: until a suite of its namespace is deleted (the namespace may be going), or the
# recheck, which puts back one deleted by hand.
SHARED_KINDS: Final = frozenset({"ServiceAccount", "Role", "RoleBinding"})
SHARED_RECHECK_S: Final = 300.0


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(obj: Obj, type_: str) -> Obj | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def _pod_failure(pod: Obj) -> str:
    """'pod NAME (client I) on NODE: REASON, exit code N' for a Failed pod."""
    annotations = pod["metadata"].get("annotations") or {}
    index = annotations.get("batch.kubernetes.io/job-completion-index")
    who = f"pod {pod['metadata']['name']}" + (f" (client {index})" if index else "")
    node = pod.get("spec", {}).get("nodeName")
    where = f" on {node}" if node else ""
    status = pod.get("status", {})
    reasons = [status.get("reason") or "", status.get("message") or ""]
    for container in status.get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated") or {}
        if ended:
            reason, code = ended.get("reason", "terminated"), ended.get("exitCode")
            reasons.append(f"{reason}, exit code {code}")
    said = "; ".join(r for r in reasons if r) or "failed"
    return f"{who}{where}: {said}"


def observe_pod(pod: Obj) -> reconcile.PodObservation:
    status = pod.get("status", {})
    ready = _condition(pod, "Ready")
    scheduled = _condition(pod, "PodScheduled")
    unschedulable = ""
    if scheduled and scheduled.get("status") == "False":
        unschedulable = scheduled.get("message") or scheduled.get("reason", "Unschedulable")
    waiting = ""
    restarts = 0
    terminated: list[datetime] = []
    failure = ""
    if status.get("phase") == "Failed":
        failure = _pod_failure(pod)
    for container in status.get("containerStatuses") or []:
        restarts += int(container.get("restartCount", 0))
        reason = (container.get("state", {}).get("waiting") or {}).get("reason")
        if reason and reason not in ("ContainerCreating", "PodInitializing"):
            waiting = reason
        last = (container.get("lastState") or {}).get("terminated") or {}
        finished = parse_time(last.get("finishedAt"))
        if finished is not None:
            terminated.append(finished)
    return reconcile.PodObservation(
        name=pod["metadata"]["name"],
        node=pod.get("spec", {}).get("nodeName"),
        phase=status.get("phase", "Pending"),
        ready=bool(ready and ready.get("status") == "True"),
        unschedulable=unschedulable,
        waiting_reason=waiting,
        restarts=restarts,
        failure=failure,
        created_at=parse_time(pod["metadata"].get("creationTimestamp")),
        ready_at=parse_time(ready.get("lastTransitionTime"))
        if ready and ready.get("status") == "True"
        else None,
        last_terminated_at=max(terminated, default=None),
    )


def _labels(obj: Obj) -> Mapping[str, str]:
    labels: Mapping[str, str] = obj.get("metadata", {}).get("labels") or {}
    return labels


def _cell_of(obj: Obj) -> tuple[str, str, str]:
    labels = _labels(obj)
    return (
        labels.get(naming.LABEL_SUITE, ""),
        labels.get(naming.LABEL_BACKEND, ""),
        labels.get(naming.LABEL_POOL, ""),
    )


def observe_result(configmap: Obj) -> reconcile.ResultObservation:
    name = configmap["metadata"]["name"]
    text = (configmap.get("data") or {}).get(naming.RESULT_KEY)
    if text is None:
        return reconcile.ResultObservation(name, None, f"no '{naming.RESULT_KEY}' key")
    try:
        return reconcile.ResultObservation(name, CellResult.model_validate_json(text))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        return reconcile.ResultObservation(
            name, None, f"{error.error_count()} problem(s), first at {where}: {first['msg']}"
        )


def observe_job(job: Obj, pods: Iterable[reconcile.PodObservation]) -> reconcile.JobObservation:
    complete = _condition(job, "Complete")
    failed = _condition(job, "Failed")
    failed_message = ""
    finished = parse_time(job.get("status", {}).get("completionTime"))
    if failed and failed.get("status") == "True":
        failed_message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip()
        finished = parse_time(failed.get("lastTransitionTime"))
    created = parse_time(job["metadata"].get("creationTimestamp"))
    assert created is not None  # the API server always sets it
    return reconcile.JobObservation(
        name=job["metadata"]["name"],
        created_at=created,
        succeeded=bool(complete and complete.get("status") == "True"),
        failed_message=failed_message,
        finished_at=finished,
        nodes=tuple(sorted({p.node for p in pods if p.node})),
        failed_pods=tuple(p.failure for p in pods if p.failure),
    )


def observe(
    deployments: Iterable[Obj],
    pods: Iterable[Obj],
    services: Iterable[Obj],
    jobs: Iterable[Obj],
    configmaps: Iterable[Obj],
) -> reconcile.Observed:
    """Group a suite's children by cell, from lists filtered by the suite's label selector."""
    pods_by_cell: dict[tuple[str, str, str, str], list[reconcile.PodObservation]] = {}
    for pod in pods:
        key = (*_cell_of(pod), _labels(pod).get(naming.LABEL_COMPONENT, ""))
        pods_by_cell.setdefault(key, []).append(observe_pod(pod))
    observed_deployments = {}
    for deployment in deployments:
        created = parse_time(deployment["metadata"].get("creationTimestamp"))
        assert created is not None
        name = deployment["metadata"]["name"]
        cell_pods = pods_by_cell.get((*_cell_of(deployment), naming.COMPONENT_BACKEND), [])
        observed_deployments[name] = reconcile.DeploymentObservation(
            name=name,
            created_at=created,
            ready_replicas=int(deployment.get("status", {}).get("readyReplicas") or 0),
            pods=tuple(cell_pods),
        )
    observed_jobs = {
        job["metadata"]["name"]: observe_job(
            job, pods_by_cell.get((*_cell_of(job), naming.COMPONENT_BENCH), [])
        )
        for job in jobs
    }
    return reconcile.Observed(
        deployments=observed_deployments,
        services=frozenset(s["metadata"]["name"] for s in services),
        jobs=observed_jobs,
        results=_results_of(configmaps, naming.COMPONENT_RESULT),
        client_results=_results_of(configmaps, naming.COMPONENT_CLIENT_RESULT),
    )


def _results_of(
    configmaps: Iterable[Obj], component: str
) -> dict[str, reconcile.ResultObservation]:
    return {
        cm["metadata"]["name"]: observe_result(cm)
        for cm in configmaps
        if _labels(cm).get(naming.LABEL_COMPONENT) == component
    }


class KubeClient:
    """Typed calls of the official client, returning plain dicts (as the API speaks)."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.core = k8s.CoreV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.batch = k8s.BatchV1Api(api_client)
        self.rbac = k8s.RbacAuthorizationV1Api(api_client)
        self.networking = k8s.NetworkingV1Api(api_client)
        # (namespace, kind, name) of a shared object -> time.monotonic() until which it is
        # taken to exist. Handlers run in threads: a race costs one extra create, no more.
        self._exists_until: dict[tuple[str, str, str], float] = {}

    @staticmethod
    def _items(response: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def observe(self, namespace: str, suite: str) -> reconcile.Observed:
        selector = naming.suite_selector(suite)
        raw: dict[str, Any] = {"_preload_content": False, "label_selector": selector}
        return observe(
            self._items(self.apps.list_namespaced_deployment(namespace, **raw)),
            self._items(self.core.list_namespaced_pod(namespace, **raw)),
            self._items(self.core.list_namespaced_service(namespace, **raw)),
            self._items(self.batch.list_namespaced_job(namespace, **raw)),
            self._items(self.core.list_namespaced_config_map(namespace, **raw)),
        )

    def create(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create if absent; False when it already exists (a repeated event, a restart, or a
        shared object created or seen within SHARED_RECHECK_S, which is not asked for)."""
        key = (namespace, manifest["kind"], manifest["metadata"]["name"])
        shared = key[1] in SHARED_KINDS
        if shared and self._exists_until.get(key, 0.0) > time.monotonic():
            return False
        creators: dict[str, Callable[..., Any]] = {
            "Deployment": self.apps.create_namespaced_deployment,
            "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "ConfigMap": self.core.create_namespaced_config_map,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }
        created = True
        try:
            creators[manifest["kind"]](namespace, body=dict(manifest))
        except ApiException as error:
            if error.status != 409:
                raise
            created = False
        if shared:
            self._exists_until[key] = time.monotonic() + SHARED_RECHECK_S
        return created

    def forget_shared(self, namespace: str) -> None:
        """Ask for the namespace's shared objects again with the next Job."""
        for key in list(self._exists_until):  # a copy: other threads may add meanwhile
            if key[0] == namespace:
                self._exists_until.pop(key, None)

    def delete(self, namespace: str, kind: str, name: str) -> bool:
        deleters: dict[str, Callable[..., Any]] = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "Job": self.batch.delete_namespaced_job,
            "ConfigMap": self.core.delete_namespaced_config_map,
            "NetworkPolicy": self.networking.delete_namespaced_network_policy,
        }
        try:
            deleters[kind](name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def read_suite(self, namespace: str, name: str) -> dict[str, Any]:
        custom = k8s.CustomObjectsApi(self.core.api_client)
        obj = custom.get_namespaced_custom_object(
            naming.GROUP, "v1alpha1", namespace, "benchmarksuites", name
        )
        suite: dict[str, Any] = json.loads(json.dumps(obj))
        return suite

    def patch_suite_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (lists such as cells are replaced whole)."""
        custom = k8s.CustomObjectsApi(self.core.api_client)
        custom.patch_namespaced_custom_object_status(
            naming.GROUP, "v1alpha1", namespace, "benchmarksuites", name, {"status": dict(status)}
        )

    def read_result_configmaps(self, namespace: str, suite: str) -> list[dict[str, Any]]:
        selector = (
            f"{naming.suite_selector(suite)},{naming.LABEL_COMPONENT}={naming.COMPONENT_RESULT}"
        )
        return self._items(
            self.core.list_namespaced_config_map(
                namespace, label_selector=selector, _preload_content=False
            )
        )
