"""From API objects (as the API server returns them) to the planner's observations."""

from __future__ import annotations

from typing import Any

from result_factories import cell as result_for

from bakeoff import cluster_report, kube, naming

LABELS = naming.cell_labels("s", "pytorch", "a100", naming.COMPONENT_BACKEND)
BENCH_LABELS = naming.cell_labels("s", "pytorch", "a100", naming.COMPONENT_BENCH)
RESULT_LABELS = naming.cell_labels("s", "pytorch", "a100", naming.COMPONENT_RESULT)


def pod(name: str, labels: dict[str, str], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": status.pop("node", None)},
        "status": status,
    }


def test_unschedulable_pod_carries_the_scheduler_message() -> None:
    message = "0/10 nodes are available: 10 node(s) didn't match Pod's node affinity/selector."
    observed = kube.observe_pod(pod("p", LABELS, phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    ]))  # fmt: skip
    assert observed.unschedulable == message
    assert observed.ready is False and observed.node is None


def test_crash_looping_container_is_seen_with_its_restarts() -> None:
    observed = kube.observe_pod(pod("p", LABELS, node="n1", phase="Running",
        conditions=[{"type": "Ready", "status": "False"}],
        containerStatuses=[{"restartCount": 3,
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
    ))  # fmt: skip
    assert (observed.waiting_reason, observed.restarts, observed.node) == (
        "CrashLoopBackOff",
        3,
        "n1",
    )


def test_a_restarted_container_is_seen_with_when_it_last_died() -> None:
    observed = kube.observe_pod(pod("p", LABELS, node="n1", phase="Running",
        containerStatuses=[
            {"restartCount": 1, "state": {"running": {}},
             "lastState": {"terminated": {"exitCode": 137, "finishedAt": "2026-11-26T12:00:30Z"}}},
            {"restartCount": 0, "state": {"running": {}}},
        ],
    ))  # fmt: skip
    assert observed.restarts == 1
    assert observed.last_terminated_at is not None
    assert observed.last_terminated_at.isoformat() == "2026-11-26T12:00:30+00:00"


def test_children_are_grouped_by_cell_and_component() -> None:
    deployment = {
        "metadata": {"name": "s-pytorch-a100", "labels": LABELS,
                     "creationTimestamp": "2026-11-26T12:00:00Z"},
        "status": {"readyReplicas": 1},
    }  # fmt: skip
    job = {
        "metadata": {"name": "s-pytorch-a100-bench", "labels": BENCH_LABELS,
                     "creationTimestamp": "2026-11-26T12:01:00Z"},
        "status": {"completionTime": "2026-11-26T12:02:00Z",
                   "conditions": [{"type": "Complete", "status": "True"}]},
    }  # fmt: skip
    result = {
        "metadata": {"name": "s-pytorch-a100-result", "labels": RESULT_LABELS},
        "data": {naming.RESULT_KEY: result_for("pytorch", "a100").model_dump_json(by_alias=True)},
    }
    observed = kube.observe(
        [deployment],
        [pod("b", LABELS, node="gpu-a100-0", phase="Running",
             conditions=[{"type": "Ready", "status": "True"}]),
         pod("j", BENCH_LABELS, node="system-0", phase="Succeeded")],
        [{"metadata": {"name": "s-pytorch-a100"}}],
        [job],
        [result],
    )  # fmt: skip
    dep = observed.deployments["s-pytorch-a100"]
    assert dep.ready_replicas == 1 and [p.node for p in dep.pods] == ["gpu-a100-0"]
    assert observed.jobs["s-pytorch-a100-bench"].succeeded
    assert observed.jobs["s-pytorch-a100-bench"].nodes == ("system-0",)
    assert observed.services == frozenset({"s-pytorch-a100"})
    assert observed.results["s-pytorch-a100-result"].result is not None


def test_failed_job_reason_and_time() -> None:
    job = {
        "metadata": {"name": "j", "creationTimestamp": "2026-11-26T12:00:00Z"},
        "status": {"conditions": [{"type": "Failed", "status": "True",
                                   "reason": "BackoffLimitExceeded",
                                   "message": "Job has reached the specified backoff limit",
                                   "lastTransitionTime": "2026-11-26T12:05:00Z"}]},
    }  # fmt: skip
    observed = kube.observe_job(job, [])
    assert observed.failed_message == (
        "BackoffLimitExceeded: Job has reached the specified backoff limit"
    )
    assert observed.finished_at is not None and observed.finished_at.minute == 5


def test_malformed_result_says_where() -> None:
    bad = {"metadata": {"name": "r"}, "data": {naming.RESULT_KEY: '{"suite": "s"}'}}
    observed = kube.observe_result(bad)
    assert observed.result is None
    assert "problem(s), first at" in observed.error
    missing = kube.observe_result({"metadata": {"name": "r"}, "data": {}})
    assert missing.error == "no 'result.json' key"


def test_cluster_report_skips_malformed_results_and_names_them() -> None:
    good = {
        "metadata": {"name": "g"},
        "data": {naming.RESULT_KEY: result_for("pytorch", "a100").model_dump_json()},
    }
    bad = {"metadata": {"name": "b"}, "data": {naming.RESULT_KEY: "not json"}}
    results, problems = cluster_report.results_from_configmaps([good, bad])
    assert [r.backend for r in results] == ["pytorch"]
    assert problems and problems[0].startswith("b: ")
