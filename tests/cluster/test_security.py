"""Security on a real control plane: every pod the operator builds is admitted where the
"restricted" Pod Security Standard is enforced, and an endpoint's credentials, kept in a
Secret, reach the load generator and nothing else: no spec, status, Event, log line or
ConfigMap carries them.

(Least-privilege RBAC of the operator and of the benchmark Jobs' ServiceAccount:
test_chart_install.py's `kubectl auth can-i` tables.)
"""

from __future__ import annotations

import json
import logging
import sys
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

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).parents[1]))
from fake_oip import MODEL, FakeOipServer, tls_gateway
from gateway_suite import gateway_backend
from tls_certs import Pki, make_pki

pytestmark = pytest.mark.cluster

UID = "00000000-0000-4000-8000-000000000000"  # owner references need one; dry runs keep none
SECRET = "CANARY-s3cr3t-7f1d0c"  # recognisable: nothing else ever prints it
API_KEY = "CANARY-k3y-2b9e41"
CREDENTIALS_SECRET = "gateway-credentials"
CA_SECRET = "gateway-ca"


def suite_document(gateway_url: str) -> dict[str, Any]:
    """Two backends Bakeoff deploys and a gateway behind TLS that wants a bearer token and an
    API key, both from a Secret."""
    return {
        "apiVersion": "bakeoff.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": "secretive"},
        "spec": {
            "model": {"name": MODEL, "source": {"builtin": "vit-b32-clip"}},
            "backends": [
                {"name": "pytorch", "kind": "pytorch", "maxBatchSize": 8},
                {"name": "onnx", "kind": "triton-onnx", "executionProvider": "cpu",
                 "maxBatchSize": 8},
                gateway_backend(gateway_url, CREDENTIALS_SECRET, CA_SECRET, "prod-triton"),
            ],
            "nodePools": [
                {"name": "cpu", "gpus": 0, "nodeSelector": {"bakeoff.dev/pool": "cpu-mock"},
                 "costPerHour": 0.1},
            ],
            "scenarios": {"single": {"requests": 20, "warmup": 2},
                          "batchSweep": {"batchSizes": [1, 4], "requests": 4, "warmup": 1}},
            "parity": {"reference": "pytorch"},
            "cleanup": {"policy": "Never"},  # keep the Jobs, to look for the secret in them
        },
    }  # fmt: skip


# ----- every pod template under enforce=restricted --------------------------------------------


