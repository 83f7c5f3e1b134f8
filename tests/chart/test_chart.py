"""The Helm chart, offline: helm lint, rendering in both modes validated by kubeconform
against the API server's own schemas, the restricted Pod Security Standard on the rendered
pod, contradictory values failing with ERROR, the values schema, and a default snapshot.

Installation into a real control plane is tests/cluster/test_chart_install.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CHART, CONTROL_PLANE, REPO

from bakeoff import naming

SNAPSHOT = Path(__file__).parent / "snapshots" / "default.yaml"
RELEASE, NAMESPACE = "bakeoff", "bakeoff-system"
# helm built from its module reports client-go's default (v1.20) without this; render for the
# Kubernetes version of the control plane and the schemas.
KUBE_VERSION = ["--kube-version", "1.36.3"]
CLUSTER_WIDE = ["--set", "watch.clusterWide=true"]
# Every optional object on, so kubeconform sees all of them.
EVERYTHING = ["--set", "metrics.serviceMonitor.enabled=true", "--set", "crds.keep=false"]
MODES = {
    "namespaced": [],
    "namespaced-two-namespaces": ["--set", "watch.namespaces={team-a,team-b}"],
    "cluster-wide": CLUSTER_WIDE,
}


def helm_template(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [
            str(helm),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            *KUBE_VERSION,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def documents(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_passes_strict(helm: Path, mode: str) -> None:
    done = subprocess.run(
        [str(helm), "lint", "--strict", *KUBE_VERSION, str(CHART), *MODES[mode]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_rendering_is_valid_against_the_api_servers_schemas(
    helm: Path, kubeconform: Path, schema_dir: Path, mode: str
) -> None:
    rendered = helm_template(helm, *MODES[mode], *EVERYTHING).stdout
    # ServiceMonitor's schema belongs to prometheus-operator's CRDs, not to Kubernetes.
    done = subprocess.run(
        [
            str(kubeconform), "-strict", "-summary", "-output", "text",
            "-schema-location", f"{schema_dir}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            "-skip", "ServiceMonitor",
        ],
        input=rendered, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in documents(rendered)}
    assert "Deployment" in kinds and "CustomResourceDefinition" in kinds
    assert "Invalid: 0, Errors: 0" in done.stdout, done.stdout
    assert "Skipped: 1" in done.stdout, done.stdout  # the ServiceMonitor, nothing else


def test_kubeconform_rejects_a_misspelt_field(kubeconform: Path, schema_dir: Path) -> None:
    """The generated schemas are strict: the validation above is not vacuous."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": 1, "selectr": {}, "template": {}},
    }
    done = subprocess.run(
        [str(kubeconform), "-strict", "-schema-location",
         f"{schema_dir}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"],
        input=json.dumps(bad), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "selectr" in done.stdout + done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_operator_pod_meets_the_restricted_pod_security_standard(helm: Path, mode: str) -> None:
    (deployment,) = by_kind(documents(helm_template(helm, *MODES[mode]).stdout), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    assert all("hostPath" not in v for v in pod.get("volumes", []))


def test_namespaced_mode_grants_roles_only_in_watched_namespaces(helm: Path) -> None:
    docs = documents(helm_template(helm, *MODES["namespaced-two-namespaces"]).stdout)
    # The only cluster-scoped grant: kopf's read-only discovery of CRDs and namespaces.
    (discovery,) = by_kind(docs, "ClusterRole")
    assert discovery["metadata"]["name"] == f"{RELEASE}-discovery"
    assert {
        (v, r) for rule in discovery["rules"] for r in rule["resources"] for v in rule["verbs"]
    } == {(v, r) for v in ("list", "watch") for r in ("customresourcedefinitions", "namespaces")}
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert roles == {
        ("team-a", RELEASE), ("team-b", RELEASE),
        ("team-a", naming.BENCH_SERVICE_ACCOUNT), ("team-b", naming.BENCH_SERVICE_ACCOUNT),
    }  # fmt: skip
    (deployment,) = by_kind(docs, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_cluster_wide_mode_uses_one_cluster_role(helm: Path) -> None:
    docs = documents(helm_template(helm, *CLUSTER_WIDE).stdout)
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    (role,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == RELEASE]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert "benchmarksuites" in resources
    (deployment,) = by_kind(docs, "Deployment")
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("mode", MODES)
def test_no_rule_touches_secrets_or_uses_wildcards(helm: Path, mode: str) -> None:
    docs = documents(helm_template(helm, *MODES[mode]).stdout)
    rules = [rule for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]]
    assert rules
    for rule in rules:
        assert "secrets" not in rule["resources"]
        assert "*" not in rule["resources"] + rule["verbs"] + rule["apiGroups"]
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_operator_rules_cover_the_bench_role_it_creates(helm: Path) -> None:
    """RBAC lets a subject grant only what it holds: the operator's Role must include every
    verb of the bakeoff-bench Role that the operator creates."""
    from bakeoff import manifests

    docs = documents(helm_template(helm).stdout)
    operator_role = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"] == RELEASE)
    held = {
        (g, r, v)
        for rule in operator_role["rules"]
        for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }  # fmt: skip
    bench_role = next(m for m in manifests.build_bench_rbac(NAMESPACE) if m["kind"] == "Role")
    for rule in bench_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert (group, resource, verb) in held
    chart_bench = next(
        r for r in by_kind(docs, "Role") if r["metadata"]["name"] == naming.BENCH_SERVICE_ACCOUNT
    )
    assert chart_bench["rules"] == bench_role["rules"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "watch.clusterWide=true", "--set", "watch.namespaces={a}"],
            "ERROR: watch.clusterWide=true watches every namespace",
        ),
        (
            ["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
            "ERROR: metrics.serviceMonitor.enabled=true needs metrics.enabled=true",
        ),
        (["--set", "operator.healthPort=8080"], "ERROR: metrics.port and operator.healthPort"),
        (
            ["--set", "serviceAccount.create=false"],
            "ERROR: serviceAccount.name is required when serviceAccount.create=false",
        ),
        (["--set", "operator.podSecurityContext.runAsUser=0"], "ERROR: operator.podSecurity"),
    ],
    ids=["cluster-wide-and-namespaces", "monitor-without-metrics", "port-clash",
         "no-sa-no-name", "root"],
)  # fmt: skip
def test_contradictory_values_fail_with_an_error(helm: Path, args: list[str], message: str) -> None:
    done = helm_template(helm, *args, check=False)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "operator.replicas=2"],
        ["--set", "watch.clusterwide=true"],
        ["--set", "cpuMock=yes"],
        ["--set", "images.bench=ghcr.io/x/bench-job@sha256:abc"],
        ["--set", "images.bench=ghcr.io/x/bench job:1"],
    ],
    ids=["unknown-key", "misspelt-key", "wrong-type", "short-digest", "space-in-image"],
)
def test_values_schema_rejects_unknown_keys_and_wrong_types(helm: Path, args: list[str]) -> None:
    done = helm_template(helm, *args, check=False)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr


