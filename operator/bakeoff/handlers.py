"""kopf handlers for BenchmarkSuite: gather what exists, ask the planner, apply, write status.

Only glue lives here. Decisions are `reconcile.plan_suite`'s; API calls are `kube`'s.
Run locally against any cluster:  kopf run --standalone -m bakeoff.handlers -n NAMESPACE
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bakeoff import api, kube, reconcile, validation
from bakeoff.settings import get_settings

GROUP, VERSION, PLURAL = api.API_GROUP, api.API_VERSION, "benchmarksuites"
FINISHED = (api.SuitePhase.SUCCEEDED.value, api.SuitePhase.FAILED.value)

_client: kube.KubeClient | None = None


def kube_client() -> kube.KubeClient:
    global _client
    if _client is None:
        try:
            k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
        _client = kube.KubeClient(k8s.ApiClient())
    return _client


@kopf.on.startup()
def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # No peering objects needed (one operator per scope); progress kept in annotations,
    # because the CRD's structural schema prunes unknown status fields.
    settings.peering.standalone = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    kube_client()


def _suite_document(body: kopf.Body) -> dict[str, Any]:
    metadata = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "generation": metadata.get("generation"),
        },
        "spec": dict(body.get("spec", {})),
    }


def _previous_status(body: kopf.Body) -> api.SuiteStatus | None:
    raw = dict(body.get("status") or {})
    raw = {k: v for k, v in raw.items() if k in api.SuiteStatus.model_fields or k in _aliases()}
    try:
        return api.SuiteStatus.model_validate(raw) if raw else None
    except ValueError:
        return None  # a status we cannot read is rebuilt from the cluster


def _aliases() -> set[str]:
    return {f.alias for f in api.SuiteStatus.model_fields.values() if f.alias}


def reconcile_suite(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> None:
    now = datetime.now(UTC)
    document = _suite_document(body)
    previous = _previous_status(body)
    generation = document["metadata"]["generation"]
    try:
        suite = validation.parse_suite(
            document, f"BenchmarkSuite {body.get('metadata', {}).get('name')}"
        )
    except validation.SuiteInvalid as invalid:
        problems = [
            p.render().replace("\n    hint:", " (hint:") + (")" if p.hint else "")
            for p in invalid.problems
        ]
        status = reconcile.invalid_status(generation, previous, problems, now)
        patch.status.update(status.model_dump(mode="json", by_alias=True, exclude_none=True))
        kopf.warn(body, reason="InvalidSpec", message="; ".join(problems))
        raise kopf.PermanentError(f"invalid spec: {'; '.join(problems)}") from None
    suite = suite.model_copy(update={"status": previous})
    namespace = suite.metadata.namespace or "default"
    uid = body["metadata"]["uid"]
    client = kube_client()
    plan = reconcile.plan_suite(
        suite, uid, client.observe(namespace, suite.metadata.name), now, get_settings()
    )
    for manifest in plan.creates:
        if client.create(namespace, manifest):
            logger.info(f"created {manifest['kind']} {manifest['metadata']['name']}")
    for kind, name in plan.deletes:
        if client.delete(namespace, kind, name):
            logger.info(f"deleted {kind} {name} (cleanup policy {suite.spec.cleanup.policy.value})")
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    patch.status.update(plan.status.model_dump(mode="json", by_alias=True, exclude_none=True))


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def benchmarksuite_changed(
    body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    reconcile_suite(body, patch, logger)


@kopf.timer(
    GROUP, VERSION, PLURAL,
    interval=get_settings().reconcile_interval_s,
    when=lambda status, **_: status.get("phase") not in FINISHED,
)  # fmt: skip
def benchmarksuite_tick(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    """Drives every suite forward: children change state without touching the suite."""
    reconcile_suite(body, patch, logger)
