"""Fixtures of the cluster tier: a real control plane (hack/control-plane.sh), the CRD, one
restricted namespace per test, the operator in a KopfRunner, a recorder of what happened in
the namespace, and the job driver that publishes real results as the benchmark Job would.

The control plane is started if needed and left up for the next run. A tier that cannot start
it fails with the script's output; nothing here skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from cluster_harness import (
    CONTROL_PLANE,
    ClusterAccess,
    JobDriver,
    NamespaceRecorder,
    Operator,
    OperatorProcess,
    create_restricted_namespace,
    delete_namespace,
    install_crd,
    kubectl,
    local_results,
)
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config import kube_config

from bakeoff.settings import get_settings
from bakeoff_bench.results import CellResult

# Short timings, read once by bakeoff.settings (and the timer interval when bakeoff.handlers
# is imported, which happens in the first KopfRunner): set before either.
# No metrics exporter: tests run several operators in one process, one after another.
OPERATOR_ENV = {
    "BAKEOFF_RECONCILE_INTERVAL_S": "1",
    "BAKEOFF_RESULT_GRACE_S": "45",
    "BAKEOFF_METRICS_PORT": "0",
}

# Fixtures add callables here; on a failed test each becomes a section of the report.
DIAGNOSTICS = pytest.StashKey[list[Callable[[], tuple[str, str]]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call" and report.failed:
        for diagnose in item.stash.get(DIAGNOSTICS, []):
            try:
                report.sections.append(diagnose())
            except Exception as error:  # a broken dump must not hide the failure
                report.sections.append(("diagnostics", f"could not collect: {error!r}"))
    return report


def add_diagnostic(request: pytest.FixtureRequest, diagnose: Callable[[], tuple[str, str]]) -> None:
    request.node.stash.setdefault(DIAGNOSTICS, []).append(diagnose)


# ----- session: control plane, CRD, API clients ----------------------------------------------


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """`hack/control-plane.sh up` (reuses a running control plane), KUBECONFIG set, CRD applied."""
    started = time.monotonic()
    done = subprocess.run(
        [str(CONTROL_PLANE), "up"], capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"hack/control-plane.sh up exited {done.returncode}; the cluster tier needs it.\n"
            f"--- stderr ---\n{done.stderr}\n--- stdout ---\n{done.stdout}",
            pytrace=False,
        )
    path = Path(done.stdout.strip().splitlines()[-1])
    print(f"\ncontrol plane up in {time.monotonic() - started:.1f} s: {path}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBECONFIG", str(path))
        # The client library reads KUBECONFIG once, when imported (which conftest already did):
        # the operator's load_kube_config() would look in ~/.kube/config.
        env.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        for name, value in OPERATOR_ENV.items():
            env.setenv(name, value)
        get_settings.cache_clear()
        if "bakeoff.handlers" in sys.modules:
            pytest.fail(
                "bakeoff.handlers was imported before the cluster tier set BAKEOFF_* (its timer "
                "interval is fixed at import); run tests/cluster in its own pytest process",
                pytrace=False,
            )
        install_crd()
        yield path
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: k8s.ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def real_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CellResult]:
    """One real `bakeoff run --local` of the tiny suite (PyTorch server and tritonserver on
    this machine): its two CellResults, by backend kind, for the job driver to publish."""
    started = time.monotonic()
    results = local_results(tmp_path_factory.mktemp("local-run"))
    print(f"\nlocal run of the tiny suite in {time.monotonic() - started:.1f} s")
    return results


# ----- per test: namespace, recorder, job driver, operator ------------------------------------


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: k8s.CoreV1Api) -> Iterator[str]:
    """A fresh namespace that enforces the restricted Pod Security Standard."""
    # A DNS label: the test's name (parameters included), shortened, plus a random suffix.
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    stem = stem[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:5]}"
    create_restricted_namespace(core, name)
    add_diagnostic(
        request,
        lambda: (
            f"kubectl get all,benchmarksuites,configmaps,events -n {name} -o wide",
            kubectl(
                "get", "all,benchmarksuites,configmaps,events", "-n", name, "-o", "wide",
                check=False,
            ).stdout,
        ),
    )  # fmt: skip
    add_diagnostic(
        request,
        lambda: (
            "suite status",
            kubectl(
                "get", "benchmarksuites", "-n", name, "-o",
                "jsonpath={range .items[*]}{.metadata.name}: {.status}{'\\n'}{end}", check=False,
            ).stdout,
        ),
    )  # fmt: skip
    yield name
    delete_namespace(name)


@pytest.fixture
def recorder(
    request: pytest.FixtureRequest, api_client: k8s.ApiClient, namespace: str
) -> Iterator[NamespaceRecorder]:
    watching = NamespaceRecorder(api_client, namespace)
    watching.start()
    add_diagnostic(request, lambda: ("recorded (watch)", watching.describe()))
    yield watching
    watching.stop()
    assert not watching.errors, watching.errors


@pytest.fixture
def job_driver(
    request: pytest.FixtureRequest,
    kubeconfig: Path,
    custom: k8s.CustomObjectsApi,
    recorder: NamespaceRecorder,
    real_results: dict[str, CellResult],
) -> Iterator[JobDriver]:
    # A result for every kind: an external backend's Job publishes the PyTorch server's.
    results = {**real_results, "external": real_results["pytorch"]}
    driver = JobDriver(recorder, custom, ClusterAccess.from_kubeconfig(kubeconfig), results)
    driver.start()
    add_diagnostic(request, lambda: ("job driver", driver.describe()))
    yield driver
    driver.stop()
    assert not driver.errors, driver.describe()


@pytest.fixture
def operator(
    request: pytest.FixtureRequest, kubeconfig: Path, namespace: str
) -> Iterator[Operator]:
    """The operator watching the test's namespace; stopped (and checked clean) at teardown."""
    interval = float(OPERATOR_ENV["BAKEOFF_RECONCILE_INTERVAL_S"])
    assert get_settings().reconcile_interval_s == interval
    assert os.environ["KUBECONFIG"] == str(kubeconfig)
    running = Operator(namespace)
    add_diagnostic(request, lambda: ("operator log (kopf)", running.log.tail()))
    running.start()
    yield running
    if running.running:
        running.stop()


@pytest.fixture
def operator_env() -> dict[str, str]:
    """BAKEOFF_* settings of `operator_process` beyond OPERATOR_ENV; a test overrides them
    with @pytest.mark.parametrize("operator_env", [...])."""
    return {}


@pytest.fixture
def operator_process(
    request: pytest.FixtureRequest,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    operator_env: dict[str, str],
) -> Iterator[OperatorProcess]:
    """The operator in a process of its own, as the chart runs it (see OperatorProcess):
    started here, killed and restarted by the test, stopped with SIGTERM at teardown."""
    env = {"KUBECONFIG": str(kubeconfig), **OPERATOR_ENV, **operator_env}
    running = OperatorProcess.watching(namespace, tmp_path / "operator.log", env)
    add_diagnostic(request, lambda: ("operator log (process)", running.tail()))
    running.start()
    yield running
    code = running.stop()
    assert code == 0, f"the operator exited {code} on SIGTERM:\n{running.tail(50)}"
