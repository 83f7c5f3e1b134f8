"""The reconcile planner as a table: suite + observed children + previous status in, plan out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import bench_factories
import numpy as np
import pytest
from result_factories import cell as result_for

from bakeoff import api, naming, reconcile, validation
from bakeoff.reconcile import (
    DeploymentObservation,
    JobObservation,
    Observed,
    PodObservation,
    ResultObservation,
)
from bakeoff.settings import OperatorSettings
from bakeoff_bench import stats as bench_stats
from bakeoff_bench.results import CellResult, ClientShareResult

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
UID = "0b6c4e1a-0000-4000-8000-000000000001"
SETTINGS = OperatorSettings(result_grace_s=30)
STUDY = validation.load_suite(Path(__file__).parents[2] / "examples" / "rtx4080-vs-a100.yaml")


def suite(status: api.SuiteStatus | None = None, **spec_changes: object) -> api.BenchmarkSuite:
    spec = STUDY.spec.model_copy(update=spec_changes)
    meta = STUDY.metadata.model_copy(update={"namespace": "bench", "generation": 1})
    return STUDY.model_copy(update={"spec": spec, "status": status, "metadata": meta})


def names(backend: str, pool: str) -> tuple[str, str, str]:
    return ("clip-vitb32", backend, pool)


def ready_deployment(backend: str, pool: str, node: str = "a100-0") -> DeploymentObservation:
    name = naming.backend_name(*names(backend, pool))
    pod = PodObservation(name=f"{name}-x", node=node, phase="Running", ready=True)
    return DeploymentObservation(name, T0, ready_replicas=1, pods=(pod,))


def pending_deployment(backend: str, pool: str, message: str) -> DeploymentObservation:
    name = naming.backend_name(*names(backend, pool))
    pod = PodObservation(
        name=f"{name}-x", node=None, phase="Pending", ready=False, unschedulable=message
    )
    return DeploymentObservation(name, T0, ready_replicas=0, pods=(pod,))


def running_job(backend: str, pool: str, **changes: object) -> JobObservation:
    return JobObservation(naming.job_name(*names(backend, pool)), T0, **changes)  # type: ignore[arg-type]


def result(backend: str, pool: str, ok: bool = True) -> ResultObservation:
    name = naming.result_name(*names(backend, pool))
    if not ok:
        return ResultObservation(name, None, "Expecting value: line 1 column 1 (char 0)")
    # Clearly apart (the verdict names winners only where the numbers separate).
    p50 = {"pytorch": 10.0, "triton-onnx-cuda": 20.0, "triton-onnx-trt": 30.0}.get(backend, 10.0)
    p50 *= 1.5 if pool == "a100" else 1.0
    found = result_for(backend, pool, p50=p50, best=2000 / p50, memory=int(p50 * 2**20))
    return ResultObservation(name, found)


def status_with(*cells: tuple[str, str, api.CellPhase], phase: api.SuitePhase) -> api.SuiteStatus:
    return api.SuiteStatus(
        phase=phase,
        cells=[
            api.CellStatus(
                backend=b,
                pool=p,
                phase=ph,
                result_ref=f"configmap/{naming.result_name(*names(b, p))}"
                if ph is api.CellPhase.SUCCEEDED
                else None,
            )
            for b, p, ph in cells
        ],
    )


def kinds(plan: reconcile.Plan) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in plan.creates]


def cell_phase(plan: reconcile.Plan, backend: str, pool: str) -> api.CellPhase:
    return next(c.phase for c in plan.status.cells if (c.backend, c.pool) == (backend, pool))


def test_new_suite_deploys_the_first_backend_of_each_pool_only() -> None:
    plan = reconcile.plan_suite(suite(), UID, Observed(), T0, SETTINGS)
    assert kinds(plan) == [
        ("Deployment", "clip-vitb32-pytorch-rtx4080"),
        ("Service", "clip-vitb32-pytorch-rtx4080"),
        ("NetworkPolicy", "clip-vitb32-pytorch-rtx4080"),
        ("Deployment", "clip-vitb32-pytorch-a100"),
        ("Service", "clip-vitb32-pytorch-a100"),
        ("NetworkPolicy", "clip-vitb32-pytorch-a100"),
    ]
    assert cell_phase(plan, "triton-onnx-cuda", "a100") is api.CellPhase.PENDING
    assert plan.status.phase is api.SuitePhase.DEPLOYING
    assert plan.status.progress == "0/6"
    assert all(m["metadata"]["ownerReferences"][0]["uid"] == UID for m in plan.creates)


def test_ready_backend_gets_its_benchmark_job() -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")}
    )
    plan = reconcile.plan_suite(suite(), UID, observed, T0, SETTINGS)
    assert ("Job", "clip-vitb32-pytorch-a100-bench") in kinds(plan)
    assert cell_phase(plan, "pytorch", "a100") is api.CellPhase.BENCHMARKING
    assert plan.status.phase is api.SuitePhase.BENCHMARKING
    benchmarking = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    assert benchmarking.node == "a100-0"


def test_replanning_the_same_state_creates_no_twin_job() -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")},
        jobs={"clip-vitb32-pytorch-a100-bench": running_job("pytorch", "a100")},
    )
    # previous status lost (operator killed before its status patch): same answer.
    for previous in (
        None,
        status_with(
            ("pytorch", "a100", api.CellPhase.BENCHMARKING), phase=api.SuitePhase.BENCHMARKING
        ),
    ):
        plan = reconcile.plan_suite(suite(previous), UID, observed, T0, SETTINGS)
        assert not [k for k in kinds(plan) if k[0] == "Job"]
        assert cell_phase(plan, "pytorch", "a100") is api.CellPhase.BENCHMARKING


def test_result_finishes_the_cell_cleans_it_up_and_frees_the_pool() -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")},
        services=frozenset({"clip-vitb32-pytorch-a100"}),
        jobs={"clip-vitb32-pytorch-a100-bench": running_job("pytorch", "a100", succeeded=True)},
        results={"clip-vitb32-pytorch-a100-result": result("pytorch", "a100")},
    )
    plan = reconcile.plan_suite(suite(), UID, observed, T0, SETTINGS)
    done = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    assert done.phase is api.CellPhase.SUCCEEDED
    assert done.result_ref == "configmap/clip-vitb32-pytorch-a100-result"
    assert set(plan.deletes) == {
        ("Deployment", "clip-vitb32-pytorch-a100"),
        ("Service", "clip-vitb32-pytorch-a100"),
        ("NetworkPolicy", "clip-vitb32-pytorch-a100"),
        ("Job", "clip-vitb32-pytorch-a100-bench"),
    }
    # the next backend of that pool starts in the same step
    assert ("Deployment", "clip-vitb32-triton-onnx-cuda-a100") in kinds(plan)
    assert plan.status.progress == "1/6"


@pytest.mark.parametrize(
    ("policy", "phase", "deleted"),
    [
        ("OnSuccess", api.CellPhase.SUCCEEDED, True),
        ("OnSuccess", api.CellPhase.FAILED, False),
        ("Always", api.CellPhase.FAILED, True),
        ("Never", api.CellPhase.SUCCEEDED, False),
    ],
    ids=["on-success-cleans-success", "on-success-keeps-failure", "always", "never"],
)
def test_cleanup_policy(policy: str, phase: api.CellPhase, deleted: bool) -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")},
        jobs={"clip-vitb32-pytorch-a100-bench": running_job("pytorch", "a100", succeeded=True)},
    )
    previous = status_with(("pytorch", "a100", phase), phase=api.SuitePhase.BENCHMARKING)
    spec_suite = suite(previous, cleanup=api.Cleanup(policy=api.CleanupPolicy(policy)))
    plan = reconcile.plan_suite(spec_suite, UID, observed, T0, SETTINGS)
    assert (("Deployment", "clip-vitb32-pytorch-a100") in plan.deletes) is deleted


def test_pool_with_no_matching_node_fails_after_the_ready_timeout_with_the_reason() -> None:
    message = "0/10 nodes are available: 10 node(s) didn't match Pod's node affinity/selector."
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": pending_deployment("pytorch", "a100", message)}
    )
    waiting = reconcile.plan_suite(suite(), UID, observed, T0 + timedelta(seconds=60), SETTINGS)
    assert cell_phase(waiting, "pytorch", "a100") is api.CellPhase.DEPLOYING
    late = T0 + timedelta(seconds=STUDY.spec.timeouts.ready_seconds + 1)
    plan = reconcile.plan_suite(suite(), UID, observed, late, SETTINGS)
    failed = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    assert failed.phase is api.CellPhase.FAILED
    assert failed.failure is api.CellFailure.BACKEND_NOT_READY
    assert failed.message == (
        "backend not ready after readySeconds=900: no node of pool 'a100' can take the "
        f"backend: {message}"
    )
    ready = next(c for c in plan.status.conditions if c.type == "BackendsReady")
    assert (ready.status, ready.reason) == ("False", "BackendNotReady")
    # the rtx4080 pool is untouched and the next a100 backend starts
    assert ("Deployment", "clip-vitb32-triton-onnx-cuda-a100") in kinds(plan)


def test_crash_looping_backend_is_named_in_the_message() -> None:
    name = naming.backend_name(*names("pytorch", "a100"))
    pod = PodObservation(
        f"{name}-x", "a100-0", "Running", False, waiting_reason="CrashLoopBackOff", restarts=4
    )
    observed = Observed(deployments={name: DeploymentObservation(name, T0, 0, (pod,))})
    plan = reconcile.plan_suite(suite(), UID, observed, T0, SETTINGS)
    cell = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    assert cell.message == "backend container is CrashLoopBackOff (4 restarts)"


@pytest.mark.parametrize(
    ("job", "result_obs", "now", "message"),
    [
        (
            dict(
                failed_message="BackoffLimitExceeded: Job has reached the specified backoff limit"
            ),
            None,
            T0,
            "benchmark Job failed: BackoffLimitExceeded",
        ),
        (
            dict(succeeded=True, finished_at=T0),
            None,
            T0 + timedelta(seconds=31),
            "finished but published no result within 30 s",
        ),
        ({}, False, T0, "is malformed: Expecting value"),
        ({}, None, T0 + timedelta(seconds=3600 + 31), "did not finish within runSeconds=3600"),
    ],
    ids=["job-failed", "no-result-after-grace", "malformed-result", "run-timeout"],
)
def test_benchmark_failures_end_the_cell_with_the_reason(
    job: dict[str, object], result_obs: bool | None, now: datetime, message: str
) -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")},
        jobs={"clip-vitb32-pytorch-a100-bench": running_job("pytorch", "a100", **job)},
        results=(
            {}
            if result_obs is None
            else {"clip-vitb32-pytorch-a100-result": result("pytorch", "a100", ok=result_obs)}
        ),
    )
    plan = reconcile.plan_suite(suite(), UID, observed, now, SETTINGS)
    cell = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    assert cell.phase is api.CellPhase.FAILED
    assert message in cell.message
    assert any(e.type == "Warning" and e.reason == "CellFailed" for e in plan.events)


def benchmarking_on(node: str) -> api.SuiteStatus:
    """The pytorch/a100 cell benchmarking a backend the status recorded on `node`."""
    previous = status_with(
        ("pytorch", "a100", api.CellPhase.BENCHMARKING), phase=api.SuitePhase.BENCHMARKING
    )
    previous.cells[0] = previous.cells[0].model_copy(update={"node": node})
    return previous


def backend_pods(*pods: tuple[str, str]) -> DeploymentObservation:
    name = naming.backend_name(*names("pytorch", "a100"))
    observed = tuple(
        PodObservation(f"{name}-{i}", node, phase, ready=phase == "Running")
        for i, (node, phase) in enumerate(pods)
    )
    return DeploymentObservation(name, T0, ready_replicas=1, pods=observed)


@pytest.mark.parametrize(
    ("pods", "message"),
    [
        ((("a100-0", "Running"),), ""),
        ((("a100-0", "Running"), ("a100-1", "Running")), ""),  # the old pod is still there
        (
            (("a100-1", "Running"),),
            "backend pod left node a100-0 during the benchmark (now on a100-1)",
        ),
        (
            (("a100-0", "Failed"),),
            "backend pod left node a100-0 during the benchmark (no backend pod",
        ),
        ((), "backend pod left node a100-0 during the benchmark (no backend pod on a node now)"),
    ],
    ids=["still-there", "old-and-new", "rescheduled", "failed-by-pod-gc", "gone"],
)
def test_a_backend_that_leaves_its_node_mid_benchmark_fails_the_cell(
    pods: tuple[tuple[str, str], ...], message: str
) -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": backend_pods(*pods)},
        jobs={"clip-vitb32-pytorch-a100-bench": running_job("pytorch", "a100", succeeded=True)},
    )
    plan = reconcile.plan_suite(suite(benchmarking_on("a100-0")), UID, observed, T0, SETTINGS)
    cell = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    if not message:
        assert cell.phase is api.CellPhase.BENCHMARKING, cell
        return
    assert cell.phase is api.CellPhase.FAILED
    assert cell.message.startswith(message), cell.message
    assert cell.message.endswith("the measurement is void")
    assert cell.node == "a100-0"  # where it was measured, not where the new pod went


def test_a_failed_cells_late_result_is_left_out_of_the_verdict() -> None:
    """A Job can outlive its cell's failure and still publish: that result must not win."""
    results = {naming.result_name(*names(b, p)): result(b, p) for b, p in ALL_CELLS}
    previous = status_with(
        *[
            (b, p, api.CellPhase.SUCCEEDED)
            for b, p in ALL_CELLS
            if (b, p) != ("pytorch", "rtx4080")
        ],
        ("pytorch", "rtx4080", api.CellPhase.FAILED),
        phase=api.SuitePhase.ANALYZING,
    )
    plan = reconcile.plan_suite(suite(previous), UID, Observed(results=results), T0, SETTINGS)
    assert plan.status.phase is api.SuitePhase.FAILED
    assert plan.status.summary is not None
    assert "pytorch/rtx4080" not in plan.status.summary.cost_per_1k
    assert plan.status.winner != "pytorch/rtx4080"  # it wins when counted (see above)


