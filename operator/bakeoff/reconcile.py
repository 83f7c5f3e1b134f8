"""The reconcile planner: a suite and what exists in the cluster in, what to do out.

Pure: no kopf, no Kubernetes client, no clock (time comes from `now`). Every decision can be
re-made from the cluster's state and the suite's status alone, so a restarted operator picks
up where the last one stopped, and a repeated event never creates a twin (names are
deterministic and creates are create-if-absent).

Cells of one pool run one at a time (deploy, wait until warm, benchmark, clean up), so two
backends never share a pool's nodes while either is measured; pools run in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from bakeoff import analysis, api, manifests, naming, plan, pods
from bakeoff.backends import plugin_for
from bakeoff.settings import OperatorSettings
from bakeoff_bench import merge
from bakeoff_bench.results import CellResult, FlagCode

TERMINAL = (api.CellPhase.SUCCEEDED, api.CellPhase.FAILED)
PHASE_ORDER = [
    api.SuitePhase.PENDING,
    api.SuitePhase.DEPLOYING,
    api.SuitePhase.BENCHMARKING,
    api.SuitePhase.ANALYZING,
    api.SuitePhase.SUCCEEDED,
    api.SuitePhase.FAILED,
]


@dataclass(frozen=True)
class PodObservation:
    name: str
    node: str | None
    phase: str
    ready: bool
    unschedulable: str = ""  # the scheduler's message while PodScheduled is False
    waiting_reason: str = ""  # e.g. CrashLoopBackOff, ImagePullBackOff
    restarts: int = 0
    created_at: datetime | None = None
    ready_at: datetime | None = None  # when it last became Ready
    last_terminated_at: datetime | None = None  # when a container of it last died
    failure: str = ""  # a Failed pod: who, where and why (kube._pod_failure)


@dataclass(frozen=True)
class DeploymentObservation:
    name: str
    created_at: datetime
    ready_replicas: int
    pods: tuple[PodObservation, ...] = ()


@dataclass(frozen=True)
class JobObservation:
    name: str
    created_at: datetime
    succeeded: bool = False
    failed_message: str = ""  # the Job's Failed condition, "" while not failed
    finished_at: datetime | None = None
    nodes: tuple[str, ...] = ()  # where its pods ran
    failed_pods: tuple[str, ...] = ()  # PodObservation.failure of each of its failed pods


@dataclass(frozen=True)
class ResultObservation:
    name: str
    result: CellResult | None
    error: str = ""  # why the ConfigMap could not be read as a CellResult


@dataclass(frozen=True)
class Observed:
    deployments: Mapping[str, DeploymentObservation] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    jobs: Mapping[str, JobObservation] = field(default_factory=dict)
    results: Mapping[str, ResultObservation] = field(default_factory=dict)
    # The parts several client pods published, before the operator merges them.
    client_results: Mapping[str, ResultObservation] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    creates: list[manifests.Manifest] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    events: list[Event] = field(default_factory=list)
    status: api.SuiteStatus = field(default_factory=api.SuiteStatus)
    requeue: bool = True  # False once the suite is finished and cleaned up


@dataclass
class _CellDecision:
    status: api.CellStatus
    creates: list[manifests.Manifest] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)


def _names(suite: api.BenchmarkSuite, cell: plan.Cell) -> tuple[str, str, str]:
    return suite.metadata.name, cell.backend.name, cell.pool.name


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def _backend_node(deployment: DeploymentObservation | None) -> str | None:
    if deployment is None:
        return None
    nodes = [p.node for p in deployment.pods if p.node]
    return nodes[0] if nodes else None


def backend_left_node(deployment: DeploymentObservation | None, node: str | None) -> str:
    """Why the backend measured on `node` is no longer there ("" while it still is).

    A node deleted (scale-down, spot reclaim), drained, or the pod evicted: the ReplicaSet
    starts a new pod elsewhere, and a benchmark that straddles the move measured two
    backends (and a cold start). Nodes are not read (the operator has no cluster-wide
    access); the pods say it: none of the backend's pods is still on `node`, or it failed
    there (the pod GC marks an orphaned pod Failed before deleting it).
    """
    if node is None or deployment is None:
        return ""
    there = [p for p in deployment.pods if p.node == node and p.phase != "Failed"]
    if there:
        return ""
    elsewhere = sorted({p.node for p in deployment.pods if p.node and p.node != node})
    now = f"now on {', '.join(elsewhere)}" if elsewhere else "no backend pod on a node now"
    return (
        f"backend pod left node {node} during the benchmark ({now}): the node was deleted or "
        "drained, or the pod evicted; the measurement is void"
    )


def _during(moment: datetime | None, job: JobObservation) -> bool:
    """Whether `moment` falls inside the benchmark's run (unknown moments count as inside)."""
    if moment is None:
        return job.finished_at is None
    return moment >= job.created_at and (job.finished_at is None or moment <= job.finished_at)


