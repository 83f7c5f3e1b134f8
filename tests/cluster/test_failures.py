"""What goes wrong on a real cluster, and what the user is told: pools that cannot run a
backend fail their cells with the scheduler's or the kubelet's reason while the rest of the
suite completes; invalid suites never get past the API server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from cluster_harness import (
    SUITES,
    JobDriver,
    NamespaceRecorder,
    Operator,
    apply_suite,
    conditions_by_type,
    kubectl,
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
    status = wait_for_suite_phase(custom, namespace, name, ("Succeeded", "Failed"), 150)

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
    assert summary["winners"]["latency"]["pool"] == "a100"
    assert set(summary["costPer1k"]) == {f"{b}/a100" for b in backends}
    assert len(job_driver.published) == 2  # Jobs ran for the A100 cells only


VALID_SUITE: dict[str, Any] = {
    "apiVersion": "bakeoff.dev/v1alpha1",
    "kind": "BenchmarkSuite",
    "metadata": {"name": "invalid"},
    "spec": {
        "model": {"name": "clip", "source": {"builtin": "vit-b32-clip"}},
        "backends": [
            {"name": "pytorch", "kind": "pytorch"},
            {"name": "triton", "kind": "triton-onnx", "executionProvider": "cuda"},
        ],
        "nodePools": [
            {
                "name": "a100",
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                "costPerHour": 0.85,
            }
        ],
    },
}


def _invalid(change: str) -> dict[str, Any]:
    """VALID_SUITE with one thing wrong."""
    suite = copy.deepcopy(VALID_SUITE)
    backends, pools = suite["spec"]["backends"], suite["spec"]["nodePools"]
    if change == "unknown-backend-kind":
        backends[1]["kind"] = "tf-serving"
    elif change == "negative-cost-per-hour":
        pools[0]["costPerHour"] = -1
    elif change == "duplicate-backend-names":  # a CEL rule
        backends[1]["name"] = "pytorch"
    elif change == "execution-provider-on-pytorch":  # a CEL rule
        backends[0]["executionProvider"] = "cuda"
    else:
        raise AssertionError(change)
    return suite


# (change, the field the API server must name, words of its message)
REJECTIONS = [
    ("unknown-backend-kind", "spec.backends[1].kind", 'Unsupported value: "tf-serving"'),
    ("negative-cost-per-hour", "spec.nodePools[0].costPerHour", "greater than or equal to 0"),
    ("duplicate-backend-names", "spec.backends", "names must be unique"),
    ("execution-provider-on-pytorch", "spec.backends[0].executionProvider", "triton-onnx only"),
]


@pytest.mark.parametrize(
    ("change", "field", "words"), [pytest.param(*r, id=r[0]) for r in REJECTIONS]
)
def test_invalid_suite_is_rejected_by_the_api_server_naming_the_field(
    namespace: str, change: str, field: str, words: str
) -> None:
    rejected = kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(_invalid(change)), check=False
    )
    assert rejected.returncode != 0, rejected.stdout
    assert 'The BenchmarkSuite "invalid" is invalid' in rejected.stderr, rejected.stderr
    assert f"{field}:" in rejected.stderr, rejected.stderr
    assert words in rejected.stderr, rejected.stderr
    listed = kubectl("get", "benchmarksuites", "-n", namespace, "-o", "name")
    assert listed.stdout.strip() == ""


def test_the_valid_base_of_the_invalid_suites_is_accepted(namespace: str) -> None:
    """Guards the table above: each rejection is caused by its one change."""
    accepted = kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-",
        stdin=yaml.safe_dump(VALID_SUITE), check=False,
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