def test_job_succeeded_within_grace_waits_for_the_result() -> None:
    observed = Observed(
        jobs={
            "clip-vitb32-pytorch-a100-bench": running_job(
                "pytorch", "a100", succeeded=True, finished_at=T0
            )
        }
    )
    plan = reconcile.plan_suite(suite(), UID, observed, T0 + timedelta(seconds=5), SETTINGS)
    assert cell_phase(plan, "pytorch", "a100") is api.CellPhase.BENCHMARKING


def test_a_finished_cell_never_reopens() -> None:
    previous = status_with(
        ("pytorch", "a100", api.CellPhase.FAILED), phase=api.SuitePhase.BENCHMARKING
    )
    observed = Observed(results={"clip-vitb32-pytorch-a100-result": result("pytorch", "a100")})
    plan = reconcile.plan_suite(suite(previous), UID, observed, T0, SETTINGS)
    assert cell_phase(plan, "pytorch", "a100") is api.CellPhase.FAILED


def test_phase_never_goes_back() -> None:
    previous = api.SuiteStatus(phase=api.SuitePhase.BENCHMARKING)
    plan = reconcile.plan_suite(suite(previous), UID, Observed(), T0, SETTINGS)
    assert plan.status.phase is api.SuitePhase.BENCHMARKING