def backend_interrupted(
    deployment: DeploymentObservation | None, previous: api.CellStatus, job: JobObservation
) -> str:
    """Why the backend the benchmark started against stopped serving during it ("" if not).

    A container that crashed or was killed is restarted by the kubelet in place (same pod,
    same node), and a deleted pod is replaced, maybe on the same node: either way part of
    the run measured a dead or cold server. The pod and its restart count were recorded when
    the benchmark started; a restart or a replacement after the run ended does not count.
    """
    if previous.backend_pod is None or previous.backend_restarts is None or deployment is None:
        return ""
    pod = next((p for p in deployment.pods if p.name == previous.backend_pod), None)
    if pod is None:
        newer = [p for p in deployment.pods if _during(p.created_at, job)]
        if newer or job.finished_at is None:
            now = f" (now {', '.join(p.name for p in newer)})" if newer else ""
            return (
                f"backend pod {previous.backend_pod} was deleted during the benchmark{now}: "
                "the measurement is void"
            )
        return ""
    if pod.restarts > previous.backend_restarts and _during(pod.last_terminated_at, job):
        return (
            f"backend pod {pod.name} restarted during the benchmark (container restarts "
            f"{previous.backend_restarts} -> {pod.restarts}): the kubelet brought the server "
            "back cold, so the measurement is void"
        )
    return ""


def explain_not_ready(deployment: DeploymentObservation, pool: api.NodePool) -> str:
    """Why a backend is not ready, in the words a platform engineer needs."""
    for pod in deployment.pods:
        if pod.unschedulable:
            return f"no node of pool '{pool.name}' can take the backend: {pod.unschedulable}"
        if pod.waiting_reason:
            return f"backend container is {pod.waiting_reason} ({pod.restarts} restarts)"
    if not deployment.pods:
        return "no backend pod exists yet"
    return "backend is running but not ready (warming up or failing its readiness probe)"


def _cleanup(
    suite: api.BenchmarkSuite, cell: plan.Cell, phase: api.CellPhase, observed: Observed
) -> list[tuple[str, str]]:
    """Delete a finished cell's backend and Job (and a several-client Job's barrier) per the
    cleanup policy (results stay, and so do the client parts they were merged from)."""
    policy = suite.spec.cleanup.policy
    if policy is api.CleanupPolicy.NEVER or (
        policy is api.CleanupPolicy.ON_SUCCESS and phase is not api.CellPhase.SUCCEEDED
    ):
        return []
    names = _names(suite, cell)
    deletes = []
    if naming.backend_name(*names) in observed.deployments:
        deletes.append(("Deployment", naming.backend_name(*names)))
    if naming.backend_name(*names) in observed.services:
        deletes.append(("Service", naming.backend_name(*names)))
        # Created with the Service, so deleted with it (a 404 is fine: policies may be off).
        deletes.append(("NetworkPolicy", naming.backend_name(*names)))
    several = plan.resolve_clients(suite.spec.scenarios) > 1
    for attempt in (1, 2):
        if naming.job_name(*names, attempt) in observed.jobs:
            deletes.append(("Job", naming.job_name(*names, attempt)))
            if several:  # asked while its Job is there: no repeated deletes of nothing
                deletes.append(("ConfigMap", naming.barrier_name(*names, attempt)))
    return deletes


def _void_run(
    names: tuple[str, str, str], clients: int, observed: Observed
) -> list[tuple[str, str]]:
    """What a void first run leaves: its Job, its barrier, the parts some clients published."""
    deletes = [("Job", naming.job_name(*names)), ("ConfigMap", naming.barrier_name(*names))]
    for index in range(clients):
        part = naming.client_result_name(*names, index)
        if part in observed.client_results:
            deletes.append(("ConfigMap", part))
    return deletes


