"""The operator survives faults (issue 7): its own process killed at each phase, the API server
restarted under it, and a cell's world breaking (a benchmark pod that fails, a node deleted, a
malformed result), each ending in a clear per-cell condition while the other cells complete.

The operator runs here as the chart's Deployment runs it, in a process of its own
(`OperatorProcess`), so "killed" is SIGKILL: nothing finishes, nothing is flushed. To kill it
at a chosen step, not whenever a poll happens to look, the API server holds the suite there: a
ValidatingAdmissionPolicy refuses the operator's next request (`admission_gate`), or the job
driver holds the results back.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import (
    CONTROL_PLANE,
    FAILING_BENCH_BACKEND,
    FINISHED,
    REPO,
    SUITES,
    JobDriver,
    NamespaceRecorder,
    OperatorProcess,
    admission_gate,
    conditions_by_type,
    kubectl,
    suite_status,
    wait_for,
    wait_for_suite_phase,
)
from kubernetes import client as k8s

from bakeoff import api, naming

pytestmark = pytest.mark.cluster

FAULTS = SUITES / "faults.yaml"
SUITE_TIMEOUT_S = 180
GATE_MESSAGE = "held by the fault test"


def spec_of(path: Path = FAULTS) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def cells_of(document: dict[str, Any]) -> list[tuple[str, str]]:
    spec = document["spec"]
    return [(b["name"], p["name"]) for p in spec["nodePools"] for b in spec["backends"]]


def apply_document(namespace: str, document: dict[str, Any]) -> str:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(document))
    name: str = document["metadata"]["name"]
    return name


def cells_by_key(status: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["backend"], c["pool"]): c for c in status.get("cells", [])}


def wait_for_status(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 90,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = suite_status(custom, namespace, name)
        return status if check(status) else None

    return wait_for(reached, timeout, what, lambda: suite_status(custom, namespace, name))


# ----- gates -----------------------------------------------------------------------------------


def hold_job_creation(namespace: str) -> AbstractContextManager[None]:
    """No Job can be created in the namespace: the operator stays at "backend deployed"."""
    return admission_gate(
        namespace,
        "hold-jobs",
        {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"],
         "resources": ["jobs"]},
        "false",
        GATE_MESSAGE,
        lambda: kubectl(
            "create", "job", "gate-probe", "-n", namespace, "--image=probe", "--dry-run=server",
            check=False,
        ),
    )  # fmt: skip


def hold_conclusion(namespace: str, suite: str) -> AbstractContextManager[None]:
    """The suite's status may not say Succeeded or Failed: the operator stays at Analyzing."""
    return admission_gate(
        namespace,
        "hold-verdict",
        {"apiGroups": [api.API_GROUP], "apiVersions": [api.API_VERSION],
         "operations": ["UPDATE"], "resources": ["benchmarksuites/status"]},
        "!has(object.status) || !has(object.status.phase) || "
        "!(object.status.phase in ['Succeeded', 'Failed'])",
        GATE_MESSAGE,
        lambda: kubectl(
            "patch", "benchmarksuite", suite, "-n", namespace, "--subresource=status",
            "--type=merge", "-p", '{"status":{"phase":"Succeeded"}}', "--dry-run=server",
            check=False,
        ),
    )  # fmt: skip


# ----- what every finished suite must show -----------------------------------------------------


def assert_no_twins_and_no_lost_results(
    core: k8s.CoreV1Api,
    status: dict[str, Any],
    namespace: str,
    name: str,
    measured: list[tuple[str, str]],
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
) -> None:
    """Exactly one Job (one uid) per measured cell over the whole run, and each cell's result
    is the very document the driver published for it."""
    jobs = recorder.bench_job_uids()
    assert {job: len(uids) for job, uids in jobs.items()} == {job: 1 for job in jobs}, jobs
    assert set(jobs) >= {naming.job_name(name, b, p) for b, p in measured}
    with recorder.changed:
        deployments = {d: len(u) for d, u in recorder.deployments.uids.items()}
    assert deployments == {d: 1 for d in deployments}, deployments
    published = {p.cell: p for p in job_driver.published.values()}
    by_cell = cells_by_key(status)
    for backend, pool in measured:
        cell = by_cell[(backend, pool)]
        assert cell["phase"] == "Succeeded", cell
        configmap = naming.result_name(name, backend, pool)
        assert cell["resultRef"] == f"configmap/{configmap}"
        stored = (core.read_namespaced_config_map(configmap, namespace).data or {})[
            naming.RESULT_KEY
        ]
        assert stored == published[(backend, pool)].data
        assert published[(backend, pool)].job_uid in jobs[naming.job_name(name, backend, pool)]
    assert set(status["summary"]["costPer1k"]) == {f"{b}/{p}" for b, p in measured}


# ----- the operator killed at each phase --------------------------------------------------------