ALL_CELLS = [(b.name, p.name) for p in STUDY.spec.node_pools for b in STUDY.spec.backends]


def test_all_cells_done_analyzes_then_concludes_with_summary_and_winner() -> None:
    results = {naming.result_name(*names(b, p)): result(b, p) for b, p in ALL_CELLS}
    observed = Observed(results=results)
    first = reconcile.plan_suite(suite(), UID, observed, T0, SETTINGS)
    assert first.status.phase is api.SuitePhase.ANALYZING
    assert first.status.progress == "6/6"
    second = reconcile.plan_suite(suite(first.status), UID, observed, T0, SETTINGS)
    assert second.status.phase is api.SuitePhase.SUCCEEDED
    assert second.status.summary is not None
    assert set(second.status.summary.winners) == {"latency", "throughput", "cost", "memory"}
    assert set(second.status.summary.cost_per_1k) == {f"{b}/{p}" for b, p in ALL_CELLS}
    assert second.status.winner == "pytorch/rtx4080"
    types = {c.type: c.status for c in second.status.conditions}
    assert types == {
        "Validated": "True",
        "BackendsReady": "True",
        "ResultsComplete": "True",
        "ParityPassed": "True",
    }
    assert second.requeue is False
    assert any(e.reason == "Succeeded" for e in second.events)


