"""The Helm chart on a real control plane: `helm install` into a namespace that enforces the
restricted Pod Security Standard, the operator pod admitted, the operator run (in a
KopfRunner, since kwok runs no containers) AS the chart's ServiceAccount with the chart's
environment, a suite driven to Succeeded, and `kubectl auth can-i` tables for the operator and
benchmark-Job ServiceAccounts in both modes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import (
    BUILD_TOOLS,
    CHART,
    FINISHED,
    REPO,
    JobDriver,
    Operator,
    apply_suite,
    helm,
    kubectl,
    token_kubeconfig,
    wait_for,
    wait_for_suite_phase,
)
from kubernetes import client as k8s
from kubernetes.config import kube_config

from bakeoff import naming
from bakeoff.settings import get_settings

pytestmark = pytest.mark.cluster

SUITE = REPO / "examples" / "cpu-mock.yaml"
TEST_IMAGES = {
    "pytorch": "registry.test/bakeoff/pytorch-backend:ci",
    "triton": "registry.test/nvidia/tritonserver:ci",
    "cpuMock": "registry.test/bakeoff/cpu-mock:ci",
    "modelPrep": "registry.test/bakeoff/model-prep:ci",
    "bench": "registry.test/bakeoff/bench-job:ci",
}
SUITE_TIMEOUT_S = 180

# (verb, resource, allowed) for the operator's ServiceAccount in a watched namespace: every
# call the operator makes, then what it must not do.
OPERATOR_CAN = [
    ("get", "benchmarksuites.bakeoff.dev", True),
    ("list", "benchmarksuites.bakeoff.dev", True),
    ("watch", "benchmarksuites.bakeoff.dev", True),
    ("patch", "benchmarksuites.bakeoff.dev", True),
    ("patch", "benchmarksuites.bakeoff.dev/status", True),
    ("update", "benchmarksuites.bakeoff.dev/finalizers", True),
    ("create", "events", True),
    ("list", "deployments.apps", True),
    ("create", "deployments.apps", True),
    ("delete", "deployments.apps", True),
    ("list", "jobs.batch", True),
    ("create", "jobs.batch", True),
    ("delete", "jobs.batch", True),
    ("list", "services", True),
    ("create", "services", True),
    ("delete", "services", True),
    ("list", "pods", True),
    ("list", "configmaps", True),
    ("create", "configmaps", True),
    ("get", "configmaps", True),
    ("update", "configmaps", True),
    ("patch", "configmaps", True),
    ("delete", "configmaps", True),
    ("create", "networkpolicies.networking.k8s.io", True),
    ("delete", "networkpolicies.networking.k8s.io", True),
    ("create", "serviceaccounts", True),
    ("create", "roles.rbac.authorization.k8s.io", True),
    ("create", "rolebindings.rbac.authorization.k8s.io", True),
    # ... and nothing more.
    ("get", "secrets", False),
    ("list", "secrets", False),
    ("watch", "secrets", False),
    ("create", "secrets", False),
    ("update", "networkpolicies.networking.k8s.io", False),
    ("create", "pods", False),
    ("delete", "pods", False),
    ("delete", "benchmarksuites.bakeoff.dev", False),
    ("create", "benchmarksuites.bakeoff.dev", False),
    ("update", "deployments.apps", False),
    ("create", "pods/exec", False),
    ("escalate", "roles.rbac.authorization.k8s.io", False),
    ("bind", "roles.rbac.authorization.k8s.io", False),
    ("impersonate", "serviceaccounts", False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
    ("create", "clusterroles.rbac.authorization.k8s.io", False),
    ("*", "*", False),
]
BENCH_CAN = [
    ("create", "configmaps", True),
    ("get", "configmaps", True),
    ("update", "configmaps", True),
    ("patch", "configmaps", True),
    ("list", "configmaps", False),
    ("watch", "configmaps", False),
    ("delete", "configmaps", False),
    ("list", "pods", False),
    ("create", "pods", False),
    ("patch", "benchmarksuites.bakeoff.dev/status", False),
    ("get", "secrets", False),
    ("list", "secrets", False),
    ("watch", "secrets", False),
    ("create", "networkpolicies.networking.k8s.io", False),
    ("create", "jobs.batch", False),
    ("get", "benchmarksuites.bakeoff.dev", False),
    ("*", "*", False),
]


# ----- helpers ------------------------------------------------------------------------------


def install_args(release: str, namespace: str, *extra: str) -> list[str]:
    sets = [f"images.{k}={v}" for k, v in TEST_IMAGES.items()] + [
        "cpuMock=true",
        # The cluster tier's short timings (conftest.OPERATOR_ENV), so the in-test operator
        # runs with exactly the chart's environment.
        "operator.reconcileIntervalSeconds=1",
        "operator.resultGraceSeconds=45",
        # The CRD is the cluster tier's, applied by the kubeconfig fixture and shared by every
        # test; the chart's rendering of it is checked by a server-side dry run below.
        "crds.enabled=false",
        # kwok nodes: keep the operator off the fake GPU pools.
        "operator.nodeSelector.bakeoff\\.dev/pool=system",
    ]
    args = ["install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout=90s"]
    for value in sets:
        args += ["--set", value]
    return args + list(extra)


def can_i(service_account: str, namespace: str, verb: str, resource: str, *flags: str) -> bool:
    # "suites/status" would be read as a suite named "status": ask for the subresource.
    resource, _, subresource = resource.partition("/")
    if subresource:
        flags = (*flags, f"--subresource={subresource}")
    done = kubectl(
        "auth", "can-i", verb, resource, "-n", namespace, f"--as={service_account}", *flags,
        check=False,
    )  # fmt: skip
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), f"can-i {verb} {resource}: {done.stdout}{done.stderr}"
    return answer == "yes"


def can_i_table(
    service_account: str, namespace: str, table: list[tuple[str, str, bool]], *flags: str
) -> list[str]:
    """The rows whose answer differs from the expected one (empty: all as expected)."""
    wrong = []
    for verb, resource, expected in table:
        got = can_i(service_account, namespace, verb, resource, *flags)
        if got != expected:
            wrong.append(f"{verb} {resource}: {'yes' if got else 'no'}, want "
                         f"{'yes' if expected else 'no'}")  # fmt: skip
    return wrong


def rendered_deployment(namespace: str, release: str) -> dict[str, Any]:
    listed = kubectl("get", "deployment", release, "-n", namespace, "-o", "yaml")
    deployment: dict[str, Any] = yaml.safe_load(listed.stdout)
    return deployment


@pytest.fixture
def release(namespace: str) -> Iterator[str]:
    """A per-test release name (cluster-scoped objects of cluster-wide mode must not clash);
    uninstalled at teardown."""
    name = f"bakeoff-{namespace.rsplit('-', 1)[-1]}"
    yield name
    subprocess.run(
        [str(BUILD_TOOLS), "helm", "uninstall", name, "-n", namespace, "--wait=false"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip


def operator_pod_admitted(namespace: str, release: str) -> dict[str, Any]:
    def pod() -> dict[str, Any] | None:
        listed = kubectl(
            "get", "pods", "-n", namespace, "-o", "yaml", "-l",
            f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator",
        )  # fmt: skip
        items = yaml.safe_load(listed.stdout)["items"]
        return items[0] if items and items[0]["status"].get("phase") == "Running" else None

    def describe() -> str:
        return kubectl("get", "events", "-n", namespace, check=False).stdout

    return wait_for(pod, 60, "the operator pod to be admitted and Running", describe)


# ----- tests --------------------------------------------------------------------------------


def test_chart_installs_in_a_restricted_namespace_and_its_operator_completes_a_suite(
    kubeconfig: Path,
    namespace: str,
    release: str,
    core: k8s.CoreV1Api,
    custom: k8s.CustomObjectsApi,
    job_driver: JobDriver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    labels = core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    helm(*install_args(release, namespace))
    pod = operator_pod_admitted(namespace, release)
    service_account = pod["spec"]["serviceAccountName"]
    assert service_account == release

    # The chart's CRD rendering is what the API server accepts (server-side dry run).
    rendered = helm("template", release, str(CHART), "-n", namespace,
                    "--show-only", "templates/crds/benchmarksuite.yaml").stdout  # fmt: skip
    kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-",
            stdin=rendered)  # fmt: skip

    operator_sa = f"system:serviceaccount:{namespace}:{service_account}"
    bench_sa = f"system:serviceaccount:{namespace}:{naming.BENCH_SERVICE_ACCOUNT}"
    assert can_i_table(operator_sa, namespace, OPERATOR_CAN) == []
    assert can_i_table(bench_sa, namespace, BENCH_CAN) == []
    # Namespaced mode holds nothing outside its namespace.
    assert can_i_table(operator_sa, "default", [
        ("list", "benchmarksuites.bakeoff.dev", False),
        ("create", "deployments.apps", False),
    ]) == []  # fmt: skip
    # kopf's discovery: read-only names of namespaces and CRDs, in both modes.
    assert can_i(operator_sa, namespace, "list", "namespaces")
    assert not can_i(operator_sa, namespace, "delete", "namespaces")

    # The operator, as the chart runs it: its ServiceAccount's token, the Deployment's env.
    container = rendered_deployment(namespace, release)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BAKEOFF_CPU_MOCK"] == "true"
    assert env["BAKEOFF_BENCH_IMAGE"] == TEST_IMAGES["bench"]
    assert container["args"][-1] == f"--namespace={namespace}"
    env["BAKEOFF_METRICS_PORT"] = "0"  # no fixed port on the test machine
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    assert get_settings().cpu_mock and get_settings().bench_image == TEST_IMAGES["bench"]
    as_sa = token_kubeconfig(tmp_path / "operator-sa.yaml", kubeconfig, namespace, service_account)
    monkeypatch.setenv("KUBECONFIG", str(as_sa))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(as_sa))
    handlers = sys.modules.get("bakeoff.handlers")
    if handlers is not None:  # an earlier test's operator cached an admin client
        monkeypatch.setattr(handlers, "_client", None)

    operator = Operator(namespace)
    operator.start()
    try:
        name = apply_suite(namespace, SUITE)
        status = wait_for_suite_phase(custom, namespace, name, FINISHED,
                                      SUITE_TIMEOUT_S)  # fmt: skip
        assert status["phase"] == "Succeeded", status
        assert len(job_driver.published) == 2, job_driver.describe()
    finally:
        operator.stop()
        if handlers is not None or "bakeoff.handlers" in sys.modules:
            monkeypatch.setattr(sys.modules["bakeoff.handlers"], "_client", None)
        get_settings.cache_clear()
    log = operator.log.tail(5000)
    # A 403 as a status code, not the milliseconds of a log timestamp ("12:00:01,403").
    status_403 = re.compile(r"(?<![\d,])403(?!\d)")
    forbidden = [
        line for line in log.splitlines()
        if status_403.search(line) or "Forbidden" in line or "forbidden" in line
    ]  # fmt: skip
    assert forbidden == [], "\n".join(forbidden)


def test_cluster_wide_install_grants_every_namespace_and_still_no_secrets(
    namespace: str, release: str
) -> None:
    helm(*install_args(release, namespace, "--set", "watch.clusterWide=true"))
    operator_pod_admitted(namespace, release)
    operator_sa = f"system:serviceaccount:{namespace}:{release}"
    table = [(v, r, ok) for v, r, ok in OPERATOR_CAN]
    assert can_i_table(operator_sa, "default", table) == []
    assert can_i_table(operator_sa, namespace, [
        ("list", "benchmarksuites.bakeoff.dev", True),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", True),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", True),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", False),
        ("list", "namespaces", True),
        ("create", "namespaces", False),
        ("get", "nodes", False),
    ]) == []  # fmt: skip
    assert can_i(operator_sa, namespace, "list", "benchmarksuites.bakeoff.dev", "--all-namespaces")
    assert not can_i(operator_sa, namespace, "get", "secrets", "--all-namespaces")
    assert not can_i(operator_sa, namespace, "*", "*", "--all-namespaces")
