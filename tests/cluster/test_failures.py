"""What goes wrong on a real cluster, and what the user is told: pools that cannot run a
backend fail their cells with the scheduler's or the kubelet's reason while the rest of the
suite completes. Invalid suites: test_invalid_suites.py.
"""

from __future__ import annotations

import pytest
from cluster_harness import (
    FINISHED,
    SUITES,
    JobDriver,
    NamespaceRecorder,
    Operator,
    apply_suite,
    conditions_by_type,
    wait_for_suite_phase,
)
from kubernetes import client as k8s

pytestmark = pytest.mark.cluster

FAILING = SUITES / "pools-that-fail.yaml"
READY_SECONDS = 20


def test_pool_without_nodes_and_backend_never_ready_fail_their_cells_while_others_complete(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator: Operator,
) -> None:
    name = apply_suite(namespace, FAILING)
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, 150)

    assert status["phase"] == "Failed", status
    assert status["progress"] == "6/6"
    cells = {(c["backend"], c["pool"]): c for c in status["cells"]}
    backends = ("pytorch", "triton-onnx-cuda")
    for backend in backends:
        ok = cells[(backend, "a100")]
        assert ok["phase"] == "Succeeded", ok
        assert ok["resultRef"].startswith("configmap/")

        unschedulable = cells[(backend, "b200")]
        assert unschedulable["phase"] == "Failed", unschedulable
        message = unschedulable["message"]
        assert f"backend not ready after readySeconds={READY_SECONDS}" in message
        assert "no node of pool 'b200'" in message
        # The scheduler's own words: no node matches the pool's nodeSelector.
        assert "didn't match Pod's node affinity/selector" in message, message
        assert unschedulable.get("node") is None

        crashing = cells[(backend, "l4-flaky")]
        assert crashing["phase"] == "Failed", crashing
        message = crashing["message"]
        assert f"backend not ready after readySeconds={READY_SECONDS}" in message
        assert "CrashLoopBackOff" in message, message
        assert crashing["node"].startswith("gpu-flaky-")

    ready = conditions_by_type(status)["BackendsReady"]
    assert ready["status"] == "False"
    assert ready["reason"] == "BackendNotReady"
    for backend in backends:
        assert f"{backend}/b200" in ready["message"]
        assert f"{backend}/l4-flaky" in ready["message"]
    assert conditions_by_type(status)["ResultsComplete"]["status"] == "False"

    summary = status["summary"]
    # The verdict stands on the a100 cells alone: a winner there, or a tie within noise (two
    # CPU-mock servers on a busy machine can be that close).
    latency = summary["winners"].get("latency")
    if latency is not None:
        assert latency["pool"] == "a100"
    else:
        tied = summary["ties"]["latency"]["candidates"]
        assert sorted(tied) == [f"{b}/a100" for b in sorted(backends)]
    assert set(summary["costPer1k"]) == {f"{b}/a100" for b in backends}
    assert len(job_driver.published) == 2  # Jobs ran for the A100 cells only