def test_suite_with_a_failed_cell_ends_failed_but_keeps_the_verdict_of_the_rest() -> None:
    results = {
        naming.result_name(*names(b, p)): result(b, p)
        for b, p in ALL_CELLS
        if (b, p) != ("triton-onnx-trt", "a100")
    }
    previous = status_with(
        ("triton-onnx-trt", "a100", api.CellPhase.FAILED), phase=api.SuitePhase.ANALYZING
    )
    plan = reconcile.plan_suite(suite(previous), UID, Observed(results=results), T0, SETTINGS)
    assert plan.status.phase is api.SuitePhase.FAILED
    assert plan.status.summary is not None and plan.status.summary.winners
    complete = next(c for c in plan.status.conditions if c.type == "ResultsComplete")
    assert (complete.status, complete.reason) == ("False", "CellsFailed")


def test_condition_transition_time_moves_only_on_change() -> None:
    first = reconcile.plan_suite(suite(), UID, Observed(), T0, SETTINGS)
    later = reconcile.plan_suite(suite(first.status), UID, Observed(), T0 + timedelta(60), SETTINGS)
    validated = next(c for c in later.status.conditions if c.type == "Validated")
    assert validated.last_transition_time == T0


def test_an_external_backend_is_benchmarked_without_deploying_anything() -> None:
    external = api.ExternalBackend(
        name="prod-triton", kind=api.BackendKind.EXTERNAL, pools=["a100"],
        endpoint=api.Endpoint(http_url="http://triton.ml:8000",
                              metrics_url="http://triton.ml:8002/metrics"),
    )  # fmt: skip
    spec_suite = suite(backends=[external], parity=api.Parity())
    plan = reconcile.plan_suite(spec_suite, UID, Observed(), T0, SETTINGS)
    assert [k for k in kinds(plan) if k[0] in ("Deployment", "Service")] == []
    assert ("Job", "clip-vitb32-prod-triton-a100-bench") in kinds(plan)
    assert [(c.backend, c.pool) for c in plan.status.cells] == [("prod-triton", "a100")]
    job = next(m for m in plan.creates if m["kind"] == "Job")
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert '"httpUrl":"http://triton.ml:8000"' in env["BAKEOFF_BENCH_CONFIG"]
    assert "BAKEOFF_SERVER_NODE" not in env


