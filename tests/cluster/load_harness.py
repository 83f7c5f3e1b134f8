"""Issue 7's load scenario: many suites x 3 backends x 3 pools applied at once on simulated GPU
nodes (full size: 20 suites, 180 cells, 60 nodes), the operator run as the chart runs it.

Shared by `tests/cluster/test_load.py` (every cell's end state, no twin) and
`benchmarks/operator_load.py` (`make bench`: the numbers). Builders are pure (nodes, suites,
FlowSchemas, metric parsing); `load_nodes` and `run_load` are the I/O around them.

How each number is taken:
- times: from just before `kubectl apply` of all suites; Deployments by the namespace
  recorder's watch (first sighting of each name), suites by polling their status every
  `POLL_S` (so "all Succeeded" is late by at most that).
- API requests: counted by the API server, per identity. The operator runs as the chart's
  ServiceAccount, and one FlowSchema per verb matches exactly that ServiceAccount (API
  Priority and Fairness, same priority level it would get anyway), so
  `apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` before and after the run
  is what the operator asked for, by verb. No other client is counted.
- memory: the operator process's VmHWM (the kernel's peak RSS; nothing is sampled).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from cluster_harness import (
    CHART,
    FINISHED,
    REPO,
    JobDriver,
    NamespaceRecorder,
    OperatorProcess,
    helm,
    kubectl,
    token_kubeconfig,
    wait_for,
)
from kubernetes import client as k8s

from bakeoff import api, naming

NODES_DIR: Final = REPO / "hack" / "nodes"
EXAMPLE: Final = REPO / "examples" / "rtx4080-vs-a100.yaml"  # backends and scenarios
POOLS: Final = ("rtx4080", "a100", "h100")  # templates: hack/nodes/gpu-<pool>.yaml
COST_PER_HOUR: Final = {"rtx4080": 0.092, "a100": 0.85, "h100": 2.10}
# The load nodes carry this label on top of their pool's labels, and the load suites select
# it, so the scenario uses exactly its own nodes (and other suites may use them meanwhile).
NODE_SET_LABEL: Final = "bakeoff.dev/node-set"
NODE_SET: Final = "load"
PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
VERBS: Final = ("get", "list", "watch", "create", "update", "patch", "delete")
# Counted apart, before their verb's bucket: creates that are not children of a cell.
CREATE_BUCKETS: Final = {
    "create-events": (["", "events.k8s.io"], ["events"]),
    "create-rbac": (
        ["", "rbac.authorization.k8s.io"],
        ["serviceaccounts", "roles", "rolebindings"],
    ),
}
FLOW_PREFIX: Final = "bakeoff-load"
FLOW_PRECEDENCE: Final = 1000  # before "service-accounts" (9000), after the system schemas
PRIORITY_LEVEL: Final = "workload-low"  # what "service-accounts" gives a ServiceAccount
POLL_S: Final = 0.5


@dataclass(frozen=True)
class LoadShape:
    suites: int = 20
    nodes_per_pool: int = 20
    pools: tuple[str, ...] = POOLS

    @property
    def backends(self) -> list[str]:
        return [b["name"] for b in yaml.safe_load(EXAMPLE.read_text())["spec"]["backends"]]

    @property
    def cells(self) -> int:
        return self.suites * len(self.backends) * len(self.pools)

    def suite_names(self) -> list[str]:
        return [f"load-{i:02d}" for i in range(self.suites)]


# ----- pure builders ------------------------------------------------------------------------


def node_template(pool: str) -> dict[str, Any]:
    """The first Node of hack/nodes/gpu-<pool>.yaml: labels, taint, GPU capacity of the pool."""
    docs = yaml.safe_load_all((NODES_DIR / f"gpu-{pool}.yaml").read_text())
    node: dict[str, Any] = next(d for d in docs if d and d.get("kind") == "Node")
    return node


def build_load_nodes(pool: str, count: int, template: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`count` kwok nodes labelled, tainted and sized like `template`, named load-<pool>-NN."""
    nodes = []
    for index in range(count):
        node = copy.deepcopy(dict(template))
        name = f"load-{pool}-{index:02d}"
        node["metadata"]["name"] = name
        labels = node["metadata"]["labels"]
        labels["kubernetes.io/hostname"] = name
        labels[NODE_SET_LABEL] = NODE_SET
        nodes.append(node)
    return nodes


