"""kopf handlers for BenchmarkSuite: gather what exists, ask the planner, apply, write status.

Only glue lives here. Decisions are `reconcile.plan_suite`'s; API calls are `kube`'s.
Run locally against any cluster:  kopf run --standalone -m bakeoff.handlers -n NAMESPACE
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from bakeoff import api, kube, metrics, reconcile, redact, validation
from bakeoff.settings import get_settings

GROUP, VERSION, PLURAL = api.API_GROUP, api.API_VERSION, "benchmarksuites"
FINISHED = (api.SuitePhase.SUCCEEDED.value, api.SuitePhase.FAILED.value)

_client: kube.KubeClient | None = None

# Before kopf logs its first object: no credentials or whole objects in the log (see redact).
redact.install()


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
    metrics.start_exporter()  # BAKEOFF_METRICS_PORT, default 8080; 0 disables


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _suite_lock(uid: str) -> threading.Lock:
    """One reconcile per suite at a time: the timer and the event handlers run concurrently."""
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def reconcile_suite(body: kopf.Body, logger: kopf.Logger) -> None:
    """Reconcile once, timed and counted for /metrics (see `_reconcile_suite`)."""
    with metrics.reconciling(invalid=(kopf.PermanentError,)):
        _reconcile_suite(body, logger)


def _reconcile_suite(body: kopf.Body, logger: kopf.Logger) -> None:
    """Plan from a fresh read of the suite and write its status before letting go of it.

    kopf hands each handler the body of the event that woke it; two handlers woken together
    would plan from the same old status and announce every step twice. Under the suite's
    lock, the status is re-read from the API and written back directly, so the next
    reconcile always starts from the last one's result.
    """
    metadata = body.get("metadata", {})
    namespace, name, uid = metadata.get("namespace") or "default", metadata["name"], metadata["uid"]
    client = kube_client()
    with _suite_lock(uid):
        now = datetime.now(UTC)
        fresh = client.read_suite(namespace, name)
        if fresh["metadata"].get("uid") != uid:
            return  # deleted and re-created meanwhile: the new object has handlers of its own
        document = validation.suite_document(fresh)
        previous = validation.suite_status(fresh)
        generation = document["metadata"]["generation"]
        try:
            suite = validation.parse_suite(document, f"BenchmarkSuite {namespace}/{name}")
            unsupported = validation.cluster_problems(suite)
            if unsupported:
                raise validation.SuiteInvalid(f"BenchmarkSuite {namespace}/{name}", unsupported)
        except validation.SuiteInvalid as invalid:
            problems = [
                p.render().replace("\n    hint:", " (hint:") + (")" if p.hint else "")
                for p in invalid.problems
            ]
            status = reconcile.invalid_status(generation, previous, problems, now)
            client.patch_suite_status(namespace, name, _status_body(status))
            metrics.observe_suite(namespace, name, status, [])
            kopf.warn(body, reason="InvalidSpec", message="; ".join(problems))
            raise kopf.PermanentError(f"invalid spec: {'; '.join(problems)}") from None
        suite = suite.model_copy(update={"status": previous})
        observed = client.observe(namespace, name)
        plan = reconcile.plan_suite(suite, uid, observed, now, get_settings())
        for manifest in plan.creates:
            if client.create(namespace, manifest):
                logger.info(f"created {manifest['kind']} {manifest['metadata']['name']}")
        for kind, child in plan.deletes:
            if client.delete(namespace, kind, child):
                policy = suite.spec.cleanup.policy.value
                logger.info(f"deleted {kind} {child} (cleanup policy {policy})")
        # Most ticks change nothing (a backend still warming up, a Job still running): an
        # unchanged status is not written, one request of seven fewer per such tick (the
        # load run, benchmarks/operator_load.py, counts them by verb).
        if plan.status != previous:
            client.patch_suite_status(namespace, name, _status_body(plan.status))
        results = [o.result for o in observed.results.values() if o.result is not None]
        metrics.observe_suite(namespace, name, plan.status, results)
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _status_body(status: api.SuiteStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


# A failed reconcile (the API server restarting, a refused request) is retried at the
# reconcile interval, not after kopf's default back-off of 60 s: every step is re-planned from
# the cluster's state, so retrying soon is safe, and the suite resumes as soon as it can.
RETRY_BACKOFF_S = get_settings().reconcile_interval_s


@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF_S)
@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_BACKOFF_S)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_BACKOFF_S)
def benchmarksuite_changed(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    reconcile_suite(body, logger)


@kopf.timer(
    GROUP, VERSION, PLURAL,
    interval=get_settings().reconcile_interval_s,
    initial_delay=get_settings().reconcile_interval_s,  # the create/resume handler goes first
    backoff=RETRY_BACKOFF_S,
    when=lambda status, **_: status.get("phase") not in FINISHED,
)  # fmt: skip
def benchmarksuite_tick(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """Drives every suite forward: children change state without touching the suite."""
    reconcile_suite(body, logger)


@kopf.on.event(GROUP, VERSION, PLURAL)
def benchmarksuite_event(
    type: str, namespace: str | None, name: str | None, uid: str | None, **_: Any
) -> None:
    """Drop a deleted suite's series and lock, and what is remembered of its namespace's
    shared objects (the namespace itself may be being deleted). A watch event, not
    @on.delete: that needs a finalizer (or misses a suite deleted without one); DELETED events
    arrive either way."""
    if type == "DELETED" and name:
        metrics.forget_suite(namespace or "default", name)
        kube_client().forget_shared(namespace or "default")
        with _locks_guard:
            _locks.pop(uid or "", None)