def test_the_job_of_a_deployed_backend_knows_the_backend_node_and_images() -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")}
    )
    plan = reconcile.plan_suite(suite(), UID, observed, T0, SETTINGS)
    job = next(m for m in plan.creates if m["kind"] == "Job")
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BAKEOFF_SERVER_NODE"] == "a100-0"
    assert env["BAKEOFF_IMAGE_SERVER"] == SETTINGS.pytorch_image
    assert env["BAKEOFF_IMAGE_BENCH"] == SETTINGS.bench_image
    assert "BAKEOFF_TIME_TO_READY_S" not in env  # the pod's times are not known here


def test_the_job_reports_how_long_the_backend_pod_took_to_be_ready() -> None:
    name = naming.backend_name(*names("pytorch", "a100"))
    pod = PodObservation(
        f"{name}-x", "a100-0", "Running", ready=True, created_at=T0,
        ready_at=T0 + timedelta(seconds=42.26),
    )  # fmt: skip
    deployment = DeploymentObservation(name, T0, ready_replicas=1, pods=(pod,))
    plan = reconcile.plan_suite(
        suite(), UID, Observed(deployments={name: deployment}), T0, SETTINGS
    )
    job = next(m for m in plan.creates if m["kind"] == "Job")
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BAKEOFF_TIME_TO_READY_S"] == "42.3"


POD = naming.backend_name(*names("pytorch", "a100")) + "-0"
T_RESTART = T0 + timedelta(seconds=30)


def measured_pod(restarts: int, pod: str = POD) -> api.SuiteStatus:
    """The pytorch/a100 cell benchmarking `pod`, which had `restarts` when the run began."""
    previous = benchmarking_on("a100-0")
    previous.cells[0] = previous.cells[0].model_copy(
        update={"backend_pod": pod, "backend_restarts": restarts}
    )
    return previous


def pod_now(
    restarts: int, terminated: datetime | None = None, name: str = POD, created: datetime = T0
) -> DeploymentObservation:
    pod = PodObservation(
        name, "a100-0", "Running", ready=True, restarts=restarts, created_at=created,
        last_terminated_at=terminated,
    )  # fmt: skip
    return DeploymentObservation(POD[:-2], T0, ready_replicas=1, pods=(pod,))