def build_load_suites(
    names: Sequence[str], templates: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Suites with the example's backends and scenarios, one pool per template, each pool
    selecting its GPU product on the load nodes only."""
    example = yaml.safe_load(EXAMPLE.read_text())
    pools = []
    for pool, template in templates.items():
        tolerations = [
            {"key": t["key"], "operator": "Exists", "effect": t["effect"]}
            for t in template["spec"].get("taints", [])
        ]
        product = template["metadata"]["labels"][PRODUCT_LABEL]
        pools.append(
            {
                "name": pool,
                "nodeSelector": {PRODUCT_LABEL: product, NODE_SET_LABEL: NODE_SET},
                "tolerations": tolerations,
                "costPerHour": COST_PER_HOUR[pool],
            }
        )
    suites = []
    for name in names:
        suite = copy.deepcopy(example)
        suite["metadata"] = {"name": name}
        suite["spec"]["nodePools"] = copy.deepcopy(pools)
        suites.append(suite)
    return suites


def buckets() -> list[str]:
    return [*CREATE_BUCKETS, *VERBS, "other"]


def build_flow_schemas(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """One FlowSchema per bucket (`buckets()`: some creates by resource, then each verb, then
    the rest), in that order of precedence, each matching only the ServiceAccount."""
    subject = {
        "kind": "ServiceAccount",
        "serviceAccount": {"namespace": namespace, "name": service_account},
    }
    scope = {"clusterScope": True, "namespaces": ["*"]}
    everything = {"apiGroups": ["*"], "resources": ["*"], **scope}
    schemas = []
    for index, bucket in enumerate(buckets()):
        rule: dict[str, Any] = {"subjects": [subject]}
        if bucket in CREATE_BUCKETS:
            groups, resources = CREATE_BUCKETS[bucket]
            rule["resourceRules"] = [
                {"verbs": ["create"], "apiGroups": groups, "resources": resources, **scope}
            ]
        elif bucket == "other":
            rule["resourceRules"] = [{"verbs": ["*"], **everything}]
            rule["nonResourceRules"] = [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
        else:
            rule["resourceRules"] = [{"verbs": [bucket], **everything}]
        schemas.append(
            {
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "FlowSchema",
                "metadata": {"name": f"{FLOW_PREFIX}-{bucket}"},
                "spec": {
                    "matchingPrecedence": FLOW_PRECEDENCE + index,
                    "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
                    "distinguisherMethod": {"type": "ByUser"},
                    "rules": [rule],
                },
            }
        )
    return schemas


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})?\s+(?P<v>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `name` in Prometheus text format."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            samples.append((dict(_LABEL.findall(match["labels"] or "")), float(match["v"])))
    return samples


def requests_by_bucket(
    metrics_text: str, metric: str = "apiserver_flowcontrol_dispatched_requests_total"
) -> dict[str, float]:
    """A counter of the API server's APF metrics summed per load FlowSchema (bucket): by
    default the requests it dispatched; `..._request_execution_seconds_sum` is their time."""
    counts = dict.fromkeys(buckets(), 0.0)
    for labels, value in metric_samples(metrics_text, metric):
        schema = labels.get("flow_schema", "")
        if schema.startswith(f"{FLOW_PREFIX}-"):
            counts[schema.removeprefix(f"{FLOW_PREFIX}-")] += value
    return counts


def metric_total(metrics_text: str, name: str) -> float:
    return sum(value for _, value in metric_samples(metrics_text, name))


# ----- the scenario -------------------------------------------------------------------------


def apply_documents(documents: Sequence[Mapping[str, Any]], timeout: float = 120) -> None:
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents), timeout=timeout)


@contextmanager
def load_nodes(shape: LoadShape) -> Iterator[list[str]]:
    """The shape's nodes added to the running control plane, Ready; deleted afterwards."""
    nodes = [
        node
        for pool in shape.pools
        for node in build_load_nodes(pool, shape.nodes_per_pool, node_template(pool))
    ]
    selector = f"{NODE_SET_LABEL}={NODE_SET}"
    try:
        apply_documents(nodes)
        kubectl("wait", "--for=condition=Ready", "node", "-l", selector, "--timeout=120s",
                timeout=150)  # fmt: skip
        yield [n["metadata"]["name"] for n in nodes]
    finally:
        kubectl("delete", "nodes", "-l", selector, "--wait=false", check=False)


@dataclass
class LoadReport:
    """What one run measured and how it ended (JSON-able with `asdict`)."""

    suites: int
    cells: int
    nodes: int
    reconcile_interval_s: float
    seconds_to_first_deployment: float = 0.0
    seconds_to_all_deployments: float = 0.0
    seconds_to_all_finished: float = 0.0
    operator_rss_before_bytes: int = 0
    operator_peak_rss_bytes: int = 0
    operator_cpu_seconds: float = 0.0
    api_requests_by_kind: dict[str, float] = field(default_factory=dict)
    api_seconds_by_kind: dict[str, float] = field(default_factory=dict)  # APF execution time
    api_requests_rejected: float = 0.0
    reconciles: float = 0.0
    reconcile_seconds_total: float = 0.0
    suite_phases: dict[str, int] = field(default_factory=dict)
    cell_phases: dict[str, int] = field(default_factory=dict)
    unfinished_cells: list[str] = field(default_factory=list)
    twin_deployments: dict[str, int] = field(default_factory=dict)  # name -> uids, if > 1
    twin_jobs: dict[str, int] = field(default_factory=dict)
    deployments_seen: int = 0
    jobs_seen: int = 0
    results_published: int = 0
    suite_events_by_reason: dict[str, int] = field(default_factory=dict)  # Events on suites

    @property
    def api_requests(self) -> float:
        return sum(self.api_requests_by_kind.values())

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "api_requests": self.api_requests}


