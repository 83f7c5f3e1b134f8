"""Bad input on a real API server: invalid suites are rejected by the CRD's schema and CEL rules
at `kubectl apply`, each naming the field; what the CRD cannot express, the operator reports
as Validated=False, naming the field too.

One valid suite, one thing wrong per case. Each case is also run through
`validation.parse_suite` (what `bakeoff validate` and the operator run), which must blame the
same field: the two layers agree on what is invalid.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_harness import (
    Operator,
    conditions_by_type,
    kubectl,
    wait_for_suite_phase,
)
from kubernetes import client as k8s
from rule_cases import DELETE, RuleCase, base_suite, changed, rule_cases

from bakeoff import validation

pytestmark = pytest.mark.cluster

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

GPU_POOL = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
# (id, changes to VALID_SUITE, the field the API server must name, words of its message)
REJECTIONS: list[tuple[str, list[tuple[str, Any]], str, str]] = [
    # --- missing fields
    ("missing-spec", [("spec", DELETE)], "spec", "Required value"),
    ("missing-model", [("spec.model", DELETE)], "spec.model", "Required value"),
    ("missing-model-source", [("spec.model.source", DELETE)], "spec.model.source",
     "Required value"),
    ("missing-backend-kind", [("spec.backends.0.kind", DELETE)], "spec.backends[0].kind",
     "Required value"),
    ("missing-cost-per-hour", [("spec.nodePools.0.costPerHour", DELETE)],
     "spec.nodePools[0].costPerHour", "Required value"),
    ("missing-concurrency-levels", [("spec.scenarios", {"concurrencySweep": {"requests": 10}})],
     "spec.scenarios.concurrencySweep.levels", "Required value"),
    ("triton-without-execution-provider", [("spec.backends.1.executionProvider", DELETE)],
     "spec.backends[1].executionProvider", "required for kind triton-onnx"),
    ("external-without-endpoint", [("spec.backends.0.kind", "external")],
     "spec.backends[0].endpoint", "endpoint is required for kind external"),
    ("gpu-pool-without-node-selector", [("spec.nodePools.0.nodeSelector", DELETE)],
     "spec.nodePools[0].nodeSelector", "a GPU pool (gpus > 0) needs a nodeSelector"),
    # --- wrong types
    ("cost-is-a-word", [("spec.nodePools.0.costPerHour", "cheap")],
     "spec.nodePools[0].costPerHour", "must be of type number"),
    ("backends-is-a-word", [("spec.backends", "pytorch")],
     "spec.backends", "must be of type array"),
    ("requests-is-a-word", [("spec.scenarios", {"single": {"requests": "many"}})],
     "spec.scenarios.single.requests", "must be of type integer"),
    ("batch-sizes-is-a-number", [("spec.scenarios", {"batchSweep": {"batchSizes": 8}})],
     "spec.scenarios.batchSweep.batchSizes", "must be of type array"),
    ("node-selector-value-is-a-number", [("spec.nodePools.0.nodeSelector", {"gpus": 8})],
     "spec.nodePools[0].nodeSelector.gpus", "must be of type string"),
    ("typo-in-a-field-name", [("spec.nodePools.0.nodeSelectr", {"a": "b"})],
     "spec.nodePools[0].nodeSelectr", "unknown field"),
    # --- unknown kinds and choices
    ("unknown-backend-kind", [("spec.backends.1.kind", "tf-serving")], "spec.backends[1].kind",
     'Unsupported value: "tf-serving"'),
    ("unknown-execution-provider", [("spec.backends.1.executionProvider", "rocm")],
     "spec.backends[1].executionProvider", 'Unsupported value: "rocm"'),
    ("unknown-precision", [("spec.backends.0.precision", "int8")], "spec.backends[0].precision",
     'Unsupported value: "int8"'),
    ("unknown-arrival", [("spec.scenarios", {"rate": {"requestsPerSecond": [10],
                                                      "arrival": "bursty"}})],
     "spec.scenarios.rate.arrival", 'Unsupported value: "bursty"'),
    ("unknown-cleanup-policy", [("spec.cleanup", {"policy": "Sometimes"})],
     "spec.cleanup.policy", 'Unsupported value: "Sometimes"'),
    ("unknown-builtin-model", [("spec.model.source.builtin", "resnet50")],
     "spec.model.source.builtin", 'Unsupported value: "resnet50"'),
    ("execution-provider-on-pytorch", [("spec.backends.0.executionProvider", "cuda")],
     "spec.backends[0].executionProvider", "triton-onnx, onnxruntime only"),
    ("uint8-input-on-triton", [("spec.backends.1.inputFormat", "uint8")],
     "spec.backends[1].inputFormat", "pytorch, onnxruntime only"),
    ("tensorrt-in-bf16", [("spec.backends.1.executionProvider", "tensorrt"),
                          ("spec.backends.1.precision", "bf16")],
     "spec.backends[1].precision", "not bf16"),
    # --- negative or absurd numbers
    ("negative-cost-per-hour", [("spec.nodePools.0.costPerHour", -1)],
     "spec.nodePools[0].costPerHour", "greater than or equal to 0"),
    ("absurd-cost-per-hour", [("spec.nodePools.0.costPerHour", 1e9)],
     "spec.nodePools[0].costPerHour", "less than or equal to 10000"),
    ("zero-max-batch-size", [("spec.backends.0.maxBatchSize", 0)],
     "spec.backends[0].maxBatchSize", "greater than 0"),
    ("seventeen-gpus", [("spec.nodePools.0.gpus", 17)], "spec.nodePools[0].gpus",
     "less than or equal to 16"),
    ("cosine-above-one", [("spec.parity", {"minCosine": 1.5})], "spec.parity.minCosine",
     "less than or equal to 1"),
    ("negative-seed", [("spec.model.seed", -1)], "spec.model.seed", "greater than or equal to 0"),
    ("negative-warmup", [("spec.scenarios", {"single": {"warmup": -1}})],
     "spec.scenarios.single.warmup", "greater than or equal to 0"),
    ("ten-million-requests-per-second", [("spec.scenarios", {"rate": {
        "requestsPerSecond": [1e7]}})],
     "spec.scenarios.rate.requestsPerSecond[0]", "less than or equal to 1000000"),
    ("zero-ready-seconds", [("spec.timeouts", {"readySeconds": 0})],
     "spec.timeouts.readySeconds", "greater than 0"),
    ("batch-size-above-max-batch-size", [("spec.backends.0.maxBatchSize", 8)], "spec.backends",
     "maxBatchSize must be at least the largest"),
    # --- empty lists
    ("no-backends", [("spec.backends", [])], "spec.backends", "at least 1 items"),
    ("no-node-pools", [("spec.nodePools", [])], "spec.nodePools", "at least 1 items"),
    ("no-batch-sizes", [("spec.scenarios", {"batchSweep": {"batchSizes": []}})],
     "spec.scenarios.batchSweep.batchSizes", "at least 1 items"),
    # --- duplicate or dangling names
    ("duplicate-backend-names", [("spec.backends.1.name", "pytorch")], "spec.backends",
     "names must be unique"),
    ("duplicate-pool-names", [("spec.nodePools.1", {"name": "a100", "nodeSelector": GPU_POOL,
                                                    "costPerHour": 2})],
     "spec.nodePools", "names must be unique"),
    ("repeated-batch-sizes", [("spec.scenarios", {"batchSweep": {"batchSizes": [1, 4, 4]}})],
     "spec.scenarios.batchSweep.batchSizes", "batch sizes repeat"),
    ("backend-on-an-unknown-pool", [("spec.backends.0.pools", ["h100"])], "spec.backends",
     "must name pools of spec.nodePools"),
    ("backend-on-no-pools", [("spec.backends.0.pools", [])], "spec.backends[0].pools",
     "an empty pools list measures this backend nowhere"),
    ("parity-reference-is-not-a-backend", [("spec.parity", {"reference": "onnx"})],
     "spec.parity.reference", "must name one of spec.backends"),
    # --- names Kubernetes or URLs cannot take
    ("suite-name-with-a-dot", [("metadata.name", "clip.v2")], "metadata.name",
     "must be a DNS label"),
    ("backend-name-in-capitals", [("spec.backends.0.name", "PyTorch")],
     "spec.backends[0].name", "should match"),
    ("node-selector-value-with-a-space", [("spec.nodePools.0.nodeSelector",
                                           {"nvidia.com/gpu.product": "NVIDIA A100"})],
     "spec.nodePools[0].nodeSelector.nvidia.com/gpu.product", "should match"),
    ("endpoint-is-not-http", [("spec.backends.0", {"name": "ext", "kind": "external",
                                                   "endpoint": {"httpUrl": "ftp://triton"}})],
     "spec.backends[0].endpoint.httpUrl", "should match '^https?://'"),
    # --- oversize sweeps
    ("seventeen-backends", [("spec.backends", [{"name": f"b{i}", "kind": "pytorch"}
                                               for i in range(17)])],
     "spec.backends", "must have at most 16 items"),
    ("thirty-three-concurrency-levels", [("spec.scenarios", {"concurrencySweep": {
        "levels": list(range(1, 34))}})],
     "spec.scenarios.concurrencySweep.levels", "must have at most 32 items"),
    ("oversize-batch-sweep", [("spec.scenarios", {"batchSweep": {"batchSizes": [1, 2, 4, 8],
                                                                 "requests": 300_000}})],
     "spec.scenarios.batchSweep", "must not exceed 1000000 requests per cell"),
    ("oversize-concurrency-sweep", [("spec.scenarios", {"concurrencySweep": {
        "levels": [1, 2, 4, 8, 16, 32, 64, 128], "batchSizes": [1, 8], "requests": 100_000}})],
     "spec.scenarios.concurrencySweep", "must not exceed 1000000 requests per cell"),
    ("rate-runs-longer-than-the-job", [("spec.scenarios", {"rate": {
        "requestsPerSecond": [10, 20, 40, 80], "durationSeconds": 1200}})],
     "spec.scenarios.rate", "must fit in spec.timeouts.runSeconds"),
]  # fmt: skip

# (id, changes, the field Validated=False must name, words of its message): rules the CRD
# cannot carry, so the API server accepts these suites and the operator refuses them.
OPERATOR_REJECTIONS: list[tuple[str, list[tuple[str, Any]], str, str]] = [
    # A structural schema cannot put a pattern on a map's keys.
    ("node-selector-key-with-a-space", [("spec.nodePools.0.nodeSelector",
                                         {"gpu product": "A100"})],
     "spec.nodePools[0].nodeSelector", "key 'gpu product' is not a label key"),
    ("node-selector-key-with-a-capital-prefix", [("spec.nodePools.0.nodeSelector",
                                                  {"NVIDIA.com/gpu.product": "A100"})],
     "spec.nodePools[0].nodeSelector", "key 'NVIDIA.com/gpu.product' is not a label key"),
]  # fmt: skip


def _params(table: list[tuple[str, list[tuple[str, Any]], str, str]]) -> list[Any]:
    return [pytest.param(changes, field, words, id=name) for name, changes, field, words in table]


def test_the_table_covers_every_category_with_at_least_25_suites() -> None:
    assert len(REJECTIONS) + len(OPERATOR_REJECTIONS) >= 25
    names = [case[0] for case in REJECTIONS + OPERATOR_REJECTIONS]
    assert len(set(names)) == len(names)


def _cli_problem_paths(suite: dict[str, Any]) -> list[str]:
    with pytest.raises(validation.SuiteInvalid) as invalid:
        validation.parse_suite(suite)
    return [problem.path for problem in invalid.value.problems]


@pytest.fixture(scope="module")
def shared_namespace(kubeconfig: Path) -> Iterator[str]:
    """One restricted namespace for the whole table (a namespace per case would only slow it)."""
    name = f"invalid-suites-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
            "bakeoff.dev/test=cluster")  # fmt: skip
    yield name
    listed = kubectl("get", "benchmarksuites", "-n", name, "-o", "name", check=False)
    for suite in listed.stdout.split():
        kubectl("patch", suite, "-n", name, "--type=merge", "-p",
                '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize(("changes", "field", "words"), _params(REJECTIONS))
def test_invalid_suite_is_rejected_by_the_api_server_naming_the_field(
    shared_namespace: str, changes: list[tuple[str, Any]], field: str, words: str
) -> None:
    suite = changed(VALID_SUITE, tuple(changes))
    rejected = kubectl(
        "apply", "-n", shared_namespace, "-f", "-", stdin=yaml.safe_dump(suite), check=False
    )
    assert rejected.returncode != 0, rejected.stdout
    assert f"{field}" in rejected.stderr, rejected.stderr
    assert words in rejected.stderr, rejected.stderr
    listed = kubectl("get", "benchmarksuites", "-n", shared_namespace, "-o", "name")
    assert listed.stdout.strip() == ""
    # The same suite fails `bakeoff validate` at that field (or inside it).
    assert any(path.startswith(field) for path in _cli_problem_paths(suite)), field


def test_the_valid_base_of_the_invalid_suites_is_accepted(shared_namespace: str) -> None:
    """Guards the tables: each rejection is caused by its one change."""
    accepted = kubectl(
        "apply", "-n", shared_namespace, "--dry-run=server", "-f", "-",
        stdin=yaml.safe_dump(VALID_SUITE), check=False,
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert validation.parse_suite(copy.deepcopy(VALID_SUITE)).metadata.name == "invalid"


@pytest.mark.parametrize("case", rule_cases(), ids=lambda case: case.name)
def test_every_rule_of_the_table_is_enforced_by_the_api_server_at_its_field(
    shared_namespace: str, case: RuleCase
) -> None:
    """The validation table's rules, each broken once, as the unit tier breaks them for
    `bakeoff validate`: the API server's CEL names the same field with the same message."""
    suite = changed(base_suite(), case.changes)
    rejected = kubectl(
        "apply", "-n", shared_namespace, "--dry-run=server", "-f", "-",
        stdin=yaml.safe_dump(suite), check=False,
    )  # fmt: skip
    assert rejected.returncode != 0, rejected.stdout
    assert f"{case.path}: " in rejected.stderr, rejected.stderr
    assert case.message in rejected.stderr, rejected.stderr