@pytest.mark.parametrize(
    ("previous", "deployment", "job", "message"),
    [
        (measured_pod(0), pod_now(0), {}, ""),
        # A restart before the run (a crash loop that recovered) is in the recorded count.
        (measured_pod(2), pod_now(2, T0 - timedelta(minutes=1)), {}, ""),
        (
            measured_pod(0),
            pod_now(1, T_RESTART),
            {},
            f"backend pod {POD} restarted during the benchmark (container restarts 0 -> 1)",
        ),
        # The result arrived first, and then the container died: the run was whole.
        (
            measured_pod(0),
            pod_now(1, T0 + timedelta(seconds=355)),
            {"succeeded": True, "finished_at": T0 + timedelta(seconds=350)},
            "",
        ),
        (
            measured_pod(0),
            pod_now(0, name=POD[:-1] + "9", created=T_RESTART),
            {},
            f"backend pod {POD} was deleted during the benchmark (now {POD[:-1]}9)",
        ),
        # Benchmarks started by an operator that did not record the pod: nothing to compare.
        (benchmarking_on("a100-0"), pod_now(3, T_RESTART), {}, ""),
    ],
    ids=["same", "restarted-before", "restarted-during", "restarted-after", "replaced", "legacy"],
)
def test_a_backend_restarted_or_replaced_mid_benchmark_voids_the_cell_and_stops_its_job(
    previous: api.SuiteStatus,
    deployment: DeploymentObservation,
    job: dict[str, object],
    message: str,
) -> None:
    job_name = "clip-vitb32-pytorch-a100-bench"
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": deployment},
        jobs={job_name: running_job("pytorch", "a100", **job)},
    )
    now = T0 + timedelta(minutes=6)
    plan = reconcile.plan_suite(suite(previous), UID, observed, now, SETTINGS)
    cell = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    if not message:
        assert cell.phase is api.CellPhase.BENCHMARKING, cell
        assert ("Job", job_name) not in plan.deletes
        return
    assert cell.phase is api.CellPhase.FAILED
    assert cell.message.startswith(message), cell.message
    assert cell.message.endswith("the measurement is void")
    # The load stops before the pool's next cell deploys beside the dead backend.
    assert ("Job", job_name) in plan.deletes


def test_the_benchmark_records_the_pod_it_measures_and_its_restarts() -> None:
    name = naming.backend_name(*names("pytorch", "a100"))
    pod = PodObservation(f"{name}-x", "a100-0", "Running", ready=True, restarts=3)
    deployment = DeploymentObservation(name, T0, ready_replicas=1, pods=(pod,))
    plan = reconcile.plan_suite(
        suite(), UID, Observed(deployments={name: deployment}), T0, SETTINGS
    )
    cell = next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")
    assert (cell.backend_pod, cell.backend_restarts) == (f"{name}-x", 3)


# --- several client pods (scenarios.clients) ------------------------------------------------


def three_clients() -> api.BenchmarkSuite:
    scenarios = STUDY.spec.scenarios.model_copy(
        update={"clients": 3, "steady_state": None, "rate": None}
    )
    return suite(scenarios=scenarios)


def client_part(index: int, attempt: int = 1) -> ResultObservation:
    """Client `index`'s published part: its share of one concurrency scenario."""
    samples = np.random.default_rng(index).normal(0.010, 0.001, 100).clip(0.001)
    share = bench_factories.closed(
        "concurrency", 1, 8, latency=bench_stats.summarize_latencies(samples), count=100,
        clients=[ClientShareResult(index=index, concurrency=3, requests=100,
                                   requests_per_s=100.0, p50_ms=10.0, p99_ms=12.0)],
    )  # fmt: skip
    part = result_for("pytorch", "a100").model_copy(
        update={"single": None, "batch_sweep": [], "concurrency_sweep": [share]}
    )
    name = naming.client_result_name(*names("pytorch", "a100"), index, attempt)
    return ResultObservation(name, part)


def several(plan: reconcile.Plan) -> api.CellStatus:
    return next(c for c in plan.status.cells if c.backend == "pytorch" and c.pool == "a100")