def pod_templates(settings: OperatorSettings) -> dict[str, dict[str, Any]]:
    """Every pod template the operator builds for the suite, by '<kind> <name>'."""
    document = suite_document("https://gateway.example:8443")
    study = validation.parse_suite(
        {
            **document,
            "metadata": {"name": "restricted", "namespace": "x"},
            "spec": {
                **document["spec"],
                "nodePools": [
                    *document["spec"]["nodePools"],
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def gateway(pki: Pki) -> Iterator[FakeOipServer]:
    """An OIP server on this machine behind TLS that answers 401 without the credentials."""
    headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": API_KEY}
    with tls_gateway(headers, pki.server_context()) as served:
        yield served


def create_secret(namespace: str, name: str, data: dict[str, str]) -> None:
    literals = [f"--from-literal={key}={value}" for key, value in data.items()]
    kubectl("create", "secret", "generic", name, "-n", namespace, *literals)


def test_credentials_from_a_secret_reach_the_load_generator_and_nothing_else(
    namespace: str,
    kubeconfig: Path,
    custom: k8s.CustomObjectsApi,
    recorder: NamespaceRecorder,
    real_results: dict[str, CellResult],
    captured_log: Capture,
    gateway: FakeOipServer,
    pki: Pki,
) -> None:
    create_secret(namespace, CREDENTIALS_SECRET, {"token": SECRET, "api-key": API_KEY})
    create_secret(namespace, CA_SECRET, {"ca.crt": pki.ca_cert.read_text()})
    # The gateway's Job runs the real load generator with the Job's config and Secret volumes.
    driver = JobDriver(recorder, custom, ClusterAccess.from_kubeconfig(kubeconfig), real_results)
    driver.run_for_real.add("prod-triton")
    driver.start()
    operator = Operator(namespace)  # kopf --verbose: DEBUG, where kopf dumps whole objects
    operator.start()
    try:
        suite = suite_document(gateway.url)
        kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(suite))
        status = wait_for_suite_phase(custom, namespace, "secretive", FINISHED, 150)
    finally:
        operator.stop()
        driver.stop()
    assert status["phase"] == "Succeeded", status
    assert len(driver.published) == 3, driver.describe()
    assert driver.errors == []

    # The load generator did use the credentials: every request to the gateway carried them.
    assert gateway.unauthorized == 0 and gateway.success >= 2 + 20 + 5 * 2, gateway
    published = next(p for p in driver.published.values() if p.cell[0] == "prod-triton")
    assert "credentials from files (Secrets): headers Authorization, X-Api-Key; a custom CA" in (
        published.data
    )
    # The operator only named the Secrets: the gateway's Job mounts them as files.
    job = next(j for j in recorder.jobs.latest.values()
               if j["metadata"]["labels"][naming.LABEL_BACKEND] == "prod-triton")  # fmt: skip
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert sorted(v["secret"]["secretName"] for v in volumes if "secret" in v) == [
        CA_SECRET, CREDENTIALS_SECRET
    ]  # fmt: skip

    assert_backends_accept_only_their_own_bench_pods(namespace)

    # Nowhere else: no spec (suite, Jobs, Deployments), status, Event, ConfigMap or log line.
    for value in (SECRET, API_KEY):
        for kind in ("benchmarksuites", "jobs", "deployments", "pods", "configmaps", "events"):
            listed = kubectl("get", kind, "-n", namespace, "-o", "json").stdout
            assert json.loads(listed)["items"] or kind == "pods", f"no {kind} at all"
            assert value not in listed, kind
        assert value not in json.dumps(status)
        log = captured_log.lines + operator.log.lines
        assert [line for line in log if value in line] == []
    # kopf did try to print the whole suite (the filter replaced it): the log check is not vacuous.
    log = captured_log.lines + operator.log.lines
    assert any("is in progress: <" in line and "characters not logged>" in line for line in log)


def _selected(namespace: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
    selector = ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))
    listed = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    pods: list[dict[str, Any]] = json.loads(listed)["items"]
    return pods


def assert_backends_accept_only_their_own_bench_pods(namespace: str) -> None:
    """Each backend the operator deployed has a NetworkPolicy (accepted by the API server)
    whose pods are exactly that backend's, and whose peers are exactly its cell's bench pods."""
    listed = kubectl("get", "networkpolicies", "-n", namespace, "-o", "json").stdout
    policies = {p["metadata"]["name"]: p for p in json.loads(listed)["items"]}
    deployments = json.loads(kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)
    assert sorted(policies) == sorted(d["metadata"]["name"] for d in deployments["items"])
    assert len(policies) == 2  # pytorch and onnx; the external gateway is not Bakeoff's to guard
    for name, policy in policies.items():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        guarded = _selected(namespace, spec["podSelector"]["matchLabels"])
        assert guarded, f"{name} selects no pod"
        backend = {p["metadata"]["labels"][naming.LABEL_BACKEND] for p in guarded}
        components = {p["metadata"]["labels"][naming.LABEL_COMPONENT] for p in guarded}
        assert len(backend) == 1 and components == {naming.COMPONENT_BACKEND}, name
        peers = _selected(namespace, spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"])
        assert peers, f"{name} admits no bench pod"
        assert {p["metadata"]["labels"][naming.LABEL_BACKEND] for p in peers} == backend
        assert {p["metadata"]["labels"][naming.LABEL_COMPONENT] for p in peers} == {
            naming.COMPONENT_BENCH
        }
        assert spec["ingress"][1]["from"] == OperatorSettings().metrics_scrapers


def test_a_url_with_credentials_is_refused_with_where_they_belong(namespace: str) -> None:
    suite = suite_document(f"https://bench:{SECRET}@gateway.example:8443")
    done = kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(suite), check=False)
    assert done.returncode != 0
    assert "endpoint.httpUrl must not carry credentials" in done.stderr
    assert "put them in a Secret and name it in endpoint.auth" in done.stderr