@pytest.fixture(scope="module")
def validating_operator(shared_namespace: str) -> Iterator[Operator]:
    """The operator watching the shared namespace, for the suites only it can refuse."""
    running = Operator(shared_namespace)
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize(("changes", "field", "words"), _params(OPERATOR_REJECTIONS))
def test_suite_the_crd_accepts_is_refused_by_the_operator_naming_the_field(
    shared_namespace: str,
    validating_operator: Operator,
    custom: k8s.CustomObjectsApi,
    changes: list[tuple[str, Any]],
    field: str,
    words: str,
) -> None:
    name = f"refused-{uuid.uuid4().hex[:6]}"
    suite = changed(VALID_SUITE, (("metadata.name", name), *changes))
    kubectl("apply", "-n", shared_namespace, "-f", "-", stdin=yaml.safe_dump(suite))

    status = wait_for_suite_phase(custom, shared_namespace, name, ("Failed",), 60)
    validated = conditions_by_type(status)["Validated"]
    assert validated["status"] == "False", validated
    assert validated["reason"] == "InvalidSpec"
    assert f"{field}: {words}" in validated["message"], validated["message"]
    assert status.get("cells", []) == []
    # Nothing was deployed for it.
    children = kubectl("get", "deployments,jobs,services", "-n", shared_namespace, "-o", "name",
                       "-l", f"bakeoff.dev/suite={name}")  # fmt: skip
    assert children.stdout.strip() == ""
    assert field in _cli_problem_paths(suite)