def _merge_parts(
    suite: api.BenchmarkSuite,
    uid: str,
    cell: plan.Cell,
    clients: int,
    attempt: int,
    observed: Observed,
) -> manifests.Manifest | str | None:
    """The merged result's ConfigMap once every client's part is in; a message when a part
    is malformed; None while some are missing (the caller's grace period applies)."""
    names = _names(suite, cell)
    found = [
        observed.client_results.get(naming.client_result_name(*names, index, attempt))
        for index in range(clients)
    ]
    if any(part is None for part in found):
        return None
    parts = [part for part in found if part is not None]
    broken = next((part for part in parts if part.result is None), None)
    if broken is not None:
        return f"client result ConfigMap {broken.name} is malformed: {broken.error}"
    results = [part.result for part in parts if part.result is not None]
    # The lead scraped the server when it could, and said so when a scrape failed.
    expected = any(
        s.server is not None or any(f.code is FlagCode.NO_SERVER_TIMES for f in s.flags)
        for s in results[0].scenario_results()
    )
    try:
        merged = merge.merge_cells(results, metrics_expected=expected)
    except ValueError as error:  # MergeError, or a part without latency histograms
        return f"the {clients} client results do not merge: {error}"
    return manifests.build_merged_result(suite, uid, cell, merged)


def _benchmark_job(
    suite: api.BenchmarkSuite,
    uid: str,
    cell: plan.Cell,
    settings: OperatorSettings,
    server_node: str | None,
    backend: PodObservation | None = None,
    previous_attempts: int = 1,
) -> list[manifests.Manifest]:
    """The Job and, first, the identity it publishes its result with (and the barrier its
    client pods meet at, when there are several)."""
    namespace = suite.metadata.namespace or "default"
    ready_s = None
    if backend is not None and backend.created_at and backend.ready_at:
        # Pod created -> Ready: scheduling, model prep, start-up and warm-up (ready means warm).
        ready_s = max(0.0, _seconds(backend.ready_at, backend.created_at))
    attempt = previous_attempts
    job = manifests.build_bench_job(
        suite, uid, cell, settings, server_node=server_node, time_to_ready_s=ready_s,
        attempt=attempt,
    )  # fmt: skip
    barrier = []
    if plan.resolve_clients(suite.spec.scenarios) > 1:
        barrier = [manifests.build_barrier(suite, uid, cell, attempt)]
    return [*manifests.build_bench_rbac(namespace), *barrier, job]


