"""`make bench`: the operator under load, on the local control plane (hack/control-plane.sh).

Issue 7's scenario, the same one tests/cluster/test_load.py asserts on: 20 suites x 3
backends x 3 pools applied at once on 60 simulated GPU nodes (kwok), the operator run as the
chart runs it, in a process of its own, as the chart's ServiceAccount; the benchmark Jobs'
last step (publishing a result) played by the cluster tier's job driver with results of one
real `bakeoff run --local`. How each number is taken: tests/cluster/load_harness.py.

Prints a table and writes JSON (with the machine) to --out. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parent
# The cluster tier's harness is the one implementation of the control-plane plumbing.
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from cluster_harness import (  # noqa: E402
    CONTROL_PLANE,
    ClusterAccess,
    JobDriver,
    NamespaceRecorder,
    create_restricted_namespace,
    delete_namespace,
    install_crd,
    local_results,
)
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from load_harness import LoadShape, format_report, load_nodes, run_load  # noqa: E402


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The operator under load on the local cluster")
    parser.add_argument("--suites", type=int, default=20)
    parser.add_argument("--nodes-per-pool", type=int, default=20)
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="the operator's reconcile interval (chart: operator.reconcileIntervalSeconds); "
        "1 s is the cluster tier's, the chart's default is 10 s",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds for all to finish")
    parser.add_argument("--out", type=Path, default=REPO / "results/bench/operator_load.json")
    return parser.parse_args()


def control_plane_up() -> Path:
    done = subprocess.run(
        [str(CONTROL_PLANE), "up"], capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"hack/control-plane.sh up exited {done.returncode}:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def main() -> int:
    args = _parse_args()
    shape = LoadShape(suites=args.suites, nodes_per_pool=args.nodes_per_pool)
    print(f"==> control plane (BAKEOFF_CLUSTER={os.environ.get('BAKEOFF_CLUSTER', 'bakeoff')})")
    kubeconfig = control_plane_up()
    os.environ["KUBECONFIG"] = str(kubeconfig)
    install_crd()
    api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    custom = k8s.CustomObjectsApi(api_client)
    with tempfile.TemporaryDirectory(prefix="bakeoff-load-") as tmp:
        workdir = Path(tmp)
        print("==> one real `bakeoff run --local` of the tiny suite (results the Jobs publish)")
        started = time.monotonic()
        (workdir / "local").mkdir()
        results = local_results(workdir / "local")
        print(f"    {time.monotonic() - started:.0f} s")
        namespace = f"load-bench-{uuid.uuid4().hex[:5]}"
        create_restricted_namespace(k8s.CoreV1Api(api_client), namespace)
        recorder = NamespaceRecorder(api_client, namespace)
        driver = JobDriver(recorder, custom, ClusterAccess.from_kubeconfig(kubeconfig), results)
        try:
            recorder.start()
            driver.start()
            print(
                f"==> {shape.suites} suites x {len(shape.backends)} backends x "
                f"{len(shape.pools)} pools on {shape.nodes_per_pool * len(shape.pools)} nodes, "
                f"namespace {namespace}"
            )
            with load_nodes(shape):
                report = run_load(
                    shape=shape,
                    namespace=namespace,
                    kubeconfig=kubeconfig,
                    custom=custom,
                    recorder=recorder,
                    job_driver=driver,
                    workdir=workdir,
                    reconcile_interval_s=args.interval,
                    timeout_s=args.timeout,
                    progress=True,
                )
        finally:
            driver.stop()
            recorder.stop()
            delete_namespace(namespace)
    print(format_report(report))
    problems = [*driver.errors, *recorder.errors]
    if report.unfinished_cells or report.twin_deployments or report.twin_jobs:
        problems.append("not every cell finished, or something was created twice")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        **report.as_json(),
        "problems": problems,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"==> wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