def test_several_clients_get_an_indexed_job_and_its_barrier() -> None:
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")}
    )
    plan = reconcile.plan_suite(three_clients(), UID, observed, T0, SETTINGS)
    assert ("ConfigMap", "clip-vitb32-pytorch-a100-barrier") in kinds(plan)
    [job] = [m for m in plan.creates if m["kind"] == "Job"]
    assert {k: job["spec"][k] for k in ("completionMode", "completions", "parallelism")} == {
        "completionMode": "Indexed", "completions": 3, "parallelism": 3,
    }  # fmt: skip
    assert job["spec"]["backoffLimit"] == 0  # a replaced pod would miss the barriers passed
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BAKEOFF_BARRIER_CONFIGMAP"] == "clip-vitb32-pytorch-a100-barrier"
    assert env["BAKEOFF_RESULT_CONFIGMAP"] == "clip-vitb32-pytorch-a100-part"
    kinds_before_job = kinds(plan)[: kinds(plan).index(("Job", job["metadata"]["name"]))]
    assert ("ConfigMap", "clip-vitb32-pytorch-a100-barrier") in kinds_before_job


def test_the_parts_merge_into_the_cells_result_only_when_all_are_in() -> None:
    job = running_job("pytorch", "a100", succeeded=True, finished_at=T0)
    parts = {p.name: p for p in (client_part(0), client_part(1))}
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")},
        jobs={job.name: job}, client_results=parts,
    )  # fmt: skip
    plan = reconcile.plan_suite(three_clients(), UID, observed, T0, SETTINGS)
    assert several(plan).message == "waiting for the result"  # 2 of 3: partial never merges
    assert not [k for k in kinds(plan) if k[0] == "ConfigMap"]
    third = client_part(2)
    observed = Observed(
        deployments=observed.deployments, jobs=observed.jobs,
        client_results={**parts, third.name: third},
    )  # fmt: skip
    plan = reconcile.plan_suite(three_clients(), UID, observed, T0, SETTINGS)
    assert several(plan).message == "merging the results of 3 clients"
    [merged] = [m for m in plan.creates if m["kind"] == "ConfigMap"]
    assert merged["metadata"]["name"] == "clip-vitb32-pytorch-a100-result"
    assert merged["metadata"]["labels"][naming.LABEL_COMPONENT] == naming.COMPONENT_RESULT
    result = CellResult.model_validate_json(merged["data"]["result.json"])
    [scenario] = result.concurrency_sweep
    assert scenario.requests == 300 and [c.index for c in scenario.clients] == [0, 1, 2]


def test_a_failed_client_voids_the_run_once_then_fails_the_cell() -> None:
    failure = "pod clip-vitb32-pytorch-a100-bench-1-x (client 1) on a100-1: Error, exit code 137"
    job = running_job(
        "pytorch", "a100", failed_message="BackoffLimitExceeded: Job has reached the limit",
        failed_pods=(failure,),
    )  # fmt: skip
    part = client_part(0)
    observed = Observed(
        deployments={"clip-vitb32-pytorch-a100": ready_deployment("pytorch", "a100")},
        jobs={job.name: job}, client_results={part.name: part},
    )  # fmt: skip
    plan = reconcile.plan_suite(three_clients(), UID, observed, T0, SETTINGS)
    cell = several(plan)
    assert cell.phase is api.CellPhase.BENCHMARKING and cell.attempts == 2
    assert cell.message.startswith("run void (BackoffLimitExceeded") and failure in cell.message
    assert set(plan.deletes) >= {
        ("Job", "clip-vitb32-pytorch-a100-bench"),
        ("ConfigMap", "clip-vitb32-pytorch-a100-barrier"),
        ("ConfigMap", part.name),
    }
    # Next tick: the void Job is gone; the second run gets names of its own.
    status = plan.status
    observed = Observed(deployments=observed.deployments)
    plan = reconcile.plan_suite(three_clients().model_copy(update={"status": status}), UID,
                                observed, T0, SETTINGS)  # fmt: skip
    assert ("Job", "clip-vitb32-pytorch-a100-bench-2") in kinds(plan)
    assert ("ConfigMap", "clip-vitb32-pytorch-a100-barrier-2") in kinds(plan)
    # The second run fails too: the cell fails with the reason.
    again = JobObservation(
        "clip-vitb32-pytorch-a100-bench-2", T0, failed_message="BackoffLimitExceeded: limit",
        failed_pods=(failure,),
    )  # fmt: skip
    status = plan.status
    plan = reconcile.plan_suite(
        three_clients().model_copy(update={"status": status}), UID,
        Observed(deployments=observed.deployments, jobs={again.name: again}), T0, SETTINGS,
    )  # fmt: skip
    cell = several(plan)
    assert cell.phase is api.CellPhase.FAILED
    assert cell.message.startswith("benchmark Job failed (the second run; the first was void)")