def plan_cell(
    suite: api.BenchmarkSuite,
    uid: str,
    cell: plan.Cell,
    previous: api.CellStatus | None,
    observed: Observed,
    may_start: bool,
    now: datetime,
    settings: OperatorSettings,
) -> _CellDecision:
    names = _names(suite, cell)
    timeouts = suite.spec.timeouts
    base = api.CellStatus(backend=cell.backend.name, pool=cell.pool.name)
    if previous is not None:
        base = previous.model_copy()
    clients = plan.resolve_clients(suite.spec.scenarios)
    deployment = observed.deployments.get(naming.backend_name(*names))
    job = observed.jobs.get(naming.job_name(*names, base.attempts))
    result = observed.results.get(naming.result_name(*names))

    def decide(phase: api.CellPhase, message: str, **changes: object) -> _CellDecision:
        status = base.model_copy(update={"phase": phase, "message": message, **changes})
        decision = _CellDecision(status)
        if phase in TERMINAL:
            decision.deletes = _cleanup(suite, cell, phase, observed)
        return decision

    if previous is not None and previous.phase in TERMINAL:
        # Terminal is final: a restart or a late event never reopens a cell.
        return decide(previous.phase, previous.message)
    node = _backend_node(deployment) or base.node
    # A server that runs elsewhere (kind external) is benchmarked as it is: nothing to deploy.
    runs_elsewhere = plugin_for(cell.backend).remote_target(suite, pods.SECRETS_ROOT) is not None
    interrupted = backend_interrupted(deployment, base, job) if job is not None else ""
    if interrupted:
        decision = decide(
            api.CellPhase.FAILED, interrupted, node=base.node, failure=api.CellFailure.BACKEND_GONE
        )
        if job is not None and not job.succeeded and not job.failed_message:
            # Stop the load on the dead backend before the pool's next cell starts beside it.
            name = naming.job_name(*names)
            if ("Job", name) not in decision.deletes:
                decision.deletes.append(("Job", name))
        return decision
    if result is not None:
        if result.result is None:
            return decide(
                api.CellPhase.FAILED,
                f"result ConfigMap {result.name} is malformed: {result.error}",
                node=node,
                failure=api.CellFailure.RESULT_MALFORMED,
            )
        return decide(
            api.CellPhase.SUCCEEDED, "measured", node=node, result_ref=f"configmap/{result.name}"
        )
    if job is not None:
        if job.failed_message:
            why = "; ".join([job.failed_message, *job.failed_pods])
            if clients > 1 and base.attempts == 1:
                # A client pod failed: the run is void (its parts never merge); once more.
                decision = decide(
                    api.CellPhase.BENCHMARKING, f"run void ({why}); running it once more",
                    node=node, attempts=2,
                )  # fmt: skip
                decision.deletes += _void_run(names, clients, observed)
                return decision
            again = " (the second run; the first was void)" if base.attempts > 1 else ""
            return decide(
                api.CellPhase.FAILED, f"benchmark Job failed{again}: {why}", node=node,
                failure=api.CellFailure.BENCHMARK_FAILED,
            )  # fmt: skip
        # The node the benchmark started against (recorded then), not where a new pod went.
        left = backend_left_node(deployment, base.node)
        if left and not runs_elsewhere:
            return decide(
                api.CellPhase.FAILED, left, node=base.node, failure=api.CellFailure.BACKEND_GONE
            )
        if job.succeeded and clients > 1:
            merged = _merge_parts(suite, uid, cell, clients, base.attempts, observed)
            if isinstance(merged, str):
                return decide(
                    api.CellPhase.FAILED, merged, node=node,
                    failure=api.CellFailure.RESULT_MALFORMED,
                )  # fmt: skip
            if merged is not None:
                decision = decide(
                    api.CellPhase.BENCHMARKING, f"merging the results of {clients} clients",
                    node=node,
                )  # fmt: skip
                decision.creates.append(merged)
                return decision
        if job.succeeded:
            finished = job.finished_at or job.created_at
            if _seconds(now, finished) > settings.result_grace_s:
                return decide(
                    api.CellPhase.FAILED,
                    f"benchmark Job {job.name} finished but published no result "
                    f"within {settings.result_grace_s:.0f} s",
                    node=node,
                    failure=api.CellFailure.NO_RESULT,
                )
            return decide(api.CellPhase.BENCHMARKING, "waiting for the result", node=node)
        if _seconds(now, job.created_at) > timeouts.run_seconds + settings.result_grace_s:
            return decide(
                api.CellPhase.FAILED,
                f"benchmark did not finish within runSeconds={timeouts.run_seconds}",
                node=node,
                failure=api.CellFailure.TIMED_OUT,
            )
        return decide(api.CellPhase.BENCHMARKING, f"benchmark Job {job.name} running", node=node)
    if runs_elsewhere:
        # The benchmark starts when its turn comes.
        if not may_start:
            return decide(api.CellPhase.PENDING, f"waiting for pool '{cell.pool.name}' to be free")
        decision = decide(api.CellPhase.BENCHMARKING, "benchmarking the external endpoint")
        decision.creates += _benchmark_job(
            suite, uid, cell, settings, server_node=None, previous_attempts=base.attempts
        )
        return decision
    if deployment is not None:
        ready_pods = [p for p in deployment.pods if p.ready]
        if deployment.ready_replicas > 0 and ready_pods:
            measured = ready_pods[0]
            decision = decide(
                api.CellPhase.BENCHMARKING, f"backend ready on {node}; benchmark started",
                node=node, backend_pod=measured.name, backend_restarts=measured.restarts,
            )  # fmt: skip
            decision.creates += _benchmark_job(
                suite, uid, cell, settings, server_node=node, backend=measured,
                previous_attempts=base.attempts,
            )  # fmt: skip
            return decision
        waited = _seconds(now, deployment.created_at)
        reason = explain_not_ready(deployment, cell.pool)
        if waited > timeouts.ready_seconds:
            return decide(
                api.CellPhase.FAILED,
                f"backend not ready after readySeconds={timeouts.ready_seconds}: {reason}",
                node=node,
                failure=api.CellFailure.BACKEND_NOT_READY,
            )
        return decide(api.CellPhase.DEPLOYING, reason, node=node)
    if not may_start:
        return decide(api.CellPhase.PENDING, f"waiting for pool '{cell.pool.name}' to be free")
    decision = decide(api.CellPhase.DEPLOYING, f"deploying the backend on pool '{cell.pool.name}'")
    decision.creates += [
        manifests.build_backend_deployment(suite, uid, cell, settings),
        manifests.build_backend_service(suite, uid, cell, settings),
    ]
    policy = manifests.build_backend_network_policy(suite, uid, cell, settings)
    if settings.network_policies and policy is not None:
        decision.creates.append(policy)
    return decision