def _operator_env(rendered: str) -> dict[str, str]:
    (deployment,) = by_kind(documents(rendered), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_images_pinned_by_digest_and_network_policies_reach_the_operator(helm: Path) -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    pinned = f"registry.example:5000/bakeoff/bench-job@{digest}"
    env = _operator_env(helm_template(helm, "--set", f"images.bench={pinned}").stdout)
    assert env["BAKEOFF_BENCH_IMAGE"] == pinned
    assert env["BAKEOFF_NETWORK_POLICIES"] == "true"
    assert json.loads(env["BAKEOFF_METRICS_SCRAPERS"]) == [
        {"namespaceSelector": {},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]  # fmt: skip
    off = _operator_env(helm_template(helm, "--set", "networkPolicy.enabled=false").stdout)
    assert off["BAKEOFF_NETWORK_POLICIES"] == "false"


def test_crd_gate_and_keep_policy(helm: Path) -> None:
    kept = by_kind(documents(helm_template(helm).stdout), "CustomResourceDefinition")
    assert kept[0]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    dropped = documents(helm_template(helm, "--set", "crds.keep=false").stdout)
    assert "annotations" not in by_kind(dropped, "CustomResourceDefinition")[0]["metadata"]
    off = documents(helm_template(helm, "--set", "crds.enabled=false").stdout)
    assert not by_kind(off, "CustomResourceDefinition")


def test_crd_copy_matches_crds_dir(helm: Path) -> None:
    """The chart's CRD is crds/benchmarksuite.yaml plus the gate (`make generate`)."""
    (crd,) = by_kind(documents(helm_template(helm).stdout), "CustomResourceDefinition")
    source = yaml.safe_load((REPO / "crds" / "benchmarksuite.yaml").read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar(helm: Path) -> None:
    (configmap,) = [
        d
        for d in by_kind(documents(helm_template(helm).stdout), "ConfigMap")
        if d["metadata"]["name"].endswith("-dashboard")
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["bakeoff.json"])
    assert dashboard == json.loads((CHART / "files" / "bakeoff.json").read_text())


def test_names_are_truncated_to_63_characters(helm: Path) -> None:
    long = "x" * 70
    docs = documents(helm_template(helm, "--set", f"fullnameOverride={long}").stdout)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]


def test_notes_say_what_to_apply_next(helm: Path, schema_dir: Path) -> None:
    # helm 3.22's client-side dry run still asks the cluster for its version: use the control
    # plane that schema_dir started.
    kubeconfig = subprocess.run(
        [str(CONTROL_PLANE), "kubeconfig"], capture_output=True, text=True, check=True
    ).stdout.strip()
    done = subprocess.run(
        [str(helm), "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
         "--set", "crds.enabled=false"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    # (crds.enabled=false: the shared control plane's CRD is not the release's to adopt.)
    assert notes.lstrip().startswith("NOTE: crds.enabled=false")  # warnings come first
    assert "kubectl apply -n bakeoff-system -f" in notes and "cpu-mock.yaml" in notes


def _normalize(rendered: str) -> str:
    """The dashboard JSON is checked against its file above; the snapshot keeps a placeholder
    so a dashboard edit does not churn it."""
    out = []
    for doc in documents(rendered):
        if doc["kind"] == "ConfigMap" and "bakeoff.json" in doc.get("data", {}):
            doc["data"]["bakeoff.json"] = "<charts/bakeoff/files/bakeoff.json>"
        out.append(yaml.safe_dump(doc, sort_keys=True))
    return "---\n".join(out)


def test_default_rendering_matches_the_snapshot(helm: Path) -> None:
    """Set BAKEOFF_UPDATE_SNAPSHOTS=1 to rewrite snapshots/default.yaml after a deliberate
    change, then review its diff."""
    rendered = _normalize(helm_template(helm).stdout)
    if os.environ.get("BAKEOFF_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(rendered)
    assert SNAPSHOT.exists(), "no snapshot: run with BAKEOFF_UPDATE_SNAPSHOTS=1 and review it"
    assert rendered == SNAPSHOT.read_text(), (
        "default rendering changed: review, then BAKEOFF_UPDATE_SNAPSHOTS=1 pytest tests/chart"
    )
