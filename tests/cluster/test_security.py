"""Security on a real control plane: every pod the operator builds is admitted where the
"restricted" Pod Security Standard is enforced, and a secret carried by a suite's spec never
reaches the operator's log, its Events or the suite's status.

(Least-privilege RBAC of the operator and of the benchmark Jobs' ServiceAccount:
test_chart_install.py's `kubectl auth can-i` tables.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import (
    FINISHED,
    ClusterAccess,
    JobDriver,
    NamespaceRecorder,
    Operator,
    kubectl,
    wait_for_suite_phase,
)
from kubernetes import client as k8s

from bakeoff import manifests, naming, plan, validation
from bakeoff.settings import OperatorSettings
from bakeoff_bench.results import CellResult

pytestmark = pytest.mark.cluster

UID = "00000000-0000-4000-8000-000000000000"  # owner references need one; dry runs keep none
SECRET = "CANARY-s3cr3t-7f1d0c"  # recognisable: nothing else ever prints it
SUITE: dict[str, Any] = {
    "apiVersion": "bakeoff.dev/v1alpha1",
    "kind": "BenchmarkSuite",
    "metadata": {"name": "secretive"},
    "spec": {
        "model": {"name": "clip", "source": {"builtin": "vit-b32-clip"}},
        "backends": [
            {"name": "pytorch", "kind": "pytorch", "maxBatchSize": 8},
            {"name": "onnx", "kind": "triton-onnx", "executionProvider": "cpu", "maxBatchSize": 8},
            {
                "name": "prod-triton",
                "kind": "external",
                "maxBatchSize": 8,
                "endpoint": {
                    # Credentials in the URL: the one place the API lets a secret in.
                    "httpUrl": f"http://bench:{SECRET}@triton.inference.svc:8000",
                    "metricsUrl": f"http://bench:{SECRET}@triton.inference.svc:8002/metrics",
                },
            },
        ],
        "nodePools": [
            {"name": "cpu", "gpus": 0, "nodeSelector": {"bakeoff.dev/pool": "cpu-mock"},
             "costPerHour": 0.1},
        ],
        "scenarios": {"single": {"requests": 20, "warmup": 2},
                      "batchSweep": {"batchSizes": [1, 4], "requests": 4, "warmup": 1}},
        "parity": {"reference": "pytorch"},
        "cleanup": {"policy": "Never"},  # keep the Jobs, to show the secret is in one
    },
}  # fmt: skip


# ----- every pod template under enforce=restricted --------------------------------------------


def pod_templates(settings: OperatorSettings) -> dict[str, dict[str, Any]]:
    """Every pod template the operator builds for the suite, by '<kind> <name>'."""
    study = validation.parse_suite(
        {
            **SUITE,
            "metadata": {"name": "restricted", "namespace": "x"},
            "spec": {
                **SUITE["spec"],
                "nodePools": [
                    *SUITE["spec"]["nodePools"],
                    {"name": "a100", "gpus": 2, "costPerHour": 0.85,
                     "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                      "effect": "NoSchedule"}]},
                ],
            },
        }
    )  # fmt: skip
    workloads: list[dict[str, Any]] = []
    for cell in plan.plan_cells(study.spec):
        if manifests.backend_pod(study, cell, settings) is not None:  # external: nothing
            workloads.append(manifests.build_backend_deployment(study, UID, cell, settings))
        workloads.append(manifests.build_bench_job(study, UID, cell, settings, "node-0"))
    return {f"{w['kind']} {w['metadata']['name']}": w["spec"]["template"] for w in workloads}


def as_pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def dry_run_create(namespace: str, obj: dict[str, Any]) -> tuple[bool, str]:
    """(admitted, kubectl's stderr) of a server-side dry-run create: every admission plugin
    runs, nothing is stored."""
    done = kubectl(
        "create", "-n", namespace, "--dry-run=server", "-f", "-", stdin=json.dumps(obj),
        check=False,
    )  # fmt: skip
    return done.returncode == 0, done.stderr


@pytest.mark.parametrize("cpu_mock", [False, True], ids=["gpu", "cpu-mock"])
def test_every_pod_template_the_operator_builds_is_admitted_under_enforce_restricted(
    namespace: str, core: k8s.CoreV1Api, cpu_mock: bool
) -> None:
    labels = core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for rbac in manifests.build_bench_rbac(namespace):  # the Job pods' ServiceAccount
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(rbac))
    templates = pod_templates(OperatorSettings(cpu_mock=cpu_mock))
    # pytorch and onnx on two pools, external on both: 4 Deployments, 6 Jobs.
    assert sorted(k.split()[0] for k in templates) == ["Deployment"] * 4 + ["Job"] * 6

    refused = {}
    for index, (what, template) in enumerate(sorted(templates.items())):
        admitted, stderr = dry_run_create(namespace, as_pod(f"template-{index}", template))
        if not admitted or "PodSecurity" in stderr:
            refused[what] = stderr
    assert refused == {}

    # The check can fail: the same template without its securityContext is refused.
    what, template = next(iter(sorted(templates.items())))
    bare = json.loads(json.dumps(template))
    for container in bare["spec"]["containers"] + bare["spec"].get("initContainers", []):
        del container["securityContext"]
    admitted, stderr = dry_run_create(namespace, as_pod("bare", bare))
    assert not admitted and 'violates PodSecurity "restricted:latest"' in stderr, stderr

    # Identity: backends run with no API token, benchmark Jobs as their own ServiceAccount.
    for what, template in templates.items():
        spec = template["spec"]
        if what.startswith("Deployment"):
            assert spec["automountServiceAccountToken"] is False, what
            assert "serviceAccountName" not in spec, what
        else:
            assert spec["serviceAccountName"] == naming.BENCH_SERVICE_ACCOUNT, what


# ----- no secret in the log ------------------------------------------------------------------


class Capture(logging.Handler):
    """Every record of the process, formatted as the operator's console would show it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_log() -> Iterator[Capture]:
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    yield capture
    root.removeHandler(capture)


def test_operator_never_logs_a_secret_from_the_spec_over_a_whole_suite(
    namespace: str,
    kubeconfig: Path,
    custom: k8s.CustomObjectsApi,
    recorder: NamespaceRecorder,
    real_results: dict[str, CellResult],
    captured_log: Capture,
) -> None:
    # The external backend's Job publishes a real result too (the PyTorch server's).
    driver = JobDriver(recorder, custom, ClusterAccess.from_kubeconfig(kubeconfig),
                       {**real_results, "external": real_results["pytorch"]})  # fmt: skip
    driver.start()
    operator = Operator(namespace)  # kopf --verbose: DEBUG, where kopf dumps whole objects
    operator.start()
    try:
        kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(SUITE))
        status = wait_for_suite_phase(custom, namespace, "secretive", FINISHED, 150)
    finally:
        operator.stop()
        driver.stop()
    assert status["phase"] == "Succeeded", status
    assert len(driver.published) == 3, driver.describe()
    assert driver.errors == []

    # The secret did reach the cluster: the external backend's Job needs it to connect.
    jobs = recorder.jobs.latest.values()
    assert any(SECRET in json.dumps(job["spec"]["template"]) for job in jobs)

    log = captured_log.lines + operator.log.lines
    # kopf did try to print the whole suite (the filter replaced it): the test is not vacuous.
    assert any("is in progress: <" in line and "characters not logged>" in line for line in log)
    leaked = [line for line in log if SECRET in line]
    assert leaked == [], "\n".join(leaked[:5])
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert json.loads(events)["items"], "the operator posted no Events at all"
    assert SECRET not in events
    assert SECRET not in json.dumps(status)