def _condition(
    previous: Sequence[api.Condition],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> api.Condition:
    """metav1.Condition semantics: lastTransitionTime moves only when status changes."""
    old = next((c for c in previous if c.type == type_), None)
    moved = old is None or old.status != status
    return api.Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if moved or old is None else old.last_transition_time,
        observed_generation=generation,
    )


def _later(a: api.SuitePhase, b: api.SuitePhase) -> api.SuitePhase:
    return a if PHASE_ORDER.index(a) >= PHASE_ORDER.index(b) else b


def _results(
    observed: Observed, suite: api.BenchmarkSuite, statuses: Sequence[api.CellStatus]
) -> list[CellResult]:
    """The results of the cells that succeeded: a failed cell's result may still arrive
    (its Job outlived the failure, e.g. a backend that left its node) and must not count."""
    succeeded = {(s.backend, s.pool) for s in statuses if s.phase is api.CellPhase.SUCCEEDED}
    found = []
    for cell in plan.plan_cells(suite.spec):
        if (cell.backend.name, cell.pool.name) not in succeeded:
            continue
        observation = observed.results.get(naming.result_name(*_names(suite, cell)))
        if observation is not None and observation.result is not None:
            found.append(observation.result)
    return found


def plan_suite(
    suite: api.BenchmarkSuite,
    uid: str,
    observed: Observed,
    now: datetime,
    settings: OperatorSettings,
) -> Plan:
    """One reconcile step for a valid suite (validation happens before, in the handler)."""
    previous = suite.status or api.SuiteStatus()
    generation = suite.metadata.generation
    previous_cells = {(c.backend, c.pool): c for c in previous.cells}
    cells = plan.plan_cells(suite.spec)
    out = Plan()
    busy_pools: set[str] = set()
    decisions: list[_CellDecision] = []
    for cell in cells:
        before = previous_cells.get((cell.backend.name, cell.pool.name))
        decision = plan_cell(
            suite, uid, cell, before, observed, cell.pool.name not in busy_pools, now, settings
        )
        if decision.status.phase in (api.CellPhase.DEPLOYING, api.CellPhase.BENCHMARKING):
            busy_pools.add(cell.pool.name)
        decisions.append(decision)
        out.creates += decision.creates
        out.deletes += decision.deletes
        old_phase = before.phase if before else None
        if decision.status.phase != old_phase:
            out.events.append(_cell_event(decision.status))
    statuses = [d.status for d in decisions]
    done = [s for s in statuses if s.phase in TERMINAL]
    failed = [s for s in statuses if s.phase is api.CellPhase.FAILED]
    phase = _later(previous.phase, _running_phase(statuses))
    summary = previous.summary
    winner = previous.winner
    if len(done) == len(statuses):
        if PHASE_ORDER.index(previous.phase) < PHASE_ORDER.index(api.SuitePhase.ANALYZING):
            phase = api.SuitePhase.ANALYZING  # shown for one step; the next step concludes
            out.events.append(Event("Normal", "Analyzing", "all cells finished; analyzing"))
        elif previous.phase is api.SuitePhase.ANALYZING:
            failures = [(s.backend, s.pool, s.message) for s in failed]
            verdict = analysis.analyze(suite, _results(observed, suite, statuses), failures)
            summary = verdict.summary()
            latency = verdict.winners.get("latency")
            winner = f"{latency.backend}/{latency.pool}" if latency else ""
            if "latency" in verdict.ties:
                winner = "no clear winner"
            phase = api.SuitePhase.FAILED if failed else api.SuitePhase.SUCCEEDED
            out.events.append(_final_event(phase, verdict, failed))
    conditions = _conditions(previous.conditions, statuses, summary, now, generation, suite)
    out.status = api.SuiteStatus(
        phase=phase,
        observed_generation=generation,
        progress=f"{len(done)}/{len(statuses)}",
        winner=winner,
        conditions=conditions,
        cells=statuses,
        summary=summary,
    )
    out.requeue = phase not in (api.SuitePhase.SUCCEEDED, api.SuitePhase.FAILED) or bool(
        out.deletes
    )
    return out