def apiserver_metrics() -> str:
    return kubectl("get", "--raw", "/metrics", timeout=60).stdout


def _cells_by_phase(suites: Sequence[Mapping[str, Any]]) -> tuple[Counter[str], list[str]]:
    phases: Counter[str] = Counter()
    unfinished = []
    for suite in suites:
        for cell in (suite.get("status") or {}).get("cells", []):
            phases[cell.get("phase", "")] += 1
            if cell.get("phase") not in FINISHED:
                name = suite["metadata"]["name"]
                unfinished.append(f"{name}:{cell.get('backend')}/{cell.get('pool')}")
    return phases, unfinished


def _twins(uids: Mapping[str, set[str]], names: Sequence[str]) -> dict[str, int]:
    return {name: len(uids[name]) for name in names if len(uids.get(name, ())) > 1}


def run_load(
    *,
    shape: LoadShape,
    namespace: str,
    kubeconfig: Path,
    custom: k8s.CustomObjectsApi,
    recorder: NamespaceRecorder,
    job_driver: JobDriver,
    workdir: Path,
    reconcile_interval_s: float,
    timeout_s: float,
    progress: bool = False,
) -> LoadReport:
    """Install the chart (its RBAC and ServiceAccount; kwok "runs" its Deployment), run its
    operator as a process, apply every suite at once and wait for all to finish.

    The nodes must exist (`load_nodes`); `recorder` and `job_driver` watch `namespace`.
    """
    report = LoadReport(
        suites=shape.suites,
        cells=shape.cells,
        nodes=shape.nodes_per_pool * len(shape.pools),
        reconcile_interval_s=reconcile_interval_s,
    )
    release = f"bakeoff-{namespace.rsplit('-', 1)[-1]}"
    helm(
        "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout=90s",
        "--set", "crds.enabled=false",
        "--set", f"operator.reconcileIntervalSeconds={reconcile_interval_s:g}",
        # kwok nodes: keep the (simulated) operator pod off the GPU pools.
        "--set", "operator.nodeSelector.bakeoff\\.dev/pool=system",
    )  # fmt: skip
    schemas = build_flow_schemas(namespace, release)
    operator: OperatorProcess | None = None
    try:
        apply_documents(schemas)
        deployment = yaml.safe_load(
            kubectl("get", "deployment", release, "-n", namespace, "-o", "yaml").stdout
        )
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        operator_kubeconfig = token_kubeconfig(
            workdir / "operator-sa.yaml", kubeconfig, namespace, release
        )
        operator = OperatorProcess(
            [*container["command"], *container["args"]],
            {
                **{e["name"]: e["value"] for e in container["env"]},
                "KUBECONFIG": str(operator_kubeconfig),
            },
            workdir / "operator.log",
        )
        operator.start()
        report.operator_rss_before_bytes = operator.proc_status()["VmRSS"]
        cpu_before = operator.cpu_seconds()
        before = apiserver_metrics()
        operator_before = operator.metrics()

        suites = build_load_suites(
            shape.suite_names(), {pool: node_template(pool) for pool in shape.pools}
        )
        expected_deployments = [
            naming.backend_name(s, b, p)
            for s in shape.suite_names()
            for b in shape.backends
            for p in shape.pools
        ]
        started = time.monotonic()
        kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(suites))

        def listed() -> list[dict[str, Any]]:
            listing: dict[str, Any] = custom.list_namespaced_custom_object(
                api.API_GROUP, api.API_VERSION, namespace, "benchmarksuites"
            )
            return list(listing["items"])

        last_print = [started]

        def all_finished() -> list[dict[str, Any]] | None:
            items = listed()
            if progress and time.monotonic() - last_print[0] >= 10:
                last_print[0] = time.monotonic()
                phases, _ = _cells_by_phase(items)
                print(f"  {time.monotonic() - started:5.0f} s  cells {dict(phases)}", flush=True)
            phases_now = [(s.get("status") or {}).get("phase") for s in items]
            done = len(items) == shape.suites and all(p in FINISHED for p in phases_now)
            return items if done else None

        def describe() -> str:
            phases, unfinished = _cells_by_phase(listed())
            log = operator.tail(40) if operator is not None else ""
            return (
                f"cells by phase {dict(phases)}; unfinished: {unfinished[:20]}\n"
                f"--- operator log (tail) ---\n{log}"
            )

        final = wait_for(
            all_finished, timeout_s, f"all {shape.suites} load suites to finish", describe, POLL_S
        )
        report.seconds_to_all_finished = time.monotonic() - started

        after = apiserver_metrics()
        operator_after = operator.metrics()
        report.operator_peak_rss_bytes = operator.proc_status()["VmHWM"]
        report.operator_cpu_seconds = operator.cpu_seconds() - cpu_before
        first, last = requests_by_bucket(before), requests_by_bucket(after)
        report.api_requests_by_kind = {kind: last[kind] - first[kind] for kind in last}
        executed = "apiserver_flowcontrol_request_execution_seconds_sum"
        first, last = requests_by_bucket(before, executed), requests_by_bucket(after, executed)
        report.api_seconds_by_kind = {kind: last[kind] - first[kind] for kind in last}
        rejected = "apiserver_flowcontrol_rejected_requests_total"
        report.api_requests_rejected = sum(
            value
            for labels, value in metric_samples(after, rejected)
            if labels.get("flow_schema", "").startswith(FLOW_PREFIX)
        )
        for name, attribute in (
            ("bakeoff_reconcile_total", "reconciles"),
            ("bakeoff_reconcile_duration_seconds_sum", "reconcile_seconds_total"),
        ):
            delta = metric_total(operator_after, name) - metric_total(operator_before, name)
            setattr(report, attribute, delta)

        with recorder.changed:
            first_seen = dict(recorder.deployments.first_seen)
            deployment_uids = {k: set(v) for k, v in recorder.deployments.uids.items()}
            job_uids = {k: set(v) for k, v in recorder.jobs.uids.items()}
        created = [first_seen[n] - started for n in expected_deployments if n in first_seen]
        if created:
            report.seconds_to_first_deployment = min(created)
        if len(created) == len(expected_deployments):
            report.seconds_to_all_deployments = max(created)
        expected_jobs = [
            naming.job_name(s, b, p)
            for s in shape.suite_names()
            for b in shape.backends
            for p in shape.pools
        ]
        report.deployments_seen = sum(1 for n in expected_deployments if n in deployment_uids)
        report.jobs_seen = sum(1 for n in expected_jobs if n in job_uids)
        report.twin_deployments = _twins(deployment_uids, expected_deployments)
        report.twin_jobs = _twins(job_uids, expected_jobs)
        report.results_published = len(job_driver.published)
        events = json.loads(
            kubectl("get", "events", "-n", namespace, "-o", "json",
                    "--field-selector", "involvedObject.kind=BenchmarkSuite").stdout
        )["items"]  # fmt: skip
        report.suite_events_by_reason = dict(Counter(e["reason"] for e in events))
        report.suite_phases = dict(Counter(s["status"]["phase"] for s in final))
        cell_phases, report.unfinished_cells = _cells_by_phase(final)
        report.cell_phases = dict(cell_phases)
        return report
    finally:
        if operator is not None:
            code = operator.stop()
            assert code == 0, f"the operator exited {code} on SIGTERM:\n{operator.tail(50)}"
        kubectl("delete", "flowschemas", *[s["metadata"]["name"] for s in schemas],
                "--ignore-not-found", check=False)  # fmt: skip
        helm("uninstall", release, "-n", namespace, "--wait=false")


