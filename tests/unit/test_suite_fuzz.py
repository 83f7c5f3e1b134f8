"""Hypothesis fuzz of the suite API: whatever document arrives, `validation.parse_suite` (what
`bakeoff validate` and the operator run) either returns a suite or raises `SuiteInvalid` whose
every problem names a field; generated valid suites are accepted, survive model -> dict ->
model unchanged, and pass the CRD's openAPIV3Schema.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from crd_schema import schema_errors
from fuzz_strategies import json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakeoff import api, crd, validation

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXAMPLE = Path(__file__).parents[2] / "examples" / "rtx4080-vs-a100.yaml"
SCHEMA = crd.generate_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}


def assert_documented_failure(document: Any) -> api.BenchmarkSuite | None:
    """parse_suite's contract: a suite, or SuiteInvalid with a field path on every problem."""
    try:
        return validation.parse_suite(document)
    except validation.SuiteInvalid as invalid:
        assert invalid.problems
        for problem in invalid.problems:
            assert problem.message, problem
            assert problem.render().startswith(f"{problem.path}: ")
            if isinstance(document, dict):
                # A field of the API, or a key the document has that the API does not.
                fields = TOP_LEVEL | {str(key) for key in document}
                assert problem.path == "(document)" or any(
                    problem.path == f or problem.path.startswith((f"{f}.", f"{f}[")) for f in fields
                ), problem
            else:
                assert problem.path == "(document)", problem
        return None


@FUZZ
@given(json_values)
def test_any_json_document_is_a_suite_or_a_list_of_problems_at_fields(document: Any) -> None:
    assert_documented_failure(document)


def _example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return document


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the document (mapping keys and list indexes)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_suites(draw: st.DrawFn) -> dict[str, Any]:
    """The example suite with 1-3 random edits: a value replaced, a key dropped or added."""
    document = _example()
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        *parents, last = path
        node: Any = document
        for part in parents:
            node = node[part]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            node[last] = draw(json_values)
        elif action == "drop":
            del node[last]
        elif isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        else:
            node.append(draw(json_values))
    return document


@FUZZ
@given(mutated_suites())
def test_mutated_valid_suite_is_a_suite_or_a_list_of_problems_at_fields(
    document: dict[str, Any],
) -> None:
    assert_documented_failure(document)


# ----- valid suites, built to satisfy every rule -----

dns_labels = st.from_regex(r"[a-z]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
label_keys = st.from_regex(
    r"([a-z0-9]{1,8}\.[a-z]{2,4}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?", fullmatch=True
)
label_values = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?)?", fullmatch=True)