def kill_while_deploying(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    operator: OperatorProcess,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
) -> str:
    """Backends deployed, their Jobs refused: killed before any benchmark started."""
    document = spec_of()
    pools = len(document["spec"]["nodePools"])
    with hold_job_creation(namespace):
        name = apply_document(namespace, document)
        # The first backend of each pool is up and the operator is trying to start its Job.
        wait_for(
            lambda: len(recorder.deployments.latest) == pools and GATE_MESSAGE in operator.tail(),
            60, "the backends deployed and their Jobs refused", recorder.describe,
        )  # fmt: skip
        assert suite_status(custom, namespace, name)["phase"] == "Deploying"
        operator.kill()
        assert not recorder.bench_job_uids()
    return name


def kill_while_benchmarking(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    operator: OperatorProcess,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
) -> str:
    """Jobs running, no result in: killed; the results land while no operator runs."""
    job_driver.pause()
    name = apply_document(namespace, spec_of())
    wait_for_status(
        custom, namespace, name, lambda s: s.get("phase") == "Benchmarking", "Benchmarking"
    )
    wait_for(recorder.bench_job_uids, 60, "a benchmark Job", recorder.describe)
    operator.kill()
    job_driver.resume()
    wait_for(
        lambda: {u for uids in recorder.bench_job_uids().values() for u in uids}
        <= set(job_driver.published),
        60, "the results of the Jobs in flight, published with no operator running",
        job_driver.describe,
    )  # fmt: skip
    return name


def kill_while_analysing(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    operator: OperatorProcess,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
) -> str:
    """Every result in, the verdict refused: killed before it was written."""
    job_driver.pause()  # nothing can finish before the gate is up
    name = apply_document(namespace, spec_of())
    with hold_conclusion(namespace, name):
        job_driver.resume()
        wait_for_status(
            custom, namespace, name, lambda s: s.get("phase") == "Analyzing", "Analyzing", 120
        )
        wait_for(lambda: GATE_MESSAGE in operator.tail(), 30, "the verdict refused", operator.tail)
        operator.kill()
    return name


KILLS = {
    "deploying": kill_while_deploying,
    "benchmarking": kill_while_benchmarking,
    "analysing": kill_while_analysing,
}


@pytest.mark.parametrize("phase", list(KILLS))
def test_operator_killed_while_phase_finishes_the_suite_after_restart(
    phase: str,
    core: k8s.CoreV1Api,
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator_process: OperatorProcess,
) -> None:
    # Up to the kill, any gate lifted while no operator runs.
    name = KILLS[phase](custom, namespace, operator_process, recorder, job_driver)
    assert not operator_process.alive()
    at_kill = suite_status(custom, namespace, name)
    assert at_kill.get("phase") not in FINISHED, at_kill

    operator_process.start()
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)

    assert status["phase"] == "Succeeded", status
    assert (operator_process.starts, operator_process.kills) == (2, 1)
    cells = cells_of(spec_of())
    assert status["progress"] == f"{len(cells)}/{len(cells)}"
    assert_no_twins_and_no_lost_results(core, status, namespace, name, cells, recorder, job_driver)


# ----- the API server restarted mid-suite -------------------------------------------------------


def test_api_server_restart_mid_suite_the_operator_reconnects_and_finishes(
    core: k8s.CoreV1Api,
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator_process: OperatorProcess,
) -> None:
    job_driver.pause()  # Jobs in flight across the outage; their results come after it
    name = apply_document(namespace, spec_of())
    wait_for(recorder.bench_job_uids, 60, "a benchmark Job", recorder.describe)

    recorder.in_outage.set()
    restarted = subprocess.run(
        [str(CONTROL_PLANE), "restart-apiserver"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr
    recorder.in_outage.clear()
    job_driver.resume()

    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)
    assert status["phase"] == "Succeeded", status
    # The same operator process all along: it reconnected, nobody restarted it.
    assert operator_process.alive()
    assert (operator_process.starts, operator_process.kills) == (1, 0)
    assert recorder.outage_errors, "the recorder's watches never saw the API server go away"
    assert_no_twins_and_no_lost_results(
        core, status, namespace, name, cells_of(spec_of()), recorder, job_driver
    )


# ----- a cell's world breaking ------------------------------------------------------------------


def test_a_benchmark_pod_that_fails_is_retried_then_fails_its_cell_with_the_reason(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator_process: OperatorProcess,
) -> None:
    """kwok fails every pod of the FAILING_BENCH_BACKEND's Job (hack/kwok/stages.yaml)."""
    document = spec_of()
    document["spec"]["backends"][1] = {"name": FAILING_BENCH_BACKEND, "kind": "pytorch"}
    document["spec"]["nodePools"] = document["spec"]["nodePools"][:1]
    name = apply_document(namespace, document)
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)

    assert status["phase"] == "Failed", status
    cells = cells_by_key(status)
    assert cells[("pytorch", "a100")]["phase"] == "Succeeded", cells
    failed = cells[(FAILING_BENCH_BACKEND, "a100")]
    assert failed["phase"] == "Failed", failed
    # The Job's reason, then each failed pod's: where it ran and how it ended.
    message = failed["message"]
    assert message.startswith(
        "benchmark Job failed: BackoffLimitExceeded: Job has reached the specified backoff limit; "
    ), message
    pods = message.split("; ")[1:]
    assert len(pods) == 3, message
    assert all(re.fullmatch(r"pod \S+-bench-\w+ on \S+: Error, exit code 1", p) for p in pods), (
        message
    )
    complete = conditions_by_type(status)["ResultsComplete"]
    assert (complete["status"], complete["reason"]) == ("False", "CellsFailed")
    assert f"{FAILING_BENCH_BACKEND}/a100: benchmark Job failed" in complete["message"]
    # The Job controller retried: backoffLimit + 1 pods, every one Failed, none published.
    job = naming.job_name(name, FAILING_BENCH_BACKEND, "a100")
    with recorder.changed:
        pods = [n for n, labels in recorder.pods.labels.items() if labels.get("job-name") == job]
    assert len(pods) == 3, recorder.describe()
    assert {p.cell for p in job_driver.published.values()} == {("pytorch", "a100")}