def _running_phase(statuses: Sequence[api.CellStatus]) -> api.SuitePhase:
    phases = {s.phase for s in statuses}
    if phases & {api.CellPhase.BENCHMARKING, *TERMINAL}:
        return api.SuitePhase.BENCHMARKING
    if api.CellPhase.DEPLOYING in phases:
        return api.SuitePhase.DEPLOYING
    return api.SuitePhase.PENDING


def _cell_event(status: api.CellStatus) -> Event:
    kind: Literal["Normal", "Warning"] = (
        "Warning" if status.phase is api.CellPhase.FAILED else "Normal"
    )
    return Event(
        kind,
        f"Cell{status.phase.value}",
        f"{status.backend}/{status.pool}: {status.message}",
    )


def _final_event(
    phase: api.SuitePhase, verdict: analysis.Verdict, failed: Sequence[api.CellStatus]
) -> Event:
    latency = verdict.winners.get("latency")
    won = f"latency winner {latency.backend}/{latency.pool}" if latency else "no winner"
    if "latency" in verdict.ties:
        won = f"latency: no clear winner between {', '.join(verdict.ties['latency'].candidates)}"
    if phase is api.SuitePhase.SUCCEEDED:
        return Event("Normal", "Succeeded", f"all cells measured; {won}")
    names = ", ".join(f"{s.backend}/{s.pool}" for s in failed)
    return Event("Warning", "Failed", f"{len(failed)} cell(s) failed ({names}); {won}")


def _conditions(
    previous: Sequence[api.Condition],
    statuses: Sequence[api.CellStatus],
    summary: api.Summary | None,
    now: datetime,
    generation: int | None,
    suite: api.BenchmarkSuite,
) -> list[api.Condition]:
    total = len(statuses)
    failed = [s for s in statuses if s.phase is api.CellPhase.FAILED]
    past_ready = [
        s for s in statuses if s.phase in (api.CellPhase.BENCHMARKING, api.CellPhase.SUCCEEDED)
    ]
    never_ready = [s for s in failed if s.failure is api.CellFailure.BACKEND_NOT_READY]
    if never_ready:
        ready = (
            "False",
            "BackendNotReady",
            "; ".join(f"{s.backend}/{s.pool}: {s.message}" for s in never_ready),
        )
    elif len(past_ready) + len(failed) == total:
        ready = ("True", "AllReady", f"{len(past_ready)}/{total} backends became ready and warm")
    else:
        ready = ("False", "Waiting", f"{len(past_ready)}/{total} backends ready and warm")
    with_results = [s for s in statuses if s.result_ref]
    if len(with_results) == total:
        complete = ("True", "AllMeasured", f"{total}/{total} cells have results")
    elif len(with_results) + len(failed) == total:
        complete = (
            "False",
            "CellsFailed",
            "; ".join(f"{s.backend}/{s.pool}: {s.message}" for s in failed),
        )
    else:
        complete = ("False", "Running", f"{len(with_results)}/{total} cells have results")
    conditions = [
        _condition(previous, "Validated", "True", "Valid", "spec is valid", now, generation),
        _condition(previous, "BackendsReady", *ready, now, generation),  # type: ignore[arg-type]
        _condition(previous, "ResultsComplete", *complete, now, generation),  # type: ignore[arg-type]
    ]
    if summary is not None:
        parity = _parity_condition(summary, suite)
        conditions.append(_condition(previous, "ParityPassed", *parity, now, generation))  # type: ignore[arg-type]
    return conditions


def _parity_condition(summary: api.Summary, suite: api.BenchmarkSuite) -> tuple[str, str, str]:
    differ = [e for e in summary.excluded if "parity failed" in e]
    if differ:
        return ("False", "OutputsDiffer", "; ".join(differ))
    reference = plan.parity_reference(suite.spec)
    return ("True", "OutputsAgree", f"every measured backend agrees with '{reference}'")


def invalid_status(
    suite_generation: int | None,
    previous: api.SuiteStatus | None,
    problems: Sequence[str],
    now: datetime,
) -> api.SuiteStatus:
    """Status of a suite that failed validation: Failed, Validated=False with every problem."""
    old = previous.conditions if previous else []
    return api.SuiteStatus(
        phase=api.SuitePhase.FAILED,
        observed_generation=suite_generation,
        progress="0/0",
        conditions=[
            _condition(
                old, "Validated", "False", "InvalidSpec", "; ".join(problems), now, suite_generation
            )
        ],
    )
