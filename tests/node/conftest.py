"""Fixtures of the node tier: a cluster with one real node (hack/node.sh: containerd, kubelet,
kube-proxy, CNI, CoreDNS) beside kwok's GPU pools, the images built here (hack/images.sh)
loaded into the node, and the chart installed from them.

`make test-node` builds the images and brings the node up first; the fixtures repeat both
idempotently (so `pytest tests/node` alone works on a warm machine) and fail with the
script's output when they cannot. Nothing skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

# The cluster tier's kubectl/helm/wait helpers, pointed at the node tier's own cluster:
# hack/control-plane.sh reads BAKEOFF_CLUSTER for every command, kubectl included.
NODE_CLUSTER = "bakeoff-node"
os.environ["BAKEOFF_CLUSTER"] = NODE_CLUSTER
os.environ["BAKEOFF_NODE_CLUSTER"] = NODE_CLUSTER
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from cluster_harness import REPO, kubectl  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from kubernetes.config import kube_config  # noqa: E402

NODE = REPO / "hack" / "node.sh"
IMAGES = REPO / "hack" / "images.sh"
TAG = os.environ.get("BAKEOFF_TAG", "dev")
# What the chart runs: the images hack/images.sh builds (docker.io/ is how containerd and the
# kubelet name an image without a registry host).
BUILT = {name: f"bakeoff/{name}:{TAG}" for name in ("operator", "bench-job", "serve")}
REAL_NODE = os.environ.get("BAKEOFF_NODE_NAME", "cpu-mock-real-0")

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


def run_script(*argv: str | Path, timeout: float) -> str:
    """Run a hack/ script; fail the tier with its output if it fails. Returns stdout."""
    started = time.monotonic()
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(str(a) for a in argv)} exited {done.returncode}; the node tier needs it.\n"
            f"--- stderr ---\n{done.stderr[-6000:]}\n--- stdout ---\n{done.stdout[-2000:]}",
            pytrace=False,
        )
    print(f"\n{Path(str(argv[0])).name} {argv[1]}: {time.monotonic() - started:.1f} s")
    return done.stdout


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """The node up (reused when healthy), the images loaded into its containerd."""
    if os.geteuid() != 0:
        pytest.fail("the node tier runs a kubelet and containerd: run it as root", pytrace=False)
    out = run_script(NODE, "up", timeout=3600)
    path = Path(out.strip().splitlines()[-1])
    missing = [
        ref
        for ref in BUILT.values()
        if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode
    ]
    if missing:
        pytest.fail(
            f"not built: {', '.join(missing)}; run `make images` (hack/images.sh build) first",
            pytrace=False,
        )
    run_script(IMAGES, "load", timeout=1800)  # every image and the pods' pause image
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBECONFIG", str(path))
        env.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        yield path


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: k8s.ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client)


def dump(*namespaces: str) -> tuple[str, str]:
    """kubectl get of everything the suites make, and the real node's events."""
    out = []
    for ns in namespaces:
        out.append(
            kubectl(
                "get", "all,benchmarksuites,configmaps,events", "-n", ns, "-o", "wide",
                check=False,
            ).stdout
        )  # fmt: skip
    out.append(kubectl("describe", "node", REAL_NODE, check=False).stdout[-3000:])
    return ("kubectl get all (node tier)", "\n".join(out))