@st.composite
def valid_suites(draw: st.DrawFn) -> dict[str, Any]:
    pools = []
    for name in draw(st.lists(dns_labels, min_size=1, max_size=4, unique=True)):
        gpus = draw(st.integers(0, 16))
        selector = draw(st.dictionaries(label_keys, label_values, min_size=1 if gpus else 0,
                                        max_size=3))  # fmt: skip
        pool = {"name": name, "gpus": gpus, "costPerHour": draw(st.floats(0, 10_000))}
        if selector:
            pool["nodeSelector"] = selector
        if draw(st.booleans()):
            pool["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                    "effect": "NoSchedule"}]  # fmt: skip
        pools.append(pool)
    pool_names = [p["name"] for p in pools]

    sweep = draw(st.none() | st.lists(st.integers(1, 64), min_size=1, max_size=6, unique=True))
    largest = max(sweep or [1])
    backends = []
    for name in draw(st.lists(dns_labels, min_size=1, max_size=4, unique=True)):
        kind = draw(st.sampled_from(list(api.BackendKind)))
        backend: dict[str, Any] = {
            "name": name,
            "kind": kind.value,
            "maxBatchSize": draw(st.integers(largest, 1024)),
        }
        if kind is api.BackendKind.PYTORCH:
            backend["precision"] = draw(st.sampled_from(list(api.Precision))).value
        elif kind is api.BackendKind.TRITON_ONNX:
            provider = draw(st.sampled_from(list(api.ExecutionProvider)))
            backend["executionProvider"] = provider.value
            fp16_ok = provider is api.ExecutionProvider.TENSORRT
            backend["precision"] = draw(st.sampled_from(["fp32", "fp16"] if fp16_ok else ["fp32"]))
            if draw(st.booleans()):
                sizes = st.integers(1, backend["maxBatchSize"])
                backend["dynamicBatching"] = {
                    "maxQueueDelayMicroseconds": draw(st.integers(0, 1_000_000)),
                    "preferredBatchSizes": draw(st.lists(sizes, max_size=4)),
                }
        elif kind is api.BackendKind.ONNXRUNTIME:
            provider = draw(st.sampled_from(list(api.ExecutionProvider)))
            backend["executionProvider"] = provider.value
            backend["precision"] = draw(st.sampled_from(["fp32", "fp16"]))
            backend["inputFormat"] = draw(st.sampled_from(list(api.WireInput))).value
            if draw(st.booleans()):
                backend["dynamicBatching"] = {
                    "maxQueueDelayMicroseconds": draw(st.integers(0, 1_000_000))
                }
        else:
            backend["endpoint"] = {"httpUrl": f"http://{name}.svc:8000",
                                   "metricsUrl": f"https://{name}.svc:8002/metrics"}  # fmt: skip
        if draw(st.booleans()):
            backend["pools"] = draw(st.lists(st.sampled_from(pool_names), min_size=1, max_size=3))
        backends.append(backend)

    run_seconds = draw(st.integers(60, 604_800))
    scenarios: dict[str, Any] = {
        "single": draw(st.none() | st.fixed_dictionaries(
            {"requests": st.integers(1, 1_000_000), "warmup": st.integers(0, 100_000)})),
        "batchSweep": None if sweep is None else {
            "batchSizes": sweep, "requests": draw(st.integers(1, 10_000)),
            "warmup": draw(st.integers(0, 1_000))},
        "workers": draw(st.integers(1, 64)),
    }  # fmt: skip
    if draw(st.booleans()):
        scenarios["concurrencySweep"] = {
            "levels": draw(st.lists(st.integers(1, 4096), min_size=1, max_size=8, unique=True)),
            "batchSizes": draw(st.lists(st.integers(1, 32), min_size=1, max_size=4, unique=True)),
            "requests": draw(st.integers(1, 10_000)),
            "warmup": draw(st.integers(0, 1_000)),
        }
    if draw(st.booleans()):
        rates = draw(st.lists(st.floats(0.5, 1_000_000), min_size=1, max_size=8))
        scenarios["rate"] = {
            "requestsPerSecond": rates,
            "arrival": draw(st.sampled_from(["constant", "poisson"])),
            "durationSeconds": draw(st.floats(0.5, min(3600, run_seconds / len(rates)))),
        }
    if draw(st.booleans()):
        scenarios["steadyState"] = draw(st.sampled_from(
            [{"windowRequests": 100}, {"windowSeconds": 2.5, "tolerance": 0.05}]))  # fmt: skip
    return {
        "apiVersion": "bakeoff.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": draw(dns_labels)},
        "spec": {
            "model": {"name": "clip", "source": {"builtin": "vit-b32-clip"},
                      "seed": draw(st.integers(0, 2**31))},
            "backends": backends,
            "nodePools": pools,
            "scenarios": scenarios,
            "parity": {"reference": draw(st.sampled_from([b["name"] for b in backends])),
                       "minCosine": draw(st.floats(0.5, 1))},
            "cleanup": {"policy": draw(st.sampled_from(list(api.CleanupPolicy))).value},
            "timeouts": {"readySeconds": draw(st.integers(1, 86_400)), "runSeconds": run_seconds},
        },
    }  # fmt: skip


@FUZZ
@given(valid_suites())
def test_valid_suite_round_trips_and_passes_the_crd_schema(document: dict[str, Any]) -> None:
    suite = validation.parse_suite(copy.deepcopy(document))
    dumped = suite.model_dump(mode="json", by_alias=True)
    again = api.BenchmarkSuite.model_validate(dumped)
    assert again == suite
    assert again.model_dump(mode="json", by_alias=True) == dumped
    assert schema_errors(document, SCHEMA) == []
    # What the API server stores (defaults filled in) reads back as the same suite.
    assert schema_errors(dumped, SCHEMA) == []