def format_report(report: LoadReport) -> str:
    """The numbers as a table, for `make bench` and the test's output."""
    mib = 1024 * 1024
    per_suite = {verb: n / report.suites for verb, n in report.api_requests_by_kind.items() if n}
    rows = [
        ("suites x cells, nodes", f"{report.suites} suites, {report.cells} cells, "
                                  f"{report.nodes} GPU nodes"),
        ("reconcile interval", f"{report.reconcile_interval_s:g} s"),
        ("apply -> first Deployment", f"{report.seconds_to_first_deployment:.1f} s"),
        ("apply -> all Deployments created", f"{report.seconds_to_all_deployments:.1f} s"),
        ("apply -> all suites finished", f"{report.seconds_to_all_finished:.1f} s"),
        ("suites by phase", str(report.suite_phases)),
        ("operator RSS before apply", f"{report.operator_rss_before_bytes / mib:.0f} MiB"),
        ("operator peak RSS (VmHWM)", f"{report.operator_peak_rss_bytes / mib:.0f} MiB"),
        ("operator CPU time", f"{report.operator_cpu_seconds:.1f} s"),
        ("API requests (operator)", f"{report.api_requests:.0f}"),
        ("API requests per suite", f"{report.api_requests / report.suites:.1f}"),
        ("  per suite, by kind", ", ".join(f"{v} {n:.1f}" for v, n in per_suite.items())),
        ("  server time per request", ", ".join(
            f"{k} {1000 * report.api_seconds_by_kind.get(k, 0) / n:.0f} ms"
            for k, n in report.api_requests_by_kind.items() if n and k != "watch")),
        ("Events on suites, per suite", ", ".join(
            f"{r} {n / report.suites:.1f}" for r, n in report.suite_events_by_reason.items())),
        ("API requests rejected (APF)", f"{report.api_requests_rejected:.0f}"),
        ("reconciles per suite", f"{report.reconciles / report.suites:.1f}"),
        ("mean reconcile time",
         f"{1000 * report.reconcile_seconds_total / max(report.reconciles, 1):.0f} ms"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