@pytest.fixture
def restore_nodes() -> Iterator[None]:
    """Whatever node a test deletes comes back (hack/nodes/), Ready, for the next test."""
    yield
    kubectl("apply", "-f", str(REPO / "hack" / "nodes"))
    kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")


# The pod GC deletes a deleted node's pods after a 40 s quarantine (checked every 20 s); the
# result grace must outlast that, or the missing result would fail the cell first.
@pytest.mark.parametrize("operator_env", [{"BAKEOFF_RESULT_GRACE_S": "150"}], ids=["grace-150s"])
def test_a_node_deleted_mid_benchmark_fails_its_cell_while_others_complete(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator_process: OperatorProcess,
    restore_nodes: None,
) -> None:
    job_driver.pause()  # the cell stays mid-benchmark, its result not yet in
    name = apply_document(namespace, spec_of())
    status = wait_for_status(
        custom, namespace, name,
        lambda s: cells_by_key(s).get(("pytorch", "a100"), {}).get("phase") == "Benchmarking",
        "pytorch/a100 benchmarking",
    )  # fmt: skip
    node = cells_by_key(status)[("pytorch", "a100")]["node"]
    assert node.startswith("gpu-a100-")
    kubectl("delete", "node", node)

    status = wait_for_status(
        custom, namespace, name,
        lambda s: cells_by_key(s)[("pytorch", "a100")]["phase"] == "Failed",
        f"pytorch/a100 to fail once node {node} is gone", timeout=120,
    )  # fmt: skip
    job_driver.resume()
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)

    assert status["phase"] == "Failed", status
    cells = cells_by_key(status)
    lost = cells[("pytorch", "a100")]
    assert lost["message"].startswith(f"backend pod left node {node} during the benchmark"), lost
    assert lost["message"].endswith("the measurement is void"), lost
    assert lost["node"] == node
    others = [c for key, c in cells.items() if key != ("pytorch", "a100")]
    assert [c["phase"] for c in others] == ["Succeeded"] * 3, cells
    # The pool's other backend ran on the node that is left.
    assert cells[("triton-onnx-cuda", "a100")]["node"] != node
    assert "pytorch/a100" not in status["summary"]["costPer1k"]
    complete = conditions_by_type(status)["ResultsComplete"]
    assert f"pytorch/a100: backend pod left node {node}" in complete["message"]


def truncated(text: str) -> str:
    return text[: len(text) // 2]


def node_as_number(text: str) -> str:
    document = json.loads(text)
    document["environment"]["node"] = 42
    return json.dumps(document)


def test_a_malformed_result_fails_its_cell_naming_the_problem_while_others_complete(
    custom: k8s.CustomObjectsApi,
    namespace: str,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    operator_process: OperatorProcess,
) -> None:
    job_driver.tamper[("pytorch", "a100")] = truncated
    job_driver.tamper[("triton-onnx-cuda", "h100")] = node_as_number
    name = apply_document(namespace, spec_of())
    status = wait_for_suite_phase(custom, namespace, name, FINISHED, SUITE_TIMEOUT_S)

    assert status["phase"] == "Failed", status
    cells = cells_by_key(status)
    bad_json = cells[("pytorch", "a100")]
    assert bad_json["phase"] == "Failed"
    configmap = naming.result_name(name, "pytorch", "a100")
    assert bad_json["message"].startswith(
        f"result ConfigMap {configmap} is malformed: 1 problem(s), first at (document): "
        "Invalid JSON"
    ), bad_json
    wrong_schema = cells[("triton-onnx-cuda", "h100")]
    assert wrong_schema["phase"] == "Failed"
    assert wrong_schema["message"] == (
        f"result ConfigMap {naming.result_name(name, 'triton-onnx-cuda', 'h100')} is malformed: "
        "1 problem(s), first at environment.node: Input should be a valid string"
    ), wrong_schema
    for good in (("triton-onnx-cuda", "a100"), ("pytorch", "h100")):
        assert cells[good]["phase"] == "Succeeded", cells
    assert set(status["summary"]["costPer1k"]) == {"triton-onnx-cuda/a100", "pytorch/h100"}
    # Concluded once: no crash, no retry loop, the verdict stays.
    assert operator_process.alive()
    assert "Traceback" not in operator_process.tail(10_000)
    assert suite_status(custom, namespace, name)["phase"] == "Failed"
